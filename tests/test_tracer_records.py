"""The tracer's fast paths make the same records the plain ones would: one walk of the model
stands for ``named_modules``/``parameters``/``buffers``, records built without ``__init__``
have every field, and a tensor seen at many calls keeps the shape it had at each."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import shapecheck
from shapecheck._paths import ModelWalk
from shapecheck._records import Layer, TensorInfo
from shapecheck.demo import seed_model_fixed


class _Shared(nn.Module):
    """A block registered at two places, a weight tied across two modules, a bias-less layer
    (a ``None`` parameter) and BatchNorm buffers."""

    def __init__(self) -> None:
        super().__init__()
        block = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.first, self.again = block, block
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.again(self.first(self.embed(ids))))
        return out


def test_one_walk_is_what_torch_walks() -> None:
    for model in (_Shared(), seed_model_fixed(), nn.TransformerEncoderLayer(8, 2)):
        walk = ModelWalk(model)
        assert [(p, id(m)) for p, m in walk.named] == [(p, id(m)) for p, m in model.named_modules()]
        assert [(p, id(m)) for p, m in walk.every] == [
            (p, id(m)) for p, m in model.named_modules(remove_duplicate=False)
        ]
        assert [id(p) for p in walk.parameters()] == [id(p) for p in model.parameters()]
        assert [id(b) for b in walk.buffers()] == [id(b) for b in model.buffers()]


def test_shared_modules_and_tied_weights_are_counted_once() -> None:
    model = _Shared()
    report = shapecheck.explain(model, torch.randint(0, 10, (3,)))
    assert report.total_params == sum(p.numel() for p in model.parameters())
    assert report.total_params == 10 * 4 + (4 * 4 + 4) + 2 * 4  # embed (= head), Linear, BN
    assert ("head", "embed", 40) in report.tied


def test_fast_records_have_every_field_and_equal_the_plain_ones() -> None:
    report = shapecheck.explain(seed_model_fixed(), torch.randn(2, 3, 32, 32))
    records: list[object] = [*report.layers, *report.inputs, *report.outputs]
    records += [t for layer in report.layers for t in (*layer.inputs, *layer.outputs)]
    for record in records:
        assert isinstance(record, (Layer, TensorInfo))
        names = {f.name for f in dataclasses.fields(record)}
        assert set(vars(record)) == names
        rebuilt = dataclasses.replace(record)  # through the dataclass __init__
        assert rebuilt == record
        assert all(getattr(rebuilt, n) == getattr(record, n) for n in names)
        assert hash(rebuilt) == hash(record)


class _Calls(nn.Module):
    """Calls whose arguments are numbers, keywords, a dtype, a device, an index and tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.view(-1, 6)
        z = y.mean(-1, keepdim=True)
        w = torch.cat([y, y], dim=1)
        v = w.to(torch.float64)[..., :2]
        out: torch.Tensor = torch.add(v, z.double(), alpha=2).to("cpu")
        return out


def test_call_arguments_are_written_as_in_code_and_hold_no_tensor() -> None:
    """A call's arguments are kept as plain values (no tensor: it would stay alive with the
    report) and written only when asked."""
    report = shapecheck.explain(_Calls(), torch.randn(2, 3, 2))
    calls = [layer for layer in report.layers if layer.kind == "function"]
    assert [(c.type, c.arguments) for c in calls] == [
        ("view", "-1, 6"), ("mean", "-1, keepdim=True"), ("cat", "dim=1"),
        ("to", "torch.float64"), ("__getitem__", "(Ellipsis, slice(None, 2, None))"),
        ("double", ""), ("add", "T, alpha=2"), ("to", "'cpu'"),
    ]  # fmt: skip
    assert calls[0].summary == "view(-1, 6)"
    assert report.layers[0].summary == "_Calls"
    assert report.layers[0].call is None

    def values(obj: object) -> list[object]:
        if isinstance(obj, tuple):
            return [v for item in obj for v in values(item)]
        return [obj]

    kept = [v for c in calls if c.call is not None for v in values(tuple(c.call))]
    assert kept
    assert not any(isinstance(v, torch.Tensor) for v in kept)


