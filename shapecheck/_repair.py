"""Turn findings into diagnoses: apply each fix to a view of the model and re-run it dry.

When the fixed model fails further on, the new failure is diagnosed too (a bounded number of
steps), so a report can hold a whole repair plan.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    UnsupportedOperatorException,
)

from ._diagnose import FAILURE_RULES, WARNING_RULES, Context, Finding, find
from ._fixes import Applied
from ._loss import loss_hooks
from ._records import Diagnosis
from ._text import shapes
from ._trace import Trace, run_trace

__all__ = ["diagnose", "rerun", "warn"]

MAX_STEPS = 3
MAX_CANDIDATES = 4
_FAKE_LIMITS = (
    DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException,
    NotImplementedError,
)  # fmt: skip


def rerun(
    applied: Applied, device: torch.device | None, loss: nn.Module | None = None, real: bool = False
) -> Trace:
    """Dry re-run (with the loss, if any); a real one where fake tensors cannot run an op
    (data-dependent shapes) or cannot see the failure (index values), as ``real`` says."""
    hooks = loss_hooks(loss, applied.target)
    trace = None if real else run_trace(
        applied.model, applied.args, applied.kwargs, dry_run=True, device=device,
        rewrites=applied.rewrites, **hooks)  # fmt: skip
    if trace is None or (trace.failure is not None
                         and isinstance(trace.failure.exception, _FAKE_LIMITS)):  # fmt: skip
        trace = run_trace(applied.model, applied.args, applied.kwargs, dry_run=False,
                          rewrites=applied.rewrites, **hooks)  # fmt: skip
    return trace


def diagnose(
    base: Applied,
    trace: Trace,
    device: torch.device | None,
    steps: int = MAX_STEPS,
    loss: nn.Module | None = None,
) -> list[Diagnosis]:
    """Diagnoses of ``trace``'s failure, verified ones first."""
    ctx = Context(trace, base.model, base.args, base.kwargs, loss=loss, target=base.target)
    findings = find(ctx, FAILURE_RULES)[:MAX_CANDIDATES]
    real = bool(findings) and _data_dependent(base, trace, device, loss)
    diagnoses = [_verify(finding, base, device, steps, loss, real) for finding in findings]
    return sorted(diagnoses, key=lambda d: not (d.verified or _plan_verified(d)))


def warn(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], trace: Trace
) -> list[Diagnosis]:
    """Warnings about a model that runs (each a rule id, a message and a fix)."""
    ctx = Context(trace, model, args, kwargs)
    return [Diagnosis(f.rule, f.path, f.body + "\n" + _fix_text(f, None), f.fix.code)
            for f in find(ctx, WARNING_RULES)]  # fmt: skip


def _plan_verified(diagnosis: Diagnosis) -> bool:
    return bool(diagnosis.then) and (
        diagnosis.then[0].verified or _plan_verified(diagnosis.then[0])
    )


def _data_dependent(
    base: Applied, trace: Trace, device: torch.device | None, loss: nn.Module | None
) -> bool:
    """A real failure that fake tensors do not reproduce (an index out of range, say): fixes
    for it can only be verified by real re-runs."""
    return not trace.dry_run and rerun(base, device, loss).ok


def _verify(
    finding: Finding,
    base: Applied,
    device: torch.device | None,
    steps: int,
    loss: nn.Module | None = None,
    real: bool = False,
) -> Diagnosis:
    with finding.fix.applied(base) as applied:
        after = rerun(applied, device, loss, real)
        then: tuple[Diagnosis, ...] = ()
        if after.failure is not None and steps > 1 and not _same_failure(after, finding):
            then = tuple(diagnose(applied, after, device, steps - 1, loss)[:1])
    outputs = after.outputs if after.ok else None
    return Diagnosis(
        rule=finding.rule, path=finding.path,
        message=finding.body + "\n" + _fix_text(finding, after),
        fix=finding.fix.code, verified=after.ok,
        output_shapes_after_fix=None if outputs is None else [t.shape for t in outputs],
        then=then,
    )  # fmt: skip


def _same_failure(after: Trace, finding: Finding) -> bool:
    return after.failure is not None and after.failure.path == finding.path


def _fix_text(finding: Finding, after: Trace | None) -> str:
    fix = finding.fix
    if after is None:
        status = "suggested"
    elif after.ok:
        status = f"verified: the model then runs, output {shapes([t.shape for t in after.outputs])}"
    elif after.failure is not None and after.failure.path != finding.path:
        failed = after.failure
        status = f"not enough alone: the model then fails at '{failed.path}' ({failed.type})"
    else:
        status = "not verified: a re-run with it still fails here"
    return f"fix ({status}): {fix.summary}\n    {fix.code}"
