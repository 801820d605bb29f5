"""Random CNN / MLP / RNN stacks with one injected mistake of a known family.

The right rule must come first in >= 95% of the drawn models, and no fix that the dry re-run
accepts may fail when the fixed model runs for real (checked on every finding, not only the
first).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import Phase, given, note, settings
from hypothesis import strategies as st
from test_rules import Case, check_findings, runs
from torch import nn

import shapecheck
from shapecheck._advise import context
from shapecheck._diagnose import FAILURE_RULES, Finding, find
from shapecheck._fixes import View
from shapecheck._loss import loss_hooks, loss_module
from shapecheck._repair import MAX_CANDIDATES, planned
from shapecheck._trace import run_trace

Draw = Callable[[st.SearchStrategy[Any]], Any]
META = torch.device("meta")  # the stand-in for CUDA: no GPU needed to mix devices


def _convs(draw: Draw, c_in: int, n: int) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    c = c_in
    for _ in range(n):
        out = draw(st.integers(2, 8))
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c = out
    return layers, c


def _cnn(draw: Draw) -> tuple[int, int, int, list[nn.Module], int]:
    c_in, n = draw(st.sampled_from([1, 3])), draw(st.integers(1, 2))
    side = draw(st.sampled_from([8, 12, 16]))
    layers, c = _convs(draw, c_in, n)
    return c_in, side, side >> n, layers, c


def missing_flatten(draw: Draw) -> Case:
    c_in, side, s, layers, c = _cnn(draw)
    model = nn.Sequential(*layers, nn.Linear(c * s * s, draw(st.integers(2, 5))))
    return model, (torch.randn(2, c_in, side, side),), None, None


def linear_in_features(draw: Draw) -> Case:
    c_in, side, s, layers, c = _cnn(draw)
    wrong = c * s * s + draw(st.integers(1, 20))
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(wrong, 3))
    return model, (torch.randn(2, c_in, side, side),), None, None


def channels_last(draw: Draw) -> Case:
    c_in, side, _, layers, _ = _cnn(draw)
    return nn.Sequential(*layers), (torch.randn(2, side, side + 2, c_in),), None, None


def conv_in_channels(draw: Draw) -> Case:
    c_in, side, _, layers, c = _cnn(draw)
    wrong = c + draw(st.integers(1, 4))
    model = nn.Sequential(*layers, nn.Conv2d(wrong, 4, 1))
    return model, (torch.randn(2, c_in, side, side),), None, None


def missing_batch_dim(draw: Draw) -> Case:
    c_in, side, s, layers, c = _cnn(draw)
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * s * s, 3))
    return model, (torch.randn(c_in, side, side),), None, None


def input_too_small(draw: Draw) -> Case:
    c_in, side, s, layers, _ = _cnn(draw)
    model = nn.Sequential(*layers, nn.AvgPool2d(s + draw(st.integers(1, 4))))
    return model, (torch.randn(2, c_in, side, side),), None, None


def norm_features(draw: Draw) -> Case:
    c_in, side, _, layers, c = _cnn(draw)
    model = nn.Sequential(*layers, nn.BatchNorm2d(c + draw(st.integers(1, 4))))
    return model, (torch.randn(2, c_in, side, side),), None, None


def dtype(draw: Draw) -> Case:
    width = draw(st.integers(2, 9))
    model = nn.Sequential(nn.Linear(width, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(3, width, dtype=draw(st.sampled_from([torch.float64, torch.float16])))
    return model, (x,), None, None


def rnn_input(draw: Draw) -> Case:
    cls = draw(st.sampled_from([nn.LSTM, nn.GRU, nn.RNN]))
    size = draw(st.integers(2, 8))
    model = cls(size, 4, batch_first=True)
    return model, (torch.randn(2, 3, size + draw(st.integers(1, 4))),), None, None


def embedding_index(draw: Draw) -> Case:
    n = draw(st.integers(3, 20))
    model = nn.Sequential(nn.Embedding(n, 4), nn.Linear(4, 2))
    ids = torch.tensor([[0, n + draw(st.integers(0, 5))]])
    return model, (ids,), None, None


def loss_target(draw: Draw) -> Case:
    classes = draw(st.integers(2, 6))
    model = nn.Sequential(nn.Linear(5, classes))
    labels = torch.arange(4) % classes
    target = draw(st.sampled_from([F.one_hot(labels, classes), labels[:, None], labels.float()]))
    return model, (torch.randn(4, 5),), nn.CrossEntropyLoss(), target


class _ViewHead(nn.Module):
    """A conv stack, then ``view(-1, n)`` sized for another input: the batch absorbs the rest."""

    def __init__(self, features: nn.Module, n: int, classes: int) -> None:
        super().__init__()
        self.features, self.n, self.fc = features, n, nn.Linear(n, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.features(x).view(-1, self.n))
        return out


def view_batch(draw: Draw) -> Case:
    c_in, side, s, layers, c = _cnn(draw)
    # sized for an input of another side (the tutorial's 32 px LeNet fed 28 px, say)
    n = c * draw(st.sampled_from([t for t in (1, 2, 3, 4, 6, 8) if t != s])) ** 2
    model = _ViewHead(nn.Sequential(*layers), n, 3)
    x = torch.randn(draw(st.integers(2, 4)), c_in, side, side)
    divides = x.shape[0] * c * s * s % n == 0
    loss = divides or draw(st.booleans())  # a view that happens to divide fails only in the loss
    target = torch.arange(x.shape[0]) % 3
    return model, (x,), nn.CrossEntropyLoss() if loss else None, target if loss else None


class _UNet(nn.Module):
    """Encoder maps joined to upsampled decoder maps (U-Net skips), ``len(widths) - 1`` levels."""

    def __init__(self, c_in: int, widths: list[int], transposed: bool) -> None:
        super().__init__()
        pairs = list(itertools.pairwise(widths))
        self.inc = nn.Conv2d(c_in, widths[0], 3, padding=1)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(a, b, 3, padding=1), nn.ReLU())
            for a, b in pairs
        )
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(b, b, 2, stride=2) if transposed else nn.Upsample(scale_factor=2)
            for _, b in pairs
        )
        self.merges = nn.ModuleList(nn.Conv2d(a + b, a, 3, padding=1) for a, b in pairs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up, merge in zip(reversed(self.ups), reversed(self.merges), strict=True):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return x


def cat_mismatch(draw: Draw) -> Case:
    levels = draw(st.integers(1, 3))
    widths = [draw(st.integers(2, 6)) for _ in range(levels + 1)]
    c_in, factor = draw(st.sampled_from([1, 3])), 2**levels
    h = draw(st.integers(factor, 5 * factor))
    w = factor * draw(st.integers(1, 4)) + draw(st.integers(1, factor - 1))  # not divisible
    if draw(st.booleans()):
        h, w = w, h
    model = _UNet(c_in, widths, draw(st.booleans()))
    return model, (torch.randn(draw(st.integers(1, 2)), c_in, h, w),), None, None


class _Unregistered(nn.Module):
    """A stem, then layers kept in a plain list/tuple/dict: not registered, so ``.to()`` and
    ``.parameters()`` miss them."""

    def __init__(self, stem: nn.Module, loose: list[nn.Module], container: str) -> None:
        super().__init__()
        self.stem = stem
        self.loose: Any = (
            {f"l{i}": m for i, m in enumerate(loose)}
            if container == "dict"
            else tuple(loose)
            if container == "tuple"
            else loose
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x[0][:, -1] if isinstance(x, tuple) else x  # an RNN stem: its last step
        for layer in self.loose.values() if hasattr(self.loose, "values") else self.loose:
            x = torch.relu(layer(x))
        return x


def _device_stack(draw: Draw) -> tuple[nn.Module, list[nn.Module], torch.Tensor]:
    kind, n, width = draw(st.sampled_from(["mlp", "cnn", "rnn"])), draw(st.integers(1, 3)), 4
    loose: list[nn.Module] = [nn.Linear(width, width) for _ in range(n)]
    if kind == "cnn":  # a conv on meta does not check devices; the Linear head does (as CUDA)
        stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        return stem, loose, torch.randn(2, 3, 6, 6)
    if kind == "rnn":
        stem = draw(st.sampled_from([nn.GRU, nn.LSTM, nn.RNN]))(3, width, batch_first=True)
        return stem, loose, torch.randn(2, 5, 3)
    return nn.Linear(5, width), loose, torch.randn(3, 5)


def device(draw: Draw) -> Case:
    # meta stands in for CUDA (as in ../shared/cases/device_gru_linear_list.py)
    stem, loose, x = _device_stack(draw)
    container = draw(st.sampled_from(["list", "tuple", "dict"]))
    if draw(st.booleans()):  # the report's way: list members moved by hand, the rest not
        moved = set(draw(st.lists(st.integers(0, len(loose) - 1), min_size=1, unique=True)))
        loose = [m.to(META) if i in moved else m for i, m in enumerate(loose)]
        return _Unregistered(stem, loose, container), (x,), None, None
    model = _Unregistered(stem, loose, container).to(META)  # model.to(device) misses the list
    return model, (x.to(META),), None, None


class _Attend(nn.Module):
    """A front layer, then MultiheadAttention of ``x`` over ``memory`` (itself when None)."""

    def __init__(self, front: nn.Module, attn: nn.MultiheadAttention) -> None:
        super().__init__()
        self.front, self.attn = front, attn

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor | None = None, pad: torch.Tensor | None = None
    ) -> Any:
        x = self.front(x)
        memory = x if memory is None else memory
        return self.attn(x, memory, memory, key_padding_mask=pad)[0]


def attention_dim(draw: Draw) -> Case:
    e, heads = draw(st.sampled_from([(4, 1), (4, 2), (6, 2), (8, 2), (8, 4)]))
    n, length, other = draw(st.integers(2, 4)), draw(st.integers(5, 7)), draw(st.integers(2, 4))
    mistake = draw(st.sampled_from(["embed", "flat", "layout", "cross", "kdim"]))
    front = draw(st.sampled_from([nn.Identity, nn.ReLU, nn.Dropout]))()
    first = mistake == "layout" and draw(st.booleans())  # the model is batch_first: fed (L, N, E)
    attn = nn.MultiheadAttention(e, heads, batch_first=first)
    if mistake == "embed":  # features of another width
        width = draw(st.sampled_from([v for v in range(2, 13) if v % e]))
        return _Attend(front, attn), (torch.randn(n, length, width),), None, None
    if mistake == "flat":  # a (N, L*E) flattened sequence
        return _Attend(front, attn), (torch.randn(n, length * e),), None, None
    if mistake == "layout":  # padding mask (N, L) against the other layout
        x = torch.randn(length, n, e) if first else torch.randn(n, length, e)
        return _Attend(front, attn), (x, None, torch.zeros(n, length, dtype=torch.bool)), None, None
    if mistake == "cross":  # batch-first query and memory of other lengths, batch_first=False
        memory = torch.randn(n, length + other, e)
        return _Attend(front, attn), (torch.randn(n, length, e), memory), None, None
    memory = torch.randn(n, length, e + other)  # key/value features != kdim/vdim
    return _Attend(front, attn), (torch.randn(n, length, e), memory), None, None


class _Block(nn.Module):
    """A residual block whose branch changes channels and/or stride, its shortcut identity."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))) + x)