def test_arguments_longer_than_a_cell_are_cut() -> None:
    from shapecheck._text import call_text

    assert call_text(tuple(range(30))) == ", ".join(map(str, range(30)))[:39] + "…"


class _Reshaped(nn.Module):
    """One tensor object seen at three calls, its shape changed in place between them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 2
        y = x + 1
        x.unsqueeze_(0)
        return x.sum() + y.sum()


def test_a_tensor_changed_in_place_keeps_each_shape_it_had() -> None:
    report = shapecheck.explain(_Reshaped(), torch.randn(2, 3))
    calls = [layer for layer in report.layers if layer.kind == "function"]
    assert [c.type for c in calls] == ["mul", "add", "unsqueeze_", "sum", "sum", "add"]
    mul, add, unsqueeze, x_sum, y_sum = calls[:5]
    assert add.inputs[0].shape == unsqueeze.inputs[0].shape == (2, 3)  # before the call
    assert unsqueeze.outputs[0].shape == x_sum.inputs[0].shape == (1, 2, 3)  # the same tensor
    assert unsqueeze.inputs[0].key == unsqueeze.outputs[0].key
    assert y_sum.inputs[0].shape == (2, 3)
    assert add.inputs[0].made_by == mul.index


class _WritesIntoInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.unsqueeze_(0)  # in place, on the model's own input
        return x.flatten(1)


def test_a_dry_run_reuses_input_fakes_only_while_nothing_changed() -> None:
    model, x = _WritesIntoInput(), torch.randn(2, 3)
    first = shapecheck.explain(model, x, dry_run=True)
    again = shapecheck.explain(model, x, dry_run=True)  # the first run changed its fake
    assert x.shape == (2, 3)
    assert first.inputs[0].shape == again.inputs[0].shape == (2, 3)
    assert first.outputs[0].shape == again.outputs[0].shape == (1, 6)
    x.resize_(4, 3)  # the real input changed: a new fake
    assert shapecheck.explain(model, x, dry_run=True).outputs[0].shape == (1, 12)


class _Counts(nn.Module):
    """Buffers the forward writes: one in place, one through ``.data`` (no version bump)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("seen", torch.zeros(3))
        self.register_buffer("untouched", torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.seen.data.copy_(x.detach()[0])
        return x * self.untouched


def test_buffers_are_put_back_and_untouched_ones_are_not_written() -> None:
    model = _Counts()
    versions = {name: b._version for name, b in model.named_buffers()}
    shapecheck.explain(model, torch.randn(2, 3))
    assert model.calls.item() == 0
    assert torch.equal(model.seen, torch.zeros(3))
    assert torch.equal(model.untouched, torch.ones(3))
    assert model.untouched._version == versions["untouched"]  # a dry run's fakes stay valid
    bn = nn.BatchNorm1d(3).eval()
    before = {name: (b.clone(), b._version) for name, b in bn.named_buffers()}
    shapecheck.explain(bn, torch.randn(4, 3))
    for name, b in bn.named_buffers():
        assert torch.equal(b, before[name][0])
        assert b._version == before[name][1]


class _ManyBuffers(nn.Module):
    """Buffers of four dtypes, a NaN and a -0.0 among them; the forward writes one of them in
    one of the ways a forward can (or none)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        for i in range(4):
            self.register_buffer(f"f{i}", torch.arange(3.0) + i)
        self.register_buffer("odd", torch.tensor([float("nan"), -0.0]))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("counts", torch.tensor([1, 2]))
        self.register_buffer("halves", torch.ones(2, dtype=torch.float16))
        self.register_buffer("flags", torch.tensor([True, False]))
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        how = self.how
        if how == "add_":
            self.f1.add_(1)
        elif how == ".data.mul_":  # no version bump: found by value
            self.f2.data.mul_(2)
        elif how == ".data = smaller":
            self.f3.data = torch.zeros(2)
        elif how == ".data = other dtype":  # same bits would pass a value compare
            self.f0.data = self.f0.data.half()
        elif how == "unsqueeze_":
            self.f0.unsqueeze_(0)
        elif how == "zero sign":  # -0.0 == 0.0 for torch.equal, not bit for bit
            self.odd.data[1] = 0.0
        elif how == "+= on int":
            self.steps += 1
        elif how == "fill_ on bool":
            self.flags.fill_(True)
        return x * 2


#: how the forward writes -> the buffer it writes
_WRITES = {"none": None, "add_": "f1", ".data.mul_": "f2", ".data = smaller": "f3",
           ".data = other dtype": "f0", "unsqueeze_": "f0", "zero sign": "odd",
           "+= on int": "steps", "fill_ on bool": "flags"}  # fmt: skip


@pytest.mark.parametrize("how", list(_WRITES))
def test_every_buffer_is_put_back_bit_for_bit_and_only_a_written_one_is_written(how: str) -> None:
    model = _ManyBuffers(how)
    before = {name: (b.clone(), b.stride(), b._version) for name, b in model.named_buffers()}
    report = shapecheck.explain(model, torch.randn(2, 3))
    assert report.ok
    for name, b in model.named_buffers():
        saved, stride, _ = before[name]
        assert (b.dtype, b.shape, b.stride()) == (saved.dtype, saved.shape, stride), name
        bits = b.reshape(-1).view(torch.uint8), saved.reshape(-1).view(torch.uint8)
        assert torch.equal(*bits), name  # bit for bit
    # the others, the NaN and the -0.0 among them, are not written back
    written = {name for name, b in model.named_buffers() if b._version != before[name][2]}
    target = _WRITES[how]
    assert written <= ({target} if target else set())


def test_a_failing_dry_run_logs_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    """Fake mode logs every meta kernel that raises (with a traceback, on stderr); a dry run
    of a broken model reports the failure instead, and leaves the logger as it found it."""
    from shapecheck._dry import _FAKE_LOGGER
    from shapecheck.demo import seed_model

    before = _FAKE_LOGGER.disabled
    report = shapecheck.explain(seed_model(), torch.randn(1, 3, 32, 32), dry_run=True)
    assert report.failure is not None
    assert report.failure.path == "6"
    captured = capfd.readouterr()
    assert "fake_tensor" not in captured.err
    assert "Traceback" not in captured.err
    assert _FAKE_LOGGER.disabled == before


_LOADED = """
import sys, torch, shapecheck
from torch import nn
from shapecheck.demo import seed_model_fixed
model = {model}
report = shapecheck.explain(model, torch.randn(1, 3, 32, 32))
heavy = ("shapecheck._changes", "shapecheck._fixes", "shapecheck._repair",
         "shapecheck._diagnose.failures")
print(len(report.warnings), *[m for m in heavy if m in sys.modules])
"""


def test_a_model_that_runs_loads_no_repair_or_fix_machinery() -> None:
    """The first explain of a model that runs stays cheap: the warning rules load, the fix
    records only once a warning is found, the failure rules and the repair stage never."""
    import subprocess
    import sys

    def loaded(model: str) -> list[str]:
        code = _LOADED.format(model=model)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300, check=True)  # fmt: skip
        return done.stdout.split()

    assert loaded("seed_model_fixed()") == ["0"]
    reused = "nn.Sequential(*[nn.Conv2d(3, 3, 1)] * 2)"  # one instance at two places
    assert loaded(reused) == ["1", "shapecheck._changes"]


def test_a_symbolic_size_is_recorded_too() -> None:
    """A size that is a symbol (SymInt: no dict key) still gets its record."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from shapecheck._paths import PathIndex
    from shapecheck._recorder import Recorder

    mode = FakeTensorMode(shape_env=ShapeEnv())
    assert mode.shape_env is not None
    with mode:
        fake = torch.empty(mode.shape_env.create_unbacked_symint(), 3)
    recorder = Recorder(PathIndex(nn.Linear(2, 2)), {}, {}, {})
    (record,) = recorder.records(recorder.seen([fake]))
    assert str(record.shape[0]).startswith("u")
    assert record.shape[1] == 3
    assert (record.dtype, record.device) == ("float32", "cpu")
    first, again = recorder.infos([fake, fake])  # two sights of it, each its own record
    assert str(first.shape[0]).startswith("u")
    assert again.shape[1:] == (3,)
