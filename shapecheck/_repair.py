"""The repair stage: try the rules' fixes by re-running the model, and build the diagnoses.

One bounded search per ``explain``: the fixes of a failure are tried in score order; when one
makes the model fail further on instead, the new failure's fixes are tried after it (a repair
plan), at most :data:`MAX_STEPS` deep and :data:`RERUN_BUDGET` re-runs in all. A plan is
verified only by a run that went to the end: a real run wherever one is possible and affordable
(the user's own forward was real, or a dry run whose model fits :data:`REAL_RUN_BYTES`), else a
dry run on fake tensors, said so. :func:`rank` is the one ranking of the plans found.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ._advise import context
from ._apply import fingerprint
from ._changes import Fix, FixKind
from ._diagnose import FAILURE_RULES, Finding, find
from ._fixes import View, applied
from ._inputs import realise, tensors_in
from ._loss import loss_hooks
from ._records import Diagnosis, Outcome, Step
from ._render import plan_text
from ._trace import REAL_RUN_BYTES, Trace, activation_bytes, real_possible, run_trace

__all__ = [
    "MAX_CANDIDATES",
    "MAX_STEPS",
    "RERUN_BUDGET",
    "Repair",
    "diagnose",
    "planned",
    "rank",
]

MAX_STEPS = 3  # steps in one repair plan
MAX_CANDIDATES = 4  # fixes tried for one failure
RERUN_BUDGET = 12  # re-runs of the model per explain, every candidate and step together

#: Layers whose kernels reject an input of another floating dtype than their weights (fake
#: tensors do not check it for F.linear): a dry run's "it runs" is checked against this.
_SAME_DTYPE = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.RNNBase, nn.MultiheadAttention)


Plan = tuple[Step, ...]
By = Literal["real run", "dry run"]


@dataclass
class Repair:
    """One explain's repair search: the user's model and inputs, and the re-runs made."""

    base: View
    device: torch.device | None
    loss: nn.Module | None = None
    runs: int = 0

    @property
    def spent(self) -> bool:
        return self.runs >= RERUN_BUDGET


def diagnose(repair: Repair, trace: Trace) -> list[Diagnosis]:
    """One diagnosis per candidate fix of ``trace``'s failure, each with its best plan, best
    first (see :func:`rank`); fixes the search did not need to try are suggestions."""
    real = not trace.dry_run
    findings = find(context(trace, repair.base.model, repair.loss), FAILURE_RULES)[:MAX_CANDIDATES]
    plans = _search(repair, trace, findings, real)
    if not real:
        plans = _confirm(repair, trace, plans)
    best: dict[int, Plan] = {index: (finding.step(),) for index, finding in enumerate(findings)}
    for plan in reversed(rank([plan for _, plan in plans])):  # the best plan of each fix wins
        best[next(i for i, p in plans if p is plan)] = plan
    made_for = fingerprint(repair.base.model)
    ranked = [_with_sizes(repair, trace, plan) for plan in rank(list(best.values()))]
    return [Diagnosis(plan, plan_text(plan), made_for) for plan in ranked]


#: Rules about an input of the wrong size, whose message gains the sizes the model accepts
#: (input-too-small works out its own minimum; view-batch is about the batch, not the size).
_SIZE_RULES = frozenset({"linear-in-features", "view-size", "input-size"})
#: A contract run (a symbolic trace, ~0.1 s for a small CNN) is made for models up to this size.
_CONTRACT_PARAMS = 5_000_000


def _with_sizes(repair: Repair, trace: Trace, plan: Plan) -> Plan:
    """The plan, its first step told which input sizes the model accepts when that is cheap to
    find (a small model, one image-like input): "this model accepts H, W with ... e.g. 32x32"."""
    first = plan[0]
    model = repair.base.model
    if first.rule not in _SIZE_RULES or len(trace.layers) > 300:
        return plan
    if sum(p.numel() for p in model.parameters()) > _CONTRACT_PARAMS:
        return plan
    from ._contract import accepted_sizes_hint

    try:
        hint = accepted_sizes_hint(model, repair.base.args)
    except Exception as error:  # a hint is extra: the diagnosis is whole without it
        warnings.warn(f"shapecheck could not work out the sizes this model accepts: {error!r}",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
        return plan
    if hint is None or re.search(r"\bB\b", hint):  # a rule that ties the size to the batch reads
        return plan  # as a riddle ("16*B*... == 400*B"): better none
    return (replace(first, arithmetic=(*first.arithmetic, f"  {hint}")), *plan[1:])


def rank(plans: list[tuple[Step, ...]]) -> list[tuple[Step, ...]]:
    """Best first: the model runs > verified by a real run > keeps one output row per input
    sample > fewer steps > a smaller change to the model (an edit of a tensor or a module
    without weights before new weights, before converting the whole model). Stable otherwise,
    so the rules' scores break ties."""

    def key(plan: tuple[Step, ...]) -> tuple[int, int, int, int, int]:
        last = plan[-1].outcome
        runs = last is not None and last.runs
        real = runs and last is not None and last.by == "real run"
        keeps = runs and last is not None and last.keeps_batch is not False
        return (not runs, not real, not keeps, len(plan), sum(_size(s.change) for s in plan))

    return sorted(plans, key=key)


