"""Repair plans (``Diagnosis.plan``) through a module that is called more than once.

A fix that gets the model past the first call of a shared module, only for its second call to
fail, has made progress: the re-run's failure is a new one, so its own diagnosis (a second
step) is tried, and a plan whose last step runs is verified.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import shapecheck
from shapecheck._advise import context
from shapecheck._changes import Fix
from shapecheck._diagnose import FAILURE_RULES, Finding, find
from shapecheck._fixes import View
from shapecheck._records import Diagnosis
from shapecheck._repair import _same_failure, planned
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
    finding = next(f for f in find(context(trace, base.model), FAILURE_RULES) if f.rule == rules[0])
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


# -- "verified" means it works, and "runs" is not "right" ----------------------------------------


def test_an_unbatched_image_into_the_seed_gets_the_batch_dim_then_the_flatten() -> None:
    from shapecheck.demo import seed_model

    report = shapecheck.explain(seed_model(), torch.randn(3, 32, 32))
    first = report.diagnoses[0]
    assert first.rule == "missing-batch-dim"
    assert [s.rule for s in first.plan] == ["missing-batch-dim", "missing-flatten"]
    assert (first.verified, first.verified_by, first.keeps_batch) == (True, "real run", True)
    assert first.output_shapes_after_fix == [(1, 2)]
    grid = next(d for d in report.diagnoses if d.rule == "linear-in-features")
    assert grid.fix.startswith("nn.Linear(8, 32)")
    assert grid.keeps_batch is False  # it runs, to an (8, 8, 2) grid for one image
    assert grid.output_shapes_after_fix == [(8, 8, 2)]
    assert "does not start with the input's batch of 3" in grid.message
    assert "verified" not in grid.message.splitlines()[-2]


class _BasicBlock(nn.Module):
    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        out = channels * stride
        self.conv1 = nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.down = (
            nn.Sequential(nn.Conv2d(channels, out, 1, stride=stride, bias=False),
                          nn.BatchNorm2d(out))
            if stride > 1 else nn.Identity()
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.down(x))


class _ResNet(nn.Module):
    """A small ResNet: stem conv + BatchNorm, two stages of basic blocks, pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(_BasicBlock(16), _BasicBlock(16))
        self.layer2 = nn.Sequential(_BasicBlock(16, 2), _BasicBlock(32))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.pool(out), 1))


def test_an_unbatched_image_into_a_resnet_gets_the_batch_dim_in_one_verified_step() -> None:
    model = _ResNet()
    report = shapecheck.explain(model, torch.randn(3, 32, 32))
    assert report.failure is not None
    assert report.failure.path == "bn1"
    first = report.diagnoses[0]
    assert (first.rule, len(first.plan), first.verified, first.keeps_batch) == (
        "missing-batch-dim", 1, True, True,
    )  # fmt: skip
    assert first.output_shapes_after_fix == [(1, 10)]
    assert report.reruns <= 3


def test_apply_on_another_instance_keeps_that_instances_weights() -> None:
    from shapecheck.demo import seed_model

    a, b = seed_model(), seed_model()
    assert not torch.equal(a[0].weight, b[0].weight)
    first = shapecheck.explain(a, torch.randn(2, 3, 32, 32)).diagnoses[0]
    fixed = first.apply(b)
    assert torch.equal(fixed[0].weight, b[0].weight)
    assert torch.equal(fixed[7].weight, b[6].weight)  # the Linear, after the inserted Flatten
    assert not torch.equal(fixed[0].weight, a[0].weight)


def test_new_layers_take_the_dtype_of_the_model_and_apply_keeps_the_rng() -> None:
    for dtype in (torch.float64, torch.bfloat16):
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(4, 2)).to(dtype)
        x = torch.randn(3, 6, dtype=dtype)
        first = shapecheck.explain(model, x).diagnoses[0]
        assert (first.rule, first.verified_by) == ("linear-in-features", "real run")
        state = torch.get_rng_state()
        fixed = first.apply(model)
        assert torch.equal(torch.get_rng_state(), state)  # building Linear(5, 2) drew nothing
        assert fixed[2].weight.dtype == dtype
        assert fixed(x).dtype == dtype


