"""Property tests against real forward passes on random stacks of Conv/Pool/Linear/Flatten.

The expected values come from the model itself, run for real under this file's own hooks
(tests/zoo.py ``capture``), never from shapecheck.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn
from zoo import capture, fixed, run_fixed, tensor_shapes, unique_params

import shapecheck
from shapecheck._changes import Build, Fix, InsertModule, edits_of

ACTIVATIONS = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU]


def _shape_after(layer: nn.Module, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """Where the stack would be after ``layer`` (None once it cannot run): used only to make
    plausible sizes likely, never as an expected value."""
    if shape is None:
        return None
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tuple(layer(torch.zeros(shape, device="meta")).shape)
    except Exception:
        return None


@st.composite
def stacks(draw: st.DrawFn) -> tuple[nn.Sequential, tuple[int, ...]]:
    """A random nn.Sequential and an input shape; some stacks run, some fail somewhere."""
    shape: tuple[int, ...] | None = (
        draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 12)),
        draw(st.integers(1, 12)),
    )  # fmt: skip
    input_shape = shape
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["conv", "pool", "linear", "flatten", "act"]))
        layer = draw(_layer(kind, shape))
        layers.append(layer)
        shape = _shape_after(layer, shape)
    return nn.Sequential(*layers), input_shape  # type: ignore[return-value]


def _layer(kind: str, shape: tuple[int, ...] | None) -> st.SearchStrategy[nn.Module]:
    channels = shape[1] if shape is not None and len(shape) == 4 else None
    if kind == "conv":
        cin = st.sampled_from([channels, channels, channels + 1]) if channels else st.integers(1, 4)
        return st.builds(
            nn.Conv2d, cin, st.integers(1, 5), kernel_size=st.integers(1, 4),
            stride=st.integers(1, 2), padding=st.integers(0, 2),
        )  # fmt: skip
    if kind == "pool":
        pool = st.sampled_from([nn.MaxPool2d, nn.AvgPool2d])
        return st.builds(lambda p, k, s: p(k, s), pool, st.integers(1, 3), st.integers(1, 3))
    if kind == "linear":
        options = [st.integers(1, 64)]
        if shape is not None and len(shape) >= 2:
            # right for a flattened input, right for the last dim, or the missing-Flatten case
            options += [st.just(math.prod(shape[1:])), st.just(shape[-1])] * 2
        return st.builds(nn.Linear, st.one_of(*options), st.integers(1, 8))
    if kind == "flatten":
        return st.just(nn.Flatten())
    return st.sampled_from(ACTIVATIONS).map(lambda cls: cls())


def _explain_both(model: nn.Module, x: torch.Tensor) -> list[shapecheck.Report]:
    return [shapecheck.explain(model, x, dry_run=dry) for dry in (False, True)]


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(stacks())
def test_recorded_shapes_are_the_real_ones(case: tuple[nn.Sequential, tuple[int, ...]]):
    model, shape = case
    x = torch.randn(shape)
    seen = capture(copy.deepcopy(model), x)
    for report in _explain_both(model, x):
        mode = "dry" if report.dry_run else "real"
        rows = [(r.path, r.output_shapes) for r in report.layers if r.kind == "module"]
        if seen.error is None:
            assert report.ok, (mode, report)
            assert rows == seen.calls, mode
            assert report.output_shapes == tensor_shapes(seen.output), mode
        else:
            assert report.failure is not None, mode
            assert report.failure.path == seen.failed, (mode, report.failure, seen.error)
            # every call that finished before the failure has its real shapes
            assert [r for r in rows if r[1]] == [c for c in seen.calls if c[1]], mode
            if not report.dry_run:  # the very exception PyTorch raised, quoted verbatim
                assert type(report.failure.exception) is type(seen.error)
                assert report.failure.message == str(seen.error).strip().splitlines()[0]
        assert report.total_params == unique_params(model), mode


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(stacks())
def test_verified_fixes_really_make_the_forward_succeed(
    case: tuple[nn.Sequential, tuple[int, ...]],
):
    model, shape = case
    x = torch.randn(shape)
    assume(capture(copy.deepcopy(model), x).error is not None)
    real, dry = _explain_both(model, x)
    assert real.failure is not None
    assert dry.failure is not None
    # the two modes agree on what is wrong and on what fixes it
    key = [(d.rule, d.path, d.verified, d.output_shapes_after_fix) for d in real.diagnoses]
    assert key == [(d.rule, d.path, d.verified, d.output_shapes_after_fix) for d in dry.diagnoses]
    for diagnosis in real.diagnoses:
        if not diagnosis.verified:
            continue
        with fixed(model, (x,), diagnosis) as applied:
            out = run_fixed(applied)  # raises if the "verified" fix does not really run
        assert tensor_shapes(out) == diagnosis.output_shapes_after_fix, diagnosis.rule
        if all(edits_of(s.change) == "model" for s in diagnosis.plan):  # kept in a copy too
            with torch.no_grad():
                kept = diagnosis.apply(model)(x)
            assert tensor_shapes(kept) == diagnosis.output_shapes_after_fix, diagnosis.rule
    assert capture(model, x).error is not None  # the user's model is still the broken one


def _missing_flatten_case() -> tuple[nn.Sequential, torch.Tensor]:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4 * 6 * 6, 5)), torch.randn(
        2, 3, 8, 8
    )


def test_fix_helpers_can_fail():
    """fixed()/run_fixed() are not rubber stamps: a made-up fix that does not help raises."""
    model, x = _missing_flatten_case()
    report = shapecheck.explain(model, x)
    first = report.diagnoses[0]
    assert first.rule == "missing-flatten"
    assert first.verified
    with fixed(model, (x,), first) as applied:
        assert tensor_shapes(run_fixed(applied)) == [(2, 5)]
    nothing = Fix(summary="change nothing", code="pass")
    identity = InsertModule(summary="insert an identity", code="nn.Identity()", sequential="",
                            index=2, build=Build("Identity"))  # fmt: skip
    for change in (nothing, identity):
        bogus = shapecheck.Diagnosis((replace(first.plan[0], change=change),))
        with pytest.raises(RuntimeError, match="cannot be multiplied"), \
                fixed(model, (x,), bogus) as applied:  # fmt: skip
            run_fixed(applied)


def test_strategy_makes_both_kinds_of_stack():
    """The stacks strategy reaches running and failing models (otherwise the properties above
    could hold vacuously)."""
    outcomes: set[bool] = set()
    rules: set[str] = set()

    @settings(max_examples=60, derandomize=True, database=None)
    @given(stacks())
    def probe(case: tuple[nn.Sequential, tuple[int, ...]]) -> None:
        model, shape = case
        error = capture(model, torch.randn(shape)).error
        outcomes.add(error is None)
        if error is not None and isinstance(model[-1], nn.Linear):
            report = shapecheck.explain(model, torch.randn(shape), dry_run=True)
            rules.update(d.rule for d in report.diagnoses if d.verified)

    probe()
    assert outcomes == {True, False}
    assert rules, "no verified diagnosis was ever produced"
