"""One real broken model per diagnosis rule: PyTorch's own error, the right rule first, its
message as a golden file, and its fix applied to a real forward.

Golden files live in ``tests/golden/rules``; rewrite them with ``SHAPECHECK_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shapecheck
from shapecheck import _symbolic
from shapecheck._advise import context
from shapecheck._compat import torch_at_least
from shapecheck._diagnose import FAILURE_RULES, WARNING_RULES, Finding, find
from shapecheck._fixes import View
from shapecheck._loss import loss_hooks, loss_module
from shapecheck._repair import planned
from shapecheck._trace import run_trace

GOLDEN = Path(__file__).parent / "golden" / "rules"
Case = tuple[nn.Module, tuple[Any, ...], Any, Any]  # model, args, loss_fn, target


def runs(view: View, loss: nn.Module | None, dry_run: bool) -> bool:
    """The fixed view run once (real or on fake tensors), loss included."""
    trace = run_trace(
        view.model,
        view.args,
        view.kwargs,
        dry_run=dry_run,
        rewrites=view.rewrites,
        **loss_hooks(loss, view.target),
    )
    return trace.ok


def check_findings(case: Case) -> list[tuple[Finding, bool]]:
    """Every finding for the case's failure, with whether its fix re-runs dry; asserts that each
    fix that re-runs dry also makes the REAL forward (and loss) run."""
    model, args, loss_fn, target = case
    loss = loss_module(loss_fn)
    trace = run_trace(model, args, {}, dry_run=False, **loss_hooks(loss, target))
    assert trace.failure is not None, "the case must fail"
    base = View(model, args, {}, target=target)
    results = []
    for finding in find(context(trace, base.model, loss), FAILURE_RULES):
        with planned(base, (finding.fix,)) as view:
            ok = runs(view, loss, dry_run=True)
            assert not ok or runs(view, loss, dry_run=False), f"{finding.rule}: dry ok, real fails"
        results.append((finding, ok))
    return results


def _seq_conv(c: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))


class _Unet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1))
        self.inc = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.inc(x)
        return torch.cat([a, self.up(self.down(a))], dim=1)


class _Gru(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cells = [nn.Linear(4, 4).to("meta")]  # a plain list: not registered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for cell in self.cells:
            x = cell(x)
        return x


class _Loop(nn.Module):
    """A hand-written recurrence that steps over dim 0."""

    def __init__(self) -> None:
        super().__init__()
        self.i2h, self.h2h = nn.Linear(5, 6), nn.Linear(6, 6)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        for t in range(x.size(0)):
            h = torch.tanh(self.i2h(x[t]) + self.h2h(h))
        return h


def _rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


CASES: dict[str, Callable[[], Case]] = {
    "missing-flatten": lambda: (
        nn.Sequential(_seq_conv(), nn.Linear(8 * 4 * 4, 2)),
        (torch.randn(2, 3, 8, 8),),
        None,
        None,
    ),
    "linear-in-features": lambda: (
        nn.Sequential(_seq_conv(), nn.Flatten(), nn.Linear(100, 2)),
        (torch.randn(2, 3, 8, 8),),
        None,
        None,
    ),
    "view-batch": lambda: (_ViewNet(), (torch.randn(2, 3, 8, 8),), None, None),
    "channels-last": lambda: (_seq_conv(), (torch.randn(2, 8, 8, 3),), None, None),
    "conv-in-channels": lambda: (
        nn.Sequential(_seq_conv(), nn.Conv2d(16, 4, 3)),
        (torch.randn(2, 3, 8, 8),),
        None,
        None,
    ),
    "missing-batch-dim": lambda: (
        nn.Sequential(_seq_conv(), nn.Flatten(), nn.Linear(8 * 4 * 4, 2)),
        (torch.randn(3, 8, 8),),
        None,
        None,
    ),
    "input-too-small": lambda: (
        nn.Sequential(_seq_conv(), nn.Conv2d(8, 8, 3, stride=2), nn.MaxPool2d(4)),
        (torch.randn(2, 3, 16, 16),),
        None,
        None,
    ),
    "norm-features": lambda: (
        nn.Sequential(_seq_conv(), nn.BatchNorm2d(16)),
        (torch.randn(2, 3, 8, 8),),
        None,
        None,
    ),
    "rnn-input": lambda: (nn.LSTM(10, 6, batch_first=True), (torch.randn(2, 5, 12),), None, None),
    "dtype": lambda: (_seq_conv(), (torch.randn(2, 3, 8, 8, dtype=torch.float64),), None, None),
    "device": lambda: (_Gru(), (torch.randn(2, 4),), None, None),
    "embedding-index": lambda: (nn.Embedding(10, 4), (torch.tensor([[1, 2, 12]]),), None, None),
    "attention-dim": lambda: (_Attn(), (torch.randn(2, 5 * 8),), None, None),
    "cat-mismatch": lambda: (_Unet(), (torch.randn(1, 3, 9, 9),), None, None),
    "loss-target": lambda: (
        nn.Linear(4, 3),
        (torch.randn(5, 4),),
        nn.CrossEntropyLoss(),
        F.one_hot(torch.randint(0, 3, (5,), generator=_rng()), 3),
    ),
    "residual-mismatch": lambda: (_NoDownsample(), (torch.randn(2, 4, 8, 8),), None, None),
    "view-size": lambda: (_LeNet(), (torch.randn(2, 1, 28, 28),), None, None),
    "view-contiguous": lambda: (_Heads(split=False), (torch.randn(2, 5, 12),), None, None),
    "dim-out-of-range": lambda: (_Probs(), (torch.randn(6),), None, None),
    "input-size": lambda: (_PatchEmbed(), (torch.randn(2, 3, 8, 8),), None, None),
}


class _NoDownsample(nn.Module):
    """A residual block whose first conv doubles the channels and halves the size, while its
    shortcut passes the input on as it is: the downsample is missing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + x)


