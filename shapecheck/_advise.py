"""Warnings on models that run, and the Context every rule reads of a trace.

Kept apart from the repair stage so that a model that runs loads neither the failure rules nor
the fix interpreter (``explain``'s first call stays cheap).
"""

from __future__ import annotations

from torch import nn

from ._diagnose import Context, find
from ._records import Diagnosis
from ._trace import Trace

__all__ = ["context", "warn"]


def context(trace: Trace, model: nn.Module, loss: nn.Module | None = None) -> Context:
    """What the rules read of one trace of ``model``."""
    return Context(
        trace.layers, trace.failure, trace.inputs, trace.module_at, model, trace.dry_run,
        trace.weights_on, loss, trace.batch, trace.outputs, trace.weights_read,
        trace.output_batch, trace.walk,
    )  # fmt: skip


def warn(model: nn.Module, trace: Trace) -> list[Diagnosis]:
    """Warnings about a model that runs (each a rule id, a message and a suggested fix)."""
    from ._diagnose import WARNING_RULES

    found = find(context(trace, model), WARNING_RULES)
    if not found:
        return []
    from ._render import plan_text

    return [Diagnosis((f.step(),), plan_text((f.step(),))) for f in found]