def residual_mismatch(draw: Draw) -> Case:
    c_in = draw(st.integers(2, 6))
    stride = draw(st.sampled_from([1, 2]))
    c_out = c_in + draw(st.integers(1, 4)) if stride == 1 else draw(st.integers(2, 8))
    model = nn.Sequential(
        nn.Conv2d(3, c_in, 3, padding=1),
        _Block(c_in, c_out, stride),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c_out, 3),
    )
    side = draw(st.sampled_from([8, 12, 16]))
    return model, (torch.randn(draw(st.integers(1, 3)), 3, side, side),), None, None


class _PerSampleView(nn.Module):
    """A head that flattens with ``view(x.size(0), n)`` for a size it was not written for."""

    def __init__(self, features: nn.Module, n: int) -> None:
        super().__init__()
        self.features, self.n, self.fc = features, n, nn.Linear(n, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)
        out: torch.Tensor = self.fc(y.view(y.size(0), self.n))
        return out


def view_size(draw: Draw) -> Case:
    c_in, side, s, layers, c = _cnn(draw)
    n = c * draw(st.sampled_from([t for t in (1, 2, 3, 5, 7) if t != s])) ** 2
    model = _PerSampleView(nn.Sequential(*layers), n)
    return model, (torch.randn(draw(st.integers(1, 4)), c_in, side, side),), None, None