class _LeNet(nn.Module):
    """LeNet written for 32x32 images, fed 28x28 MNIST digits: its view asks for 16*5*5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        out: torch.Tensor = self.fc(x.view(x.size(0), 16 * 5 * 5))
        return out


class _Heads(nn.Module):
    """Attention heads split by hand: 3 heads of 5 for 12 features (``split``), or put back
    together with ``view`` after the transpose that made them (``view-contiguous``)."""

    def __init__(self, split: bool) -> None:
        super().__init__()
        self.split, self.qkv, self.out = split, nn.Linear(12, 12), nn.Linear(12, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q = self.qkv(x)
        heads = q.view(b, t, 3, 5 if self.split else 4).transpose(1, 2).contiguous()  # (b, h, t, d)
        out: torch.Tensor = self.out(heads.transpose(1, 2).view(b, t, c))
        return out


class _Probs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x), dim=1)


class _PatchEmbed(nn.Module):
    """A ViT-style patch embedding that checks its input against the size it was built for."""

    def __init__(self, img_size: int = 32, patch_size: int = 8) -> None:
        super().__init__()
        self.img_size, self.patch_size = (img_size, img_size), patch_size
        self.proj = nn.Conv2d(3, 16, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        assert (h, w) == self.img_size, (
            f"Input height ({h}) doesn't match model ({self.img_size[0]})."
        )
        out: torch.Tensor = self.proj(x).flatten(2).transpose(1, 2)
        return out


class _ViewNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = _seq_conv(), nn.Linear(8 * 3 * 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(-1, 8 * 3 * 3))


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> Any:
        return self.attn(x, x, x)[0]


PLANS = {
    "view-batch",
    "view-size",
}  # rules whose fix is verified as the first step of a repair plan


def _build(rule: str) -> Case:
    torch.manual_seed(0)
    return CASES[rule]()


def _real_error(case: Case) -> BaseException:
    model, args, loss_fn, target = case

    def forward() -> None:
        out = model(*args)
        if loss_fn is not None:
            loss_fn(out, target)

    with pytest.raises(Exception) as caught:  # noqa: PT011 - any of PyTorch's own errors
        forward()
    return caught.value


def _golden(rule: str, text: str) -> None:
    """The message against its golden file; line numbers in this file read ``<line>`` (the
    models sit here, and an edit above them must not change every golden)."""
    text = re.sub(r"test_rules\.py:\d+", "test_rules.py:<line>", text)
    path = GOLDEN / f"{rule}.txt"
    if os.environ.get("SHAPECHECK_UPDATE_GOLDEN") == "1":
        path.write_text(text + "\n")
    assert path.exists(), f"no golden file {path}; run with SHAPECHECK_UPDATE_GOLDEN=1"
    expected = path.read_text()
    if not torch_at_least(_symbolic.MINIMUM):  # no contract run: no line on accepted sizes
        expected = "".join(line for line in expected.splitlines(keepends=True)
                           if not line.startswith("  this model accepts "))  # fmt: skip
    assert text + "\n" == expected


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_first_verified_and_golden(rule: str) -> None:
    case = _build(rule)
    error = _real_error(case)
    report = shapecheck.explain(case[0], *case[1], loss_fn=case[2], target=case[3])
    assert report.failure is not None
    assert type(report.failure.exception) is type(error)
    first = report.diagnoses[0]
    assert first.rule == rule, [d.rule for d in report.diagnoses]
    # view-batch's fix is a two-step plan (flatten per sample, then size the Linear)
    assert first.verified, first.message
    assert first.verified_by == "real run"
    assert str(error).splitlines()[0] in first.message  # PyTorch's own words, verbatim
    _golden(rule, first.message)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_fix_runs_for_real(rule: str) -> None:
    found = check_findings(_build(rule))
    assert found[0][0].rule == rule
    assert rule in PLANS or any(ok for finding, ok in found if finding.rule == rule)


def test_rules_are_registered_once() -> None:
    readers = [r.read for r in FAILURE_RULES + WARNING_RULES]
    assert len(readers) == len(set(readers))
    # every failure rule has its case here; the tensor-parallel ones need a (fake) process
    # group and some a rank other than 0: tests/test_sharded.py and test_sharded_ranks.py
    assert {r.id for r in FAILURE_RULES if not r.id.startswith("tp-")} == set(CASES)
    assert {r.id for r in WARNING_RULES} == {
        "view-batch",
        "reused-module",
        "unused-module",
        "softmax-before-loss",
        "batchnorm-batch1",
    }


def test_clarify_shows_the_new_diagnosis() -> None:
    model, args, _, _ = _build("channels-last")
    with pytest.raises(RuntimeError) as caught, shapecheck.clarify():
        model(*args)
    note = "\n".join(getattr(caught.value, "__notes__", []))
    assert "channels-last" in note or "x.permute(0, 3, 1, 2)" in note


def test_cli_explain_shows_the_new_diagnosis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shapecheck._cli import main

    script = tmp_path / "grey.py"
    body = "def build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n"
    script.write_text("import torch.nn as nn\n" + body)
    assert main(["explain", f"{script}:build", "--input", "2,1,8,8"]) == 1
    out = capsys.readouterr().out
    assert "x = x.expand(-1, 3, -1, -1)" in out
    assert "verified" in out


def test_loss_function_fails_at_path_loss() -> None:
    report = shapecheck.explain(
        nn.Linear(4, 3), torch.randn(2, 4), loss_fn=F.cross_entropy, target=torch.tensor([[1], [2]])
    )
    assert report.failure is not None
    assert report.failure.path == "loss"
    assert report.diagnoses[0].rule == "loss-target"
    assert report.diagnoses[0].verified


def _warnings(model: nn.Module, *args: Any, **kw: Any) -> list[str]:
    report = shapecheck.explain(model, *args, **kw)
    assert report.ok
    return [w.rule for w in report.warnings]


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


class _Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.spare = nn.Linear(6, 2), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


class _ViewOk(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, 4)


def test_warning_reused_module_counts_parameters() -> None:
    report = shapecheck.explain(nn.Sequential(*(3 * [_Block()])), torch.randn(2, 6))
    (warning,) = [w for w in report.warnings if w.rule == "reused-module"]
    assert "42 unique; 126 if each place had its own copy" in warning.message
    assert report.total_params == 42  # the same count, from the report's own totals


def test_warnings_on_models_that_run() -> None:
    assert "unused-module" in _warnings(_Unused(), torch.randn(2, 6))
    assert "view-batch" in _warnings(_ViewOk(), torch.randn(2, 8))
    assert "batchnorm-batch1" in _warnings(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), torch.randn(1, 3, 8, 8)
    )
    soft = nn.Sequential(nn.Linear(6, 3), nn.Softmax(dim=1))
    rules = _warnings(
        soft, torch.randn(2, 6), loss_fn=nn.CrossEntropyLoss(), target=torch.tensor([0, 2])
    )
    assert "softmax-before-loss" in rules


def test_no_warnings_on_a_clean_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
    assert (
        _warnings(
            model.eval(),
            torch.randn(2, 3, 8, 8),
            loss_fn=nn.CrossEntropyLoss(),
            target=torch.tensor([0, 1]),
        )
        == []
    )


class _AttnAfterEmbedding(nn.Module):
    """Embeddings of 48 features into an attention built for 64: a plain embed_dim mismatch."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 48)
        self.attn = nn.MultiheadAttention(64, 8, batch_first=True)

    def forward(self, ids: torch.Tensor) -> Any:
        x = self.emb(ids)
        return self.attn(x, x, x)[0]


