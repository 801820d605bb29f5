"""explain() on the structures real models have: lazy modules, reuse, nesting, kwargs, errors."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo import SharedTwice, TwoTowers, WithKwargs, capture, tensor_shapes, unique_params

import shapecheck

HERE = os.path.basename(__file__)


@pytest.fixture(params=[False, True], ids=["real", "dry"])
def dry_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def _line_of(text: str, func: object) -> int:
    """The line number of ``text`` in ``func``'s source (so tests do not hard-code lines)."""
    lines, start = inspect.getsourcelines(func)  # type: ignore[arg-type]
    return start + next(i for i, line in enumerate(lines) if text in line)


# -- lazy modules ---------------------------------------------------------------------------------


def test_lazy_model_is_not_modified(dry_run: bool):
    model = nn.Sequential(nn.LazyConv2d(4, 3), nn.Flatten(), nn.LazyLinear(5))
    x = torch.randn(2, 3, 6, 6)
    report = shapecheck.explain(model, x, dry_run=dry_run)
    assert report.ok, report
    assert report.fallback is None  # a dry run stays on fake tensors
    assert report.output_shapes == [(2, 5)]
    assert isinstance(model[2], nn.LazyLinear)
    assert model[2].has_uninitialized_params()
    assert isinstance(model[0], nn.LazyConv2d)
    assert model[0].has_uninitialized_params()
    # what it would have after a real forward, counted on a copy that really ran
    ran = nn.Sequential(nn.LazyConv2d(4, 3), nn.Flatten(), nn.LazyLinear(5))
    ran(x)
    assert report.total_params == unique_params(ran) == (3 * 9 * 4 + 4) + (4 * 4 * 4 * 5 + 5)
    owned = [layer.params for layer in report.layers if layer.kind == "module"]
    assert owned == [0, 3 * 9 * 4 + 4, 0, 4 * 4 * 4 * 5 + 5]


def test_lazy_batchnorm_model_is_explained_and_not_modified(dry_run: bool):
    # LazyBatchNorm's running statistics are UninitializedBuffers, which torch cannot deep-copy
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyBatchNorm2d(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 3, 6, 6)
    report = shapecheck.explain(model, x, dry_run=dry_run)
    assert report.ok, report
    assert report.fallback is None
    assert [layer.outputs[0].shape for layer in report.layers] == [
        (2, 2), (2, 4, 4, 4), (2, 4, 4, 4), (2, 64), (2, 2)]  # fmt: skip
    assert model[1].has_uninitialized_params()
    assert isinstance(model[1].running_mean, nn.parameter.UninitializedBuffer)
    ran = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyBatchNorm2d(), nn.Flatten(), nn.LazyLinear(2))
    ran(x)
    assert report.total_params == unique_params(ran)
    assert report.buffer_count == sum(b.numel() for b in ran.buffers()) == 4 + 4 + 1


def test_model_built_under_inference_mode_is_explained_and_not_modified(dry_run: bool):
    # inference tensors keep no version counter: reading one (buffer snapshot, fake cache) raised
    with torch.inference_mode():
        model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU()).eval()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    for _ in range(2):  # the second time, nothing kept from the first may be stale
        report = shapecheck.explain(model, torch.randn(5, 4), dry_run=dry_run)
        assert report.ok, report
        assert report.fallback is None
        assert [layer.outputs[0].shape for layer in report.layers] == [(5, 3)] * 4
    assert not model.training
    assert all(torch.equal(model.state_dict()[name], t) for name, t in before.items())
    # in train mode BatchNorm writes its inference-tensor statistics: torch refuses, as here
    model.train()
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor") as raised:
        model(torch.randn(5, 4))
    failed = shapecheck.explain(model, torch.randn(5, 4), dry_run=dry_run)
    assert failed.failure is not None
    assert failed.failure.path == "1"
    assert str(failed.failure.exception) == str(raised.value)


