"""``view-batch``: a ``view``/``reshape`` with -1 that moved samples into or out of the batch."""

from __future__ import annotations

import math

from .._records import Evidence, Layer
from .._source import code_line
from .._text import shape, short
from ._context import Context, Finding
from ._registry import failure_rule
from ._words import caller, pytorch

__all__ = ["batch_changing_views", "view_batch"]

_RESHAPES = frozenset({"view", "reshape"})


def _is_batch_view(layer: Layer, batch: int) -> bool:
    if layer.kind != "function" or layer.type not in _RESHAPES or not layer.inputs:
        return False
    if not layer.arguments.startswith("-1") or layer.inputs[0].shape[:1] != (batch,):
        return False
    return layer.failed or layer.outputs[0].shape[:1] != (batch,)


def batch_changing_views(ctx: Context) -> list[Layer]:
    """Every recorded ``view(-1, ...)``/``reshape(-1, ...)`` that did not keep the batch size."""
    batch = ctx.batch
    if batch is None:
        return []
    return [layer for layer in ctx.layers if _is_batch_view(layer, batch)]


def _evidence(layer: Layer, batch: int) -> list[Evidence]:
    x = layer.inputs[0].shape
    found: list[Evidence] = [("got", f"{shape(x)}   batch {batch}")]
    if layer.outputs:
        made = layer.outputs[0].shape
        found.append(("made", f"{shape(made)}   batch {made[0]}"))
    line = code_line(layer.source)
    if line:
        found.append(("at", f"{short(layer.source)}   {line}"))
    return found


def _cause(layer: Layer, batch: int) -> str:
    x = layer.inputs[0].shape
    rows = layer.arguments.partition(",")[2].strip() or "?"
    return (
        f"-1 stands for whatever is left, not the batch: {batch} samples of "
        f"{'*'.join(map(str, x[1:]))} = {math.prod(x[1:])} values each, so rows of "
        f"{rows} regroup the samples"
    )


@failure_rule("view-batch")
def view_batch(ctx: Context) -> list[Finding]:
    """A failure (here or downstream) after a reshape that did not keep the batch size, while
    the batch is still lost where the forward failed (a (batch·seq) flatten that was undone
    before it is not the cause)."""
    batch = ctx.batch
    failed = ctx.failed_layer()
    if ctx.failure is None or batch is None:
        return []
    lost = failed is None or not failed.inputs or failed.inputs[0].shape[:1] != (batch,)
    # here, not at the top: the view-batch warning reads this module, and a model that runs
    # loads no fix records
    from .._changes import CallRewrite, RewriteCall

    findings = []
    for layer in batch_changing_views(ctx):
        if layer.source is None or not (layer.failed or lost):
            continue
        owner = ctx.layers[layer.parent or 0]
        head = (
            f"call '{layer.type}({layer.arguments})' in {caller(ctx, layer)} "
            f"{'cannot keep' if layer.failed else 'changed'} the batch dimension"
        )
        fix = RewriteCall(
            summary="flatten per sample instead of guessing the batch with -1",
            code=f"x = x.flatten(1)   # or x.view(x.size(0), -1), for {layer.summary}",
            source=layer.source,
            name=layer.type,
            rewrite=CallRewrite.FLATTEN_PER_SAMPLE,
        )
        evidence = (*_evidence(layer, batch), pytorch(ctx.failure))
        findings.append(Finding(owner.path, head, evidence, _cause(layer, batch), fix, score=0.9))
    return findings
