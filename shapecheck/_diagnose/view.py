"""``view-batch``: a ``view``/``reshape`` with -1 that moved samples into or out of the batch."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._fixes import RewriteCall
from .._records import Layer
from .._source import code_line, short
from .._text import shape
from ._context import Context, Finding
from ._words import pytorch_line

__all__ = ["batch_changing_views", "view_batch"]

_RESHAPES = frozenset({"view", "reshape"})


def _batch(ctx: Context) -> int | None:
    inputs = ctx.trace.inputs
    return inputs[0].shape[0] if inputs and inputs[0].shape else None


def _flatten_per_sample(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return torch.flatten(args[0], 1)


def _is_batch_view(layer: Layer, batch: int) -> bool:
    if layer.kind != "function" or layer.type not in _RESHAPES or not layer.inputs:
        return False
    if not layer.arguments.startswith("-1") or layer.inputs[0].shape[:1] != (batch,):
        return False
    return layer.failed or layer.outputs[0].shape[:1] != (batch,)


def batch_changing_views(ctx: Context) -> list[Layer]:
    """Every recorded ``view(-1, ...)``/``reshape(-1, ...)`` that did not keep the batch size."""
    batch = _batch(ctx)
    if batch is None:
        return []
    return [layer for layer in ctx.layers if _is_batch_view(layer, batch)]


def _body(ctx: Context, layer: Layer, batch: int) -> list[str]:
    x = layer.inputs[0].shape
    call = f"{layer.type}({layer.arguments})"
    owner = ctx.layers[layer.parent].path if layer.parent is not None else ""
    line = code_line(layer.source)
    lines = [f"call '{call}' in '{owner}' ({ctx.layers[layer.parent or 0].type}) "
             f"{'cannot keep' if layer.failed else 'changed'} the batch dimension",
             f"  got       {shape(x)}   batch {batch}"]  # fmt: skip
    if layer.outputs:
        lines.append(
            f"  made      {shape(layer.outputs[0].shape)}   batch {layer.outputs[0].shape[0]}"
        )
    if line:
        lines.append(f"  at        {short(layer.source)}   {line}")
    per_sample = math.prod(x[1:])
    lines.append(
        f"cause: -1 stands for whatever is left, not the batch: {batch} samples of "
        f"{'*'.join(map(str, x[1:]))} = {per_sample} values each, so rows of "
        f"{layer.arguments.partition(',')[2].strip() or '?'} regroup the samples"
    )
    return lines


def view_batch(ctx: Context) -> list[Finding]:
    """A failure (here or downstream) after a reshape that did not keep the batch size."""
    batch = _batch(ctx)
    if ctx.failure is None or batch is None:
        return []
    findings = []
    for layer in batch_changing_views(ctx):
        if layer.source is None:
            continue
        body = _body(ctx, layer, batch)
        body.insert(len(body) - 1, pytorch_line(ctx.failure))
        fix = RewriteCall(
            summary="flatten per sample instead of guessing the batch with -1",
            code=f"x = x.flatten(1)   # or x.view(x.size(0), -1), for {layer.summary}",
            source=layer.source, name=layer.type, replacement=_flatten_per_sample,
        )  # fmt: skip
        findings.append(Finding("view-batch", ctx.layers[layer.parent or 0].path, "\n".join(body),
                                fix, 0.9))  # fmt: skip
    return findings