def test_an_embed_dim_mismatch_gets_a_verified_attention_of_the_right_size() -> None:
    model, ids = _AttnAfterEmbedding(), torch.zeros(2, 5, dtype=torch.long)
    report = shapecheck.explain(model, ids)
    first = report.diagnoses[0]
    assert (first.rule, first.path, first.verified) == ("attention-dim", "attn", True)
    assert first.fix == "nn.MultiheadAttention(48, 8, batch_first=True)"
    assert first.output_shapes_after_fix == [(2, 5, 48)]
    assert tuple(first.apply(model)(ids).shape) == (2, 5, 48)
    assert [d.fix for d in report.diagnoses[1:]] == ["nn.Linear(48, 64)"]  # still offered


def test_the_resized_attention_takes_the_most_heads_that_divide_the_features() -> None:
    model = nn.Sequential(nn.Linear(4, 30))
    attn = nn.MultiheadAttention(64, 8)

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.front, self.attn = model, attn

        def forward(self, x: torch.Tensor) -> Any:
            y = self.front(x)
            return self.attn(y, y, y)[0]

    first = shapecheck.explain(Wrapped(), torch.randn(5, 2, 4)).diagnoses[0]
    assert first.fix == "nn.MultiheadAttention(30, 6)"  # 8 and 7 do not divide 30
    assert first.verified