def test_apply_names_what_to_pass() -> None:
    from shapecheck.demo import seed_model

    first = shapecheck.explain(seed_model(), torch.randn(2, 3, 32, 32)).diagnoses[0]
    with pytest.raises(shapecheck.UsageError, match="got NoneType"):
        first.apply(None)  # type: ignore[arg-type]
    with pytest.raises(shapecheck.UsageError, match="pass an instance"):
        first.apply(nn.Sequential)  # type: ignore[arg-type]
    with pytest.raises(shapecheck.UsageError, match="takes a Diagnosis"):
        shapecheck.apply_fix("missing-flatten", seed_model())  # type: ignore[arg-type]


def test_a_rule_that_raises_is_skipped_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from shapecheck._diagnose import _registry
    from shapecheck.demo import seed_model

    def broken(ctx: object) -> list[Finding]:
        raise KeyError("a bug in a rule")

    rules = [_registry.Rule("broken-rule", broken), *_registry.FAILURE_RULES]
    monkeypatch.setattr(_registry, "FAILURE_RULES", rules)
    monkeypatch.setattr("shapecheck._repair.FAILURE_RULES", rules)
    with pytest.warns(RuntimeWarning, match="rule 'broken-rule' failed and was skipped"):
        report = shapecheck.explain(seed_model(), torch.randn(1, 3, 32, 32))
    assert isinstance(report, shapecheck.Report)
    assert [d.rule for d in report.diagnoses] == ["missing-flatten"]  # the others still ran
    assert report.diagnoses[0].verified


class _Gated(nn.Module):
    """Reads a value (``.item()``): fake tensors cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 2.0 if x.sum().item() > 0 else 1.0
        return self.fc(x) * scale


def test_a_dry_run_with_flops_and_memory_goes_on_for_real_where_fake_tensors_cannot() -> None:
    report = shapecheck.explain(_Gated(), input_size=(2, 4), dry_run=True, flops=True,
                                optimizer="adam")  # fmt: skip
    assert report.ok, report
    assert report.total_flops == 2 * 2 * 4 * 4  # the Linear's matmul
    assert report.training_memory is not None
    assert report.training_memory.params == 20 * 4
    assert report.fallback is not None
    assert "DataDependentOutputException" in report.fallback
    assert "fake tensors could not run it" in str(report)


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch._grouped_mm is newer")
def test_a_dry_run_never_reports_a_working_model_as_failed() -> None:
    """A Mixtral-style expert matmul: the fake kernel of torch._grouped_mm wants bfloat16,
    the real CPU kernel runs float32."""

    class Experts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 8, 16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            offsets = torch.tensor([2, 4, 6, 8], dtype=torch.int32)
            out: torch.Tensor = torch._grouped_mm(x, self.w, offs=offsets)
            return out

    report = shapecheck.explain(Experts(), torch.randn(8, 8), dry_run=True)
    assert report.ok, report
    assert report.output_shapes == [(8, 16)]
    assert report.fallback is not None


def test_reruns_stay_within_the_budget() -> None:
    from shapecheck._repair import RERUN_BUDGET

    model, args = _siamese_case()
    report = shapecheck.explain(model, *args)
    assert 1 <= report.reruns <= RERUN_BUDGET
    assert report.to_dict()["reruns"] == report.reruns


def test_a_batch_too_large_to_run_whole_is_checked_for_real_on_one_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shapecheck import _repair, _trace
    from shapecheck.demo import seed_model

    dry = _trace.run_trace(seed_model(), (torch.randn(16, 3, 32, 32),), {}, dry_run=True)
    budget = _trace.activation_bytes(dry) // 4  # 16 samples do not fit; one does
    monkeypatch.setattr(_trace, "REAL_RUN_BYTES", budget)
    monkeypatch.setattr(_repair, "REAL_RUN_BYTES", budget)
    report = shapecheck.explain(seed_model(), input_size=(16, 3, 32, 32), dry_run=True)
    assert report.unconfirmed  # the user's own forward was too large to confirm
    first = report.diagnoses[0]
    assert first.verified_by == "real run"
    assert first.plan[-1].outcome is not None
    assert first.plan[-1].outcome.real_samples == 1
    assert first.output_shapes_after_fix == [(16, 2)]
    assert "verified by a real run of 1 sample" in first.message
    monkeypatch.setattr(_trace, "REAL_RUN_BYTES", 0)
    monkeypatch.setattr(_repair, "REAL_RUN_BYTES", 0)
    shapes_only = shapecheck.explain(seed_model(), input_size=(16, 3, 32, 32), dry_run=True)
    assert shapes_only.diagnoses[0].verified_by == "dry run"
    assert "verified by a dry run, shapes only" in shapes_only.diagnoses[0].message