def _size(fix: Fix) -> int:
    """How much a fix changes the model: 0 for an edit of a tensor, 2 for new weights."""
    weights = {
        FixKind.REPLACE_MODULE: 2,
        FixKind.ROUTE_BY_RANK: 2,
        FixKind.CONVERT_MODEL: 3,
        FixKind.REGISTER_MODULES: 1,
        FixKind.INSERT_MODULE: 1,
        FixKind.PARALLELIZE: 1,  # another sharding plan for a layer: its weights stay
    }
    return weights.get(fix.kind, 0)


Found = list[tuple[int, Plan]]  # plans found, each with the index of its first fix


def _search(repair: Repair, trace: Trace, findings: list[Finding], real: bool) -> Found:
    """Plans by depth: the candidates of the first failure in score order, then the next steps
    of those that made progress, until a plan runs and keeps the batch or the budget is spent."""
    plans: Found = []
    frontier: list[tuple[int, Plan, Trace, list[Finding]]] = [
        (index, (), trace, [finding]) for index, finding in enumerate(findings)
    ]
    for _ in range(MAX_STEPS):
        grown: list[tuple[int, Plan, Trace, list[Finding]]] = []
        for index, steps, before, candidates in frontier:
            for finding in candidates[:MAX_CANDIDATES]:
                tried = _try(repair, steps, before, finding, real)
                if tried is None:
                    continue  # a suggestion, a fix already in the plan, or no budget left
                plan, after, following = tried
                plans.append((index, plan))
                if following:
                    grown.append((index, plan, after, following))
                if _done(plan):
                    break
            if any(_done(plan) for _, plan in plans):
                return plans
        frontier = grown
    return plans


def _done(plan: tuple[Step, ...]) -> bool:
    last = plan[-1].outcome
    return last is not None and last.runs and last.keeps_batch is not False


def _try(
    repair: Repair, steps: tuple[Step, ...], before: Trace, finding: Finding, real: bool
) -> tuple[Plan, Trace, list[Finding]] | None:
    """Re-run with the plan's fixes and this one: the plan, the trace, and the fixes of the
    next failure when it made progress (fails further on)."""
    fixes = (*[s.change for s in steps], finding.fix)
    if finding.fix.kind is FixKind.SUGGESTION or finding.fix in fixes[:-1] or repair.spent:
        return None
    with planned(repair.base, fixes) as view:
        after = _rerun(repair, view, real)
        outcome = _outcome(after, before, finding, view)
        following = (
            []
            if after.failure is None or outcome.same or outcome.message.startswith(_CLASH)
            else find(context(after, view.model, repair.loss), FAILURE_RULES)
        )
    step = replace(finding.step(), outcome=outcome)
    return (*steps, step), after, following


@contextmanager
def planned(base: View, fixes: tuple[Fix, ...]) -> Iterator[View]:
    """``base`` with every fix made in turn, undone when the block ends."""
    with ExitStack() as stack:
        view = base
        for fix in fixes:
            view = stack.enter_context(applied(fix, view))
        yield view


def _rerun(repair: Repair, view: View, real: bool) -> Trace:
    """One re-run of the fixed view (with the loss, if any), real or dry."""
    repair.runs += 1
    args, kwargs = (view.args, view.kwargs)
    if real:  # shape-only (meta) inputs of a dry run need data for a real one
        here = (
            repair.device
            if repair.device is not None and real_possible(view.model, repair.device)
            else None
        )
        args, kwargs = realise((args, kwargs), here)
    return run_trace(
        view.model,
        args,
        kwargs,
        dry_run=not real,
        device=repair.device,
        rewrites=view.rewrites,
        **loss_hooks(repair.loss, view.target),
    )


def _samples(view: View) -> int | None:
    """The samples fed to the model: the leading dim of its first tensor input."""
    first = next(iter(tensors_in((view.args, view.kwargs))), None)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else None


def _outcome(after: Trace, before: Trace, finding: Finding, view: View) -> Outcome:
    by: By = "dry run" if after.dry_run else "real run"
    if after.failure is None:
        clash = None if by == "real run" else _dtype_clash(after)
        if clash is not None:
            return Outcome(False, by, failed_path=clash[0], failed_type=clash[1], message=clash[2])
        return _ran(after, view, by)
    failed = after.failure
    return Outcome(
        False,
        by,
        failed_path=failed.path,
        failed_type=failed.type,
        failed_call=_call_number(after),
        failed_inputs=tuple(failed.input_shapes),
        same=_same_failure(after, before, finding),
        message=failed.message,
    )