class _RelaysBuffer(nn.Module):
    """A forward that changes a buffer's layout in place and never undoes it."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.register_buffer("buf", torch.arange(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.buf  # fails once the buffer is no longer of 3 elements in a row
        if self.how == "unsqueeze_":
            self.buf.unsqueeze_(0)
        else:  # ``.data =``: a smaller tensor behind the same buffer
            self.buf.data = torch.zeros(1)
        return out


@pytest.mark.parametrize("how", ["unsqueeze_", ".data ="])
def test_a_buffer_relaid_in_place_is_put_back_and_no_fake_of_it_is_kept(dry_run: bool, how: str):
    # the buffer snapshot put values back but not the layout (a real run left buf 1x3), and a
    # dry run kept the fake the forward had changed (each repeat saw one more leading dim)
    model = _RelaysBuffer(how)
    fresh = _RelaysBuffer(how)(torch.randn(2, 3)).shape
    for _ in range(3):
        report = shapecheck.explain(model, torch.randn(2, 3), dry_run=dry_run)
        assert report.ok, report
        assert report.fallback is None  # a stale fake fails, and a real run would answer
        assert [info.shape for info in report.outputs] == [fresh]
        assert model.buf.shape == (3,)
        assert model.buf.tolist() == [0.0, 1.0, 2.0]


class _WritesWeights(nn.Module):
    """A forward that writes its own parameters in place (weight clipping, a re-init)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.out = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.lin.weight.data.clamp_(max=0.0)
        with torch.no_grad():
            nn.init.zeros_(self.lin.bias)
            self.out.weight[2, 1:].fill_(7.0)  # a view inside the storage, not at its start
        self.out.bias.data = torch.full((3,), 9.0)  # other memory: no write to see
        return self.out(self.lin(x))


def test_parameters_written_in_place_by_the_forward_are_put_back(dry_run: bool):
    model = _WritesWeights()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    memory = {name: t.data_ptr() for name, t in model.named_parameters()}
    report = shapecheck.explain(model, torch.randn(2, 3), dry_run=dry_run)
    assert report.ok, report
    assert report.fallback is None
    assert all(torch.equal(model.state_dict()[name], t) for name, t in before.items())
    assert {name: t.data_ptr() for name, t in model.named_parameters()} == memory
    model(torch.randn(2, 3))  # the same forward, run by the user, does write them
    assert not torch.equal(model.lin.bias, before["lin.bias"])
    assert not torch.equal(model.out.weight, before["out.weight"])


class _ReplacesInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.data = x.data[:1] * 0  # the caller's tensor given other memory
        return x * 2


def test_an_input_given_other_memory_by_the_forward_is_put_back(dry_run: bool):
    x = torch.randn(2, 3)
    before = x.clone()
    report = shapecheck.explain(_ReplacesInput(), x, dry_run=dry_run)
    assert report.ok, report.failure
    assert x.shape == before.shape
    assert torch.equal(x, before)


