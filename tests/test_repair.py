"""Repair plans (``Diagnosis.plan``) through a module that is called more than once.

A fix that gets the model past the first call of a shared module, only for its second call to
fail, has made progress: the re-run's failure is a new one, so its own diagnosis (a second
step) is tried, and a plan whose last step runs is verified.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import shapecheck
from shapecheck._changes import Fix
from shapecheck._diagnose import FAILURE_RULES, Finding, find
from shapecheck._fixes import View
from shapecheck._records import Diagnosis
from shapecheck._repair import _same_failure, context, planned
from shapecheck._trace import run_trace


class _Siamese(nn.Module):
    """One encoder shared by both images (``encoder.0`` is called twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cosine_similarity(self.encoder(a), self.encoder(b))


class _SharedNorm(nn.Module):
    """One BatchNorm1d used at two places, the second after a Linear that widens to 16."""

    def __init__(self) -> None:
        super().__init__()
        self.bn, self.fc = nn.BatchNorm1d(8), nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bn(self.fc(self.bn(x)))
        return out


def _siamese_case() -> tuple[nn.Module, tuple[Any, ...]]:
    torch.manual_seed(0)
    a = torch.randn(2, 3, 8, 8, dtype=torch.float64)  # float64: the first call fails
    b = torch.randn(2, 8, 8, 3)  # channels-last: the second call fails once a is cast
    return _Siamese(), (a, b)


def _shared_norm_case() -> tuple[nn.Module, tuple[Any, ...]]:
    torch.manual_seed(0)
    return _SharedNorm(), (torch.randn(4, 8, dtype=torch.float64),)


def _first(model: nn.Module, args: tuple[Any, ...]) -> Diagnosis:
    report = shapecheck.explain(model, *args)
    assert report.failure is not None
    return report.diagnoses[0]


def test_shared_encoder_second_call_gets_its_own_step() -> None:
    model, args = _siamese_case()
    first = _first(model, args)
    assert (first.rule, first.path, first.verified) == ("dtype", "encoder.0", True)
    assert "fails at 'encoder.0' (Conv2d, its call 2)" in first.message, first.message
    own, step = first.plan
    assert own.outcome is not None
    assert not own.outcome.runs
    assert (step.rule, step.path) == ("channels-last", "encoder.0")
    assert first.output_shapes_after_fix == [(2,)]


def test_shared_batchnorm_plan_gives_the_second_place_its_own_layer() -> None:
    model, args = _shared_norm_case()
    first = _first(model, args)
    assert (first.rule, first.path, first.verified) == ("dtype", "bn", True), first.message
    _, step = first.plan
    assert (step.rule, step.path) == ("norm-features", "bn")
    assert "'bn' is one BatchNorm1d(8) used at 2 places: its call 2 gets 16 channels" in (
        first.message
    )
    assert first.output_shapes_after_fix == [(4, 16)]


def _real_plan(model: nn.Module, args: tuple[Any, ...], rules: list[str]) -> tuple[int, ...]:
    """Apply the first finding of each rule in turn, re-running for REAL after each step;
    returns the output shape of the last run (which must succeed)."""
    base = View(model, args, {})
    trace = run_trace(model, args, {}, dry_run=False)
    if not rules:
        assert trace.ok, trace.failure
        return tuple(trace.outputs[0].shape)
    finding = next(f for f in find(context(trace, base), FAILURE_RULES) if f.rule == rules[0])
    with planned(base, (finding.fix,)) as view:
        return _real_plan(view.model, view.args, rules[1:])


def test_both_plans_run_for_real() -> None:
    assert _real_plan(*_siamese_case(), ["dtype", "channels-last"]) == (2,)
    assert _real_plan(*_shared_norm_case(), ["dtype", "norm-features"]) == (4, 16)


def test_same_failure_compares_the_call_not_only_the_path() -> None:
    model, (x,) = _shared_norm_case()
    first_call = run_trace(model, (x,), {}, dry_run=False)  # float64: 'bn' fails in call 1
    second_call = run_trace(model, (x.float(),), {}, dry_run=False)  # 'bn' fails in call 2
    finding = Finding("bn", "", (), "", Fix("", ""), rule="dtype")
    assert first_call.failure is not None
    assert second_call.failure is not None
    assert first_call.failure.path == second_call.failure.path == "bn"
    assert _same_failure(first_call, first_call, finding)
    assert not _same_failure(second_call, first_call, finding)
