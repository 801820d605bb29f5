"""Turn findings into diagnoses: apply each fix to a view of the model and re-run it dry.

When the fixed model fails further on, the new failure is diagnosed too (a bounded number of
steps), so a report can hold a whole repair plan.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._apply import fingerprint
from ._diagnose import FAILURE_RULES, WARNING_RULES, Context, Finding, find
from ._dry import available
from ._fixes import Applied
from ._inputs import realise
from ._loss import loss_hooks
from ._records import Diagnosis
from ._text import shapes
from ._trace import FAKE_LIMITS, Trace, run_trace

__all__ = ["diagnose", "rerun", "warn"]

MAX_STEPS = 3
MAX_CANDIDATES = 4
_FAKE_LIMITS = (*FAKE_LIMITS, NotImplementedError)


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
        here = device if device is not None and available(device) else None  # not simulated
        # shape-only (meta) inputs of a dry run need data for a real one
        args, kwargs = (applied.args, applied.kwargs) if real else realise(
            (applied.args, applied.kwargs), here)  # fmt: skip
        trace = run_trace(applied.model, args, kwargs, dry_run=False,
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
    diagnoses = [_verify(finding, base, trace, device, steps, loss, real) for finding in findings]
    return sorted(diagnoses, key=lambda d: not (d.verified or _plan_verified(d)))


def warn(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], trace: Trace
) -> list[Diagnosis]:
    """Warnings about a model that runs (each a rule id, a message and a fix)."""
    ctx = Context(trace, model, args, kwargs)
    return [Diagnosis(f.rule, f.path, f.body + "\n" + _fix_text(f, None), f.fix.code,
                      change=f.fix)
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
    before: Trace,
    device: torch.device | None,
    steps: int,
    loss: nn.Module | None = None,
    real: bool = False,
) -> Diagnosis:
    with finding.fix.applied(base) as applied:
        after = rerun(applied, device, loss, real)
        same = _same_failure(after, before, finding)
        then: tuple[Diagnosis, ...] = ()
        if after.failure is not None and steps > 1 and not same:
            then = tuple(diagnose(applied, after, device, steps - 1, loss)[:1])
    outputs = after.outputs if after.ok else None
    return Diagnosis(
        rule=finding.rule, path=finding.path,
        message=finding.body + "\n" + _fix_text(finding, after, same),
        fix=finding.fix.code, verified=after.ok,
        output_shapes_after_fix=None if outputs is None else [t.shape for t in outputs],
        then=then, change=finding.fix, made_for=fingerprint(base.model),
    )  # fmt: skip


def _same_failure(after: Trace, before: Trace, finding: Finding) -> bool:
    """The fixed model fails in the same call of the finding's layer.

    A module called twice (one BatchNorm at two places, a shared encoder) that now fails on
    its other call has moved on: that is a new failure, with its own fix.
    """
    if after.failure is None or after.failure.path != finding.path:
        return False
    if before.failure is None or before.failure.path != finding.path:
        return True  # the finding names another layer than the one that raised: by path only
    return _call_number(after) == _call_number(before)


def _call_number(trace: Trace) -> int:
    """How many calls of the failing module came before the one that raised (0 for the first)."""
    failure = trace.failure
    if failure is None or failure.layer_index is None:
        return 0
    layer = trace.layers[failure.layer_index]
    if layer.kind == "function" and layer.parent is not None:
        layer = trace.layers[layer.parent]  # a functional op: the module call it ran in
    return sum(1 for earlier in trace.layers[: layer.index]
               if earlier.kind == "module" and earlier.path == failure.path)  # fmt: skip


def _fix_text(finding: Finding, after: Trace | None, same: bool = True) -> str:
    fix = finding.fix
    if after is None:
        status = "suggested"
    elif after.ok:
        status = f"verified: the model then runs, output {shapes([t.shape for t in after.outputs])}"
    elif after.failure is not None and not same:
        failed = after.failure
        nth = f", its call {_call_number(after) + 1}" if failed.path == finding.path else ""
        status = f"not enough alone: the model then fails at '{failed.path}' ({failed.type}{nth})"
    else:
        status = "not verified: a re-run with it still fails here"
    return f"fix ({status}): {fix.summary}\n    {fix.code}"