class _MergeHeads(nn.Module):
    def __init__(self, heads: int, dim: int) -> None:
        super().__init__()
        self.heads, self.proj = heads, nn.Linear(heads * dim, heads * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        split = self.proj(x).view(b, t, self.heads, c // self.heads).transpose(1, 2)
        heads = split.contiguous()  # (b, h, t, d), as attention's output comes
        out: torch.Tensor = heads.transpose(1, 2).view(b, t, c)  # needs reshape
        return out


def view_contiguous(draw: Draw) -> Case:
    heads, dim = draw(st.integers(2, 4)), draw(st.integers(2, 5))
    x = torch.randn(draw(st.integers(1, 3)), draw(st.integers(2, 6)), heads * dim)
    return _MergeHeads(heads, dim), (x,), None, None


class _Softmax(nn.Module):
    def __init__(self, features: int, classes: int, dim: int) -> None:
        super().__init__()
        self.fc, self.dim = nn.Linear(features, classes), dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.fc(x), dim=self.dim)


def dim_out_of_range(draw: Draw) -> Case:
    features = draw(st.integers(2, 9))
    model = _Softmax(features, draw(st.integers(2, 5)), dim=1)
    return model, (torch.randn(features),), None, None  # one sample, no batch dim


class _SizedStem(nn.Module):
    """A patch embedding that checks the image size it was built for (as ViTs do)."""

    def __init__(self, image_size: int, patch: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.proj = nn.Conv2d(3, 4, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(
                f"Wrong image size! Expected {self.image_size} but got {x.shape[-2]}x{x.shape[-1]}!"
            )
        out: torch.Tensor = self.proj(x).flatten(2).mean(-1)
        return out


def input_size(draw: Draw) -> Case:
    patch = draw(st.sampled_from([2, 4]))
    size = patch * draw(st.integers(2, 6))
    fed = draw(st.sampled_from([s for s in (8, 12, 16, 20) if s != size]))
    return _SizedStem(size, patch), (torch.randn(draw(st.integers(1, 3)), 3, fed, fed),), None, None


FAMILIES: dict[str, Callable[[Draw], Case]] = {
    "missing-flatten": missing_flatten,
    "linear-in-features": linear_in_features,
    "view-batch": view_batch,
    "channels-last": channels_last,
    "conv-in-channels": conv_in_channels,
    "missing-batch-dim": missing_batch_dim,
    "input-too-small": input_too_small,
    "norm-features": norm_features,
    "dtype": dtype,
    "device": device,
    "embedding-index": embedding_index,
    "attention-dim": attention_dim,
    "cat-mismatch": cat_mismatch,
    "loss-target": loss_target,
    "rnn-input": rnn_input,
    "residual-mismatch": residual_mismatch,
    "view-size": view_size,
    "view-contiguous": view_contiguous,
    "dim-out-of-range": dim_out_of_range,
    "input-size": input_size,
}
PER_FAMILY = 5  # 100 models: the whole file stays near 30 s on two busy cores


def test_every_failure_rule_has_a_family() -> None:
    # the tensor-parallel rules need a (fake) process group: their families are drawn in
    # tests/test_sharded.py
    assert sorted(FAMILIES) == sorted({r.id for r in FAILURE_RULES if not r.id.startswith("tp-")})


def check_second_steps(case: Case, found: list[tuple[Finding, bool]]) -> None:
    """The second step of a repair plan: after a first fix that is not enough alone, every fix
    that the dry re-run accepts must make the REAL forward (and loss) run too."""
    model, args, loss_fn, target = case
    loss = loss_module(loss_fn)
    base = View(model, args, {}, target=target)
    for finding in [finding for finding, ok in found[:MAX_CANDIDATES] if not ok]:
        with planned(base, (finding.fix,)) as first:
            hooks = loss_hooks(loss, first.target)
            trace = run_trace(
                first.model,
                first.args,
                first.kwargs,
                dry_run=False,
                rewrites=first.rewrites,
                **hooks,
            )
            if trace.failure is None:
                continue
            for step in find(context(trace, first.model, loss), FAILURE_RULES)[:MAX_CANDIDATES]:
                with planned(first, (step.fix,)) as second:
                    dry_ok = runs(second, loss, dry_run=True)
                    assert not dry_ok or runs(second, loss, dry_run=False), (
                        f"{finding.rule} then {step.rule}: dry ok but real fails"
                    )


def _first_rule(case: Case) -> str | None:
    """The rule of the report's first diagnosis: what a user reads first."""
    model, args, loss_fn, target = case
    report = shapecheck.explain(model, *args, loss_fn=loss_fn, target=target)
    return report.diagnoses[0].rule if report.diagnoses else None


def _rates(firsts: dict[str, list[str | None]]) -> str:
    lines = [
        f"  {family:<20} {sum(r == family for r in got)}/{len(got)}"
        + "".join(f"  (got {r})" for r in got if r != family)
        for family, got in sorted(firsts.items())
    ]
    return "\n".join(lines)


def test_right_rule_first_and_every_accepted_fix_runs(
    record_property: Callable[[str, object], None], capsys: pytest.CaptureFixture[str]
) -> None:
    firsts: dict[str, list[str | None]] = {}

    @settings(max_examples=1, database=None, phases=[Phase.generate])  # no slow shrinking
    @given(st.data())
    def draw_all(data: st.DataObject) -> None:
        firsts.clear()  # a failing example is replayed while shrinking: count each run once
        for family in sorted(FAMILIES):
            for _ in range(PER_FAMILY):
                torch.manual_seed(0)
                case = FAMILIES[family](data.draw)
                note(f"family {family}: {case[0]!r} on {[getattr(a, 'shape', a) for a in case[1]]}")
                # every fix the dry re-run accepts, alone or as a plan's second step, runs for real
                check_second_steps(case, check_findings(case))
                firsts.setdefault(family, []).append(_first_rule(case))

    draw_all()
    hits = sum(r == family for family, got in firsts.items() for r in got)
    total = sum(len(got) for got in firsts.values())
    record_property("right_rule_first", f"{hits}/{total}")
    with capsys.disabled():
        print(f"\nright rule first: {hits}/{total} = {hits / total:.0%}\n{_rates(firsts)}")
    assert hits / total >= 0.95, _rates(firsts)