def _ran(after: Trace, view: View, by: By) -> Outcome:
    outputs = tuple(t.shape for t in after.outputs)
    samples = _samples(view)
    keeps = None if samples is None or not outputs or not outputs[0] else outputs[0][0] == samples
    return Outcome(True, by, outputs, samples, keeps)


_CLASH = "real kernels reject"


def _dtype_clash(trace: Trace) -> tuple[str, str, str] | None:
    """(path, type, why) of a layer whose real kernel would reject its input's dtype, which
    fake tensors let by (F.linear of float64 input and float32 weights, say)."""
    for layer in trace.layers:
        module = trace.module_at.get(layer.index)
        if not isinstance(module, _SAME_DTYPE) or not layer.inputs:
            continue
        weight = next((p for p in module.parameters(recurse=False) if p.is_floating_point()), None)
        given = layer.inputs[0].dtype
        want = str(weight.dtype).removeprefix("torch.") if weight is not None else given
        if given.startswith(("float", "bfloat")) and want != given:
            return layer.path, layer.type, f"{_CLASH} {given} input for {want} weights"
    return None


def _confirm(repair: Repair, trace: Trace, plans: Found) -> Found:
    """Dry-verified plans, best first, re-run for real until one holds, when affordable: on
    the whole batch, or on its first sample when only that fits :data:`REAL_RUN_BYTES`."""
    samples = _real_samples(repair, trace)
    if samples is None:
        return plans
    confirmed = list(plans)
    for plan in rank([plan for _, plan in plans]):
        last = plan[-1].outcome
        if last is None or not last.runs or repair.spent:
            break
        outcome = _real_outcome(repair, plan, last, samples)
        at = next(i for i, (_, p) in enumerate(confirmed) if p is plan)
        confirmed[at] = (confirmed[at][0], (*plan[:-1], replace(plan[-1], outcome=outcome)))
        if outcome.runs:
            break
    return confirmed


def _real_samples(repair: Repair, trace: Trace) -> int | None:
    """How many samples a real check can afford: all of them (0), one (1), or none (None)."""
    if not real_possible(repair.base.model, repair.device):
        return None
    size = activation_bytes(trace)
    if size <= REAL_RUN_BYTES:
        return 0
    batch = _samples(repair.base)
    return 1 if batch is not None and batch > 1 and size // batch <= REAL_RUN_BYTES else None


def _first_sample(view: View, batch: int) -> View:
    """``view`` on the first sample: every tensor input whose leading dim is the batch."""

    def first(value: Any) -> Any:
        return value[:1] if isinstance(value, torch.Tensor) and value.dim() and \
            value.shape[0] == batch else value  # fmt: skip

    args, kwargs = tree_map(first, (view.args, view.kwargs))
    return replace(view, args=args, kwargs=kwargs)


def _real_outcome(repair: Repair, plan: Plan, dry: Outcome, samples: int) -> Outcome:
    """The plan re-run for real (on ``samples`` of the batch, 0 for all of it)."""
    with planned(repair.base, tuple(s.change for s in plan)) as view:
        batch = _samples(view)
        one = samples == 1 and batch is not None
        real = _rerun(repair, _first_sample(view, batch) if one and batch else view, real=True)
        if real.ok and one:  # the shapes of the whole batch are the dry run's
            return replace(dry, by="real run", real_samples=1)
        if real.ok:
            return _ran(real, view, "real run")
    failed = real.failure
    assert failed is not None
    return Outcome(False, "real run", failed_path=failed.path, failed_type=failed.type,
                   failed_inputs=tuple(failed.input_shapes), message=failed.message)  # fmt: skip


def _same_failure(after: Trace, before: Trace, finding: Finding) -> bool:
    """The fixed model fails in the same call of the finding's layer, on the same input.

    A module called twice (one BatchNorm at two places, a shared encoder) that now fails on
    its other call has moved on; so has a layer that now gets another input (the batch dim
    added, but the flatten still missing): each is a new failure, with its own fix.
    """
    if after.failure is None or after.failure.path != finding.path:
        return False
    if before.failure is None or before.failure.path != finding.path:
        return True  # the finding names another layer than the one that raised: by path only
    same_input = after.failure.input_shapes == before.failure.input_shapes
    return same_input and _call_number(after) == _call_number(before)


def _call_number(trace: Trace) -> int:
    """How many calls of the failing module came before the one that raised (0 for the first)."""
    failure = trace.failure
    if failure is None or failure.layer_index is None:
        return 0
    layer = trace.layers[failure.layer_index]
    if layer.kind == "function" and layer.parent is not None:
        layer = trace.layers[layer.parent]  # a functional op: the module call it ran in
    return sum(
        1
        for earlier in trace.layers[: layer.index]
        if earlier.kind == "module" and earlier.path == failure.path
    )