class _WritesSparse(nn.Module):
    """A forward that writes a sparse tensor in place: it has no storage to guard."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.eye(3).to_sparse()
        scale.mul_(2.0)
        return self.lin(x) + torch.sparse.mm(scale, x.T).T


def test_an_in_place_write_into_a_sparse_tensor_runs_as_in_torch():
    # looking up the storage the write goes to raised into the forward (sparse tensors have
    # none), so a model that runs was reported as failing
    model, x = _WritesSparse(), torch.randn(2, 3)
    report = shapecheck.explain(model, x)
    assert report.ok, report.failure
    assert [info.shape for info in report.outputs] == [tuple(model(x).shape)]


# -- paths ----------------------------------------------------------------------------------------


def test_module_reused_at_several_positions_gets_distinct_paths(dry_run: bool):
    block = nn.Sequential(nn.Linear(5, 5), nn.Tanh())
    model = nn.Sequential(block, block, block, nn.Linear(5, 1))
    report = shapecheck.explain(model, torch.randn(3, 5), dry_run=dry_run)
    paths = [x.path for x in report.layers if x.kind == "module"]
    assert paths == ["", "0", "0.0", "0.1", "1", "1.0", "1.1", "2", "2.0", "2.1", "3"]
    assert report.total_params == 30 + 6  # the shared block counted once
    assert report.layer("2.0").params == 30  # each row shows what the module owns


def test_module_called_twice_gives_two_rows(dry_run: bool):
    report = shapecheck.explain(SharedTwice(), torch.randn(3, 8), dry_run=dry_run)
    rows = [(x.path, x.type) for x in report.layers if x.kind == "module"]
    assert rows == [("", "SharedTwice"), ("proj", "Linear"), ("act", "GELU"), ("proj", "Linear")]
    assert report.total_params == 72


def test_paths_match_named_modules_on_nested_models():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), nn.ModuleDict({"x": nn.Identity()})
    )
    model.forward = lambda x: model[1]["x"](model[0](x))  # type: ignore[method-assign]
    report = shapecheck.explain(model, torch.randn(1, 1, 5, 5))
    seen = capture(model, torch.randn(1, 1, 5, 5))
    assert [(x.path, x.output_shapes) for x in report.layers if x.kind == "module"] == seen.calls


# -- nested inputs and outputs, kwargs ------------------------------------------------------------


def test_dict_input_and_nested_dict_output(dry_run: bool):
    batch = {"image": torch.randn(2, 3, 8, 8), "tokens": torch.randint(0, 30, (2, 5))}
    model = TwoTowers()
    report = shapecheck.explain(model, batch, dry_run=dry_run)
    assert report.ok, report
    real = model(batch)
    assert report.output_shapes == tensor_shapes(real) == [(2, 3), (2, 16), (2, 16)]
    assert report.input_shapes == [(2, 3, 8, 8), (2, 5)]
    assert report.inputs[1].dtype == "int64"
    cat = next(x for x in report.layers if x.type == "cat")
    assert (cat.kind, cat.path, cat.input_shapes, cat.output_shapes) == (
        "function", "", [(2, 16), (2, 16)], [(2, 32)])  # fmt: skip


def test_tuple_inputs_and_list_outputs(dry_run: bool):
    class Pair(nn.Module):
        def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
            a, b = pair
            return [a @ b, torch.stack([a, a.T.T])]

    report = shapecheck.explain(Pair(), (torch.randn(2, 3), torch.randn(3, 4)), dry_run=dry_run)
    assert report.output_shapes == [(2, 4), (2, 2, 3)]
    assert [x.type for x in report.layers if x.kind == "function"][:1] == ["matmul"]


def test_forward_kwargs_tensor_and_plain(dry_run: bool):
    model = WithKwargs()
    x, bias = torch.randn(2, 6), torch.ones(4)
    report = shapecheck.explain(model, x, scale=0.5, bias=bias, dry_run=dry_run)
    assert report.ok
    assert report.output_shapes == [(2, 4)]
    assert report.input_shapes == [(2, 6), (4,)]
    assert [x.type for x in report.layers if x.kind == "function"] == ["mul", "add"]
    # a wrong kwarg shape is a failure of the model, reported, not raised
    bad = shapecheck.explain(model, x, bias=torch.ones(5), dry_run=dry_run)
    assert not bad.ok
    assert bad.failure is not None
    assert bad.failure.type == "add"


def test_int_tuples_next_to_tensors_are_arguments_not_shapes():
    # CTCLoss takes its lengths as tuples of ints: these are arguments, not shapes
    log_probs = torch.randn(50, 3, 15).log_softmax(2)
    targets = torch.randint(1, 15, (3, 30))
    report = shapecheck.explain(nn.CTCLoss(), log_probs, targets, (50, 50, 50), (30, 25, 20))
    assert report.ok, report
    assert report.output_shapes == [()]
    lengths = shapecheck.explain(WithKwargs(), torch.randn(2, 6), scale=2)
    assert lengths.ok


# -- failures of every kind -----------------------------------------------------------------------


class Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lin(x)
        raise ValueError("boom")


def test_errors_that_are_not_about_shapes_are_reported(dry_run: bool):
    report = shapecheck.explain(Boom(), torch.randn(2, 4), dry_run=dry_run)
    assert not report.ok
    assert report.failure is not None
    assert isinstance(report.failure.exception, ValueError)
    assert str(report.failure.exception) == "boom"
    assert (report.failure.path, report.failure.type) == ("", "Boom")
    assert report.failure.source == f"{__file__}:{_line_of('boom', Boom.forward)}"
    assert report.layer("lin").output_shapes == [(2, 4)]  # the table up to the failure
    text = str(report)
    assert "ValueError" in text
    assert "boom" in text
    assert f"{HERE}:" in text


class CatFails(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.inner = nn.Sequential(nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.inner(torch.cat([x, y], dim=0))


def test_failing_functional_op_is_located_in_its_module(dry_run: bool):
    x = torch.randn(2, 3)
    report = shapecheck.explain(CatFails(), x, dry_run=dry_run)
    seen = capture(CatFails(), x)
    assert report.failure is not None
    assert seen.error is not None
    assert (report.failure.path, report.failure.type) == (seen.failed, "cat") == ("", "cat")
    assert report.failure.input_shapes == [(2, 3), (2, 4)]
    assert report.failure.source == f"{__file__}:{_line_of('torch.cat', CatFails.forward)}"
    assert [x.path for x in report.layers if x.failed] == ["", ""]  # the root and the cat call


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(5, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_failure_path_is_the_innermost_module(dry_run: bool):
    x = torch.randn(2, 4)
    report = shapecheck.explain(Nested(), x, dry_run=dry_run)
    seen = capture(Nested(), x)
    assert report.failure is not None
    assert report.failure.path == seen.failed == "body.1.1"
    assert [x.path for x in report.layers if x.failed] == ["", "body", "body.1", "body.1.1"]


def test_keyboard_interrupt_propagates_and_cleans_up():
    class Interrupted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise KeyboardInterrupt

    model = Interrupted().train()
    with pytest.raises(KeyboardInterrupt):
        shapecheck.explain(model, torch.randn(1, 2))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert model.training
    assert torch.overrides._get_current_function_mode_stack() == []


def test_raise_for_failure_reraises_the_same_object_with_a_note():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(4, 1))
    report = shapecheck.explain(model, torch.randn(2, 3))
    assert report.failure is not None
    with pytest.raises(RuntimeError) as caught:
        report.raise_for_failure()
    assert caught.value is report.failure.exception
    assert any("'1'" in note for note in caught.value.__notes__)
    ok = shapecheck.explain(nn.Linear(3, 3), torch.randn(2, 3))
    assert ok.raise_for_failure() is ok


def test_to_dict_is_json(dry_run: bool):
    report = shapecheck.explain(nn.Sequential(nn.Linear(3, 3), nn.Linear(4, 1)),
                                torch.randn(2, 3), dry_run=dry_run)  # fmt: skip
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert data["failure"]["path"] == "1"
    assert [x["path"] for x in data["layers"]] == ["", "0", "1"]


# -- devices --------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the simulated device (no GPU here)")
def test_dry_run_on_a_cuda_input_without_a_gpu():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 16 * 16, 10))  # fmt: skip
    report = shapecheck.explain(model, input_size=(1, 3, 32, 32), device="cuda", dry_run=True)
    assert report.ok, report
    assert report.dry_run
    assert [x.output_shapes for x in report.layers] == [
        [(1, 10)], [(1, 8, 32, 32)], [(1, 8, 16, 16)], [(1, 2048)], [(1, 10)]]  # fmt: skip
    devices = {t.device for x in report.layers for t in (*x.inputs, *x.outputs)}
    assert devices == {"cuda"}
    assert {t.device for t in report.inputs} == {"cuda"}
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(shapecheck.UsageError, match="dry_run=True"):
        shapecheck.explain(model, input_size=(1, 3, 32, 32), device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the simulated device (no GPU here)")
def test_cuda_dry_run_still_diagnoses_the_seed():
    from shapecheck.demo import seed_model

    report = shapecheck.explain(seed_model(), input_size=(1, 3, 32, 32), device="cuda",
                                dry_run=True)  # fmt: skip
    assert report.failure is not None
    assert report.failure.path == "6"
    assert [(d.rule, d.verified) for d in report.diagnoses] == [("missing-flatten", True)]


# -- dry runs from shapes alone -------------------------------------------------------------------

# 2**20 * 3 * 4096 * 4096 float32 values: ~844 TB, which no allocator grants (it raises at once)
_NO_MEMORY_HOLDS = (2**20, 3, 4096, 4096)


def _conv_head() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))  # fmt: skip


@pytest.mark.parametrize("device", [None, "cpu"])
def test_dry_run_from_input_size_allocates_no_input(device):
    report = shapecheck.explain(_conv_head(), input_size=_NO_MEMORY_HOLDS, device=device,
                                dry_run=True)  # fmt: skip
    assert report.ok, report
    assert report.layers[1].output_shapes == [(2**20, 4, 64, 64)]
    assert report.outputs[0].shape == (2**20, 2)
    assert {t.device for t in report.inputs} == {"cpu"}
    with pytest.raises(RuntimeError, match="allocate"):  # the same input for real
        torch.empty(_NO_MEMORY_HOLDS)


def test_a_meta_input_stands_for_its_shape_in_a_dry_run():
    model = _conv_head()
    report = shapecheck.explain(model, torch.empty(_NO_MEMORY_HOLDS, device="meta"), dry_run=True)
    assert report.ok, report
    assert report.outputs[0].shape == (2**20, 2)
    assert next(model.parameters()).device.type == "cpu"


class _CountsPositives(nn.Module):
    """Data-dependent: fake tensors cannot know how many values are positive."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x[:1]) * int((x > 0).sum())


def test_a_dry_run_that_needs_data_makes_it_from_the_shapes():
    report = shapecheck.explain(_CountsPositives(), input_size=(8, 4), dry_run=True)
    assert not report.dry_run  # it went on for real, on example data
    assert report.ok, report
    assert report.outputs[0].shape == (1, 3)


class _NonzeroHead(nn.Module):
    """Forgets to flatten; after the fix, ``nonzero`` needs data fake tensors do not have."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(self.conv(x))
        return y[torch.nonzero(y > -100, as_tuple=True)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the simulated device (no GPU here)")
def test_a_fix_checked_for_real_under_a_simulated_device_runs_where_data_can_live():
    report = shapecheck.explain(_NonzeroHead(), input_size=(2, 3, 8, 8), dry_run=True,
                                device="cuda")  # fmt: skip
    assert report.failure is not None
    assert report.failure.path == "fc"
    first = report.diagnoses[0]
    assert (first.rule, first.verified, first.output_shapes_after_fix) == (
        "missing-flatten", True, [(4,)],
    )  # fmt: skip


def test_a_shape_only_failure_is_diagnosed_and_fixed_dry():
    from shapecheck.demo import seed_model

    report = shapecheck.explain(seed_model(), input_size=(1, 3, 32, 32), dry_run=True)
    assert report.failure is not None
    assert report.failure.path == "6"
    assert [(d.rule, d.verified) for d in report.diagnoses] == [("missing-flatten", True)]
    assert report.diagnoses[0].output_shapes_after_fix == [(1, 2)]


def test_meta_model_is_dry_run_automatically():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 3))
    report = shapecheck.explain(model, torch.randn(2, 1000))
    assert report.dry_run
    assert report.ok
    assert report.output_shapes == [(2, 3)]
    assert report.total_params == 1000 * 1000 + 1000 + 3000 + 3


# -- functional models (the book's Net) -----------------------------------------------------------


def test_functional_steps_are_rows(dry_run: bool):
    from zoo import BookNet

    report = shapecheck.explain(BookNet(), torch.randn(1, 3, 32, 32), dry_run=dry_run)
    steps = [(x.type, x.output_shapes) for x in report.layers if x.path != "" or x.kind != "module"]
    assert steps == [
        ("Conv2d", [(1, 16, 32, 32)]), ("tanh", [(1, 16, 32, 32)]),
        ("max_pool2d", [(1, 16, 16, 16)]),
        ("Conv2d", [(1, 8, 16, 16)]), ("tanh", [(1, 8, 16, 16)]), ("max_pool2d", [(1, 8, 8, 8)]),
        ("view", [(1, 512)]), ("Linear", [(1, 32)]), ("tanh", [(1, 32)]), ("Linear", [(1, 2)]),
    ]  # fmt: skip
    view = next(x for x in report.layers if x.type == "view")
    assert view.summary == "view(-1, 512)"
    assert view.kind == "function"


def test_view_batch_in_the_book_net_is_found(dry_run: bool):
    from zoo import BookNet

    # 2 images of 16x16 instead of 32x32: view(-1, 512) silently makes a batch of 1 ... of 2*2*2*8
    model = BookNet()
    x = torch.randn(8, 3, 16, 16)
    report = shapecheck.explain(model, x, dry_run=dry_run)
    seen = capture(model, x)
    assert report.ok == (seen.error is None)
    view = next(x for x in report.layers if x.type == "view")
    assert view.output_shapes == [(2, 512)]
    # F.linear(fc2) runs, so the model "works" with the wrong batch: explain says so in shapes
    assert report.output_shapes == tensor_shapes(seen.output) == [(2, 2)]


def test_plain_function_is_not_traced_silently():
    with pytest.raises(shapecheck.UsageError, match=r"nn\.Module"):
        shapecheck.explain(F.relu, torch.randn(2))  # type: ignore[arg-type]


# -- torch.compile'd models -----------------------------------------------------------------------


class _CompiledBody(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = torch.compile(body, backend="eager")
        self.head = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.body(x))
        return out


def test_a_compiled_model_is_explained_as_the_module_inside():
    from shapecheck.demo import seed_model

    model, x = seed_model(), torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="eager")
    report = shapecheck.explain(compiled, x)
    plain = shapecheck.explain(model, x)
    assert report.model_type == "Sequential"
    assert [(r.path, r.output_shapes) for r in report.layers] == [
        (r.path, r.output_shapes) for r in plain.layers
    ]
    assert report.failure is not None
    assert report.failure.path == "6"
    assert [(d.rule, d.verified) for d in report.diagnoses] == [("missing-flatten", True)]
    fixed = report.diagnoses[0].apply(compiled)  # an eager copy: compile it again if wanted
    assert isinstance(fixed[6], nn.Flatten)
    assert fixed(x).shape == (2, 2)


def test_a_compiled_model_that_already_ran_compiled_is_traced_eagerly():
    from shapecheck.demo import seed_model_fixed

    compiled, x = torch.compile(seed_model_fixed(), backend="eager"), torch.randn(2, 3, 32, 32)
    expected = compiled(x)  # compiles (dynamo's eager backend: no code generation)
    report = shapecheck.explain(compiled, x)
    assert report.ok, report
    assert report.output_shapes == [tuple(expected.shape)]
    assert len(report.layers) == 11  # every layer has its row: hooks saw the eager forward


def test_a_fix_inside_a_compiled_submodule_is_verified_and_kept():
    from shapecheck.demo import seed_model

    model, x = _CompiledBody(seed_model()), torch.randn(2, 3, 32, 32)
    report = shapecheck.explain(model, x)
    assert report.failure is not None
    assert report.failure.path == "body._orig_mod.6"
    first = report.diagnoses[0]
    assert (first.rule, first.verified, first.output_shapes_after_fix) == (
        "missing-flatten", True, [(2, 2)],
    )  # fmt: skip
    assert first.apply(model)(x).shape == (2, 2)
    assert type(model.body).__name__ == "OptimizedModule"  # the user's model keeps its wrapper
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        model.body._orig_mod(x)


def test_a_data_parallel_model_is_explained_as_the_module_inside():
    from shapecheck.demo import seed_model

    model = seed_model()
    wrapped, x = nn.DataParallel(model), torch.randn(2, 3, 32, 32)
    report = shapecheck.explain(wrapped, x)
    assert report.model_type == "Sequential"
    assert report.failure is not None
    assert report.failure.path == "6"
    assert report.diagnoses[0].verified
    assert report.diagnoses[0].apply(wrapped)(x).shape == (2, 2)


def test_explain_leaves_the_compiler_unimported_when_nothing_was_compiled():
    """Making compiled submodules run eagerly must not import torch._dynamo (~75 MiB) when a
    model that never touched torch.compile runs (fake tensors, for fixes, import it anyway)."""
    code = (
        "import sys, torch, shapecheck\n"
        "from shapecheck.demo import seed_model_fixed\n"
        "shapecheck.explain(seed_model_fixed(), torch.randn(1, 3, 32, 32))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)  # fmt: skip
    assert done.stdout.strip() == "False", done.stderr


def test_dry_runs_of_an_unchanged_model_reuse_its_fake_weights() -> None:
    """Converting weights to fakes is kept between dry runs of the same model, and redone for a
    weight that changed: the dry run then sees the new shape, as a real run does."""
    from shapecheck import _dry
    from shapecheck.demo import seed_model_fixed

    model = seed_model_fixed()
    first = shapecheck.explain(model, input_size=(2, 3, 32, 32), dry_run=True)
    kept = _dry._FAKES[(id(model), "None")][1]
    fakes = {key: fake for key, (_, _, fake) in kept.fakes.items()}
    again = shapecheck.explain(model, input_size=(2, 3, 32, 32), dry_run=True)
    assert [r.output_shapes for r in again.layers] == [r.output_shapes for r in first.layers]
    assert {key: fake for key, (_, _, fake) in kept.fakes.items()} == fakes  # the same fakes
    model[0].weight.data = torch.randn(16, 3, 5, 5)  # same parameter object, a 5x5 kernel now
    dry = shapecheck.explain(model, input_size=(2, 3, 32, 32), dry_run=True)
    real = shapecheck.explain(model, torch.randn(2, 3, 32, 32))
    assert dry.layer("0").output_shapes == real.layer("0").output_shapes == [(2, 16, 30, 30)]
    assert _dry._FAKES[(id(model), "None")][1] is not kept  # all made again
