"""``dim-out-of-range``: a call asks for a dim the tensor does not have (most often because a
sample came without its batch dim)."""

from __future__ import annotations

import re

from .._changes import EditInput, Fix, TensorOp
from .._records import TensorInfo
from .._text import shape
from ._context import Context, Finding
from ._registry import failure_rule
from ._words import caller, pytorch

__all__ = ["dim_out_of_range"]

_RANGE = re.compile(
    r"Dimension out of range \(expected to be in range of \[(-?\d+), (-?\d+)\], "
    r"but got (-?\d+)\)"
)


def _model_input_behind(ctx: Context, info: TensorInfo) -> TensorInfo | None:
    """The model input this tensor came from through calls that kept its rank, if any."""
    current: TensorInfo | None = info
    for _ in range(256):
        if current is None:
            return None
        if current.model_input is not None:
            return current
        row = ctx.producer(current)
        if row is None or not row.inputs or len(row.inputs[0].shape) != len(current.shape):
            return None
        current = row.inputs[0]
    return None


@failure_rule("dim-out-of-range")
def dim_out_of_range(ctx: Context) -> list[Finding]:
    """``IndexError: Dimension out of range``: name the dim asked for and the rank there was;
    when the tensor is a model input short of one dim, add the batch dim where it enters."""
    layer, failure = ctx.failed_layer(), ctx.failure
    found = _RANGE.search(failure.message) if failure is not None else None
    if layer is None or failure is None or found is None or not layer.inputs:
        return []
    asked, x = int(found.group(3)), layer.inputs[0].shape
    rank = int(found.group(2)) + 1
    call = (
        f"'{layer.summary}' in {caller(ctx, layer)}"
        if layer.kind == "function"
        else f"layer '{layer.path}' ({layer.summary})"
    )
    evidence = (
        ("got", f"{shape(x)}   {rank}-D: dims {-rank} .. {rank - 1}"),
        ("asked", f"dim {asked}   needs at least {asked + 1 if asked >= 0 else -asked}-D"),
        pytorch(failure),
    )
    short = asked + 1 - rank if asked >= 0 else -asked - rank
    cause = f"the tensor has {short} dim{'s' if short != 1 else ''} fewer than this call expects"
    entry = _model_input_behind(ctx, layer.inputs[0])
    fix: Fix = Fix(
        summary=f"give the tensor the dims the call expects, or ask for dim {asked - rank}",
        code=f"dim={asked - rank}   # counting from the end works for any rank",
    )
    if entry is not None and short == 1 and entry.model_input is not None:
        cause += (
            f"; it is input {entry.model_input} {shape(entry.shape)}, which came without its "
            "batch dim"
        )
        fix = EditInput(
            summary="add the batch dimension to the single sample",
            code="x = x.unsqueeze(0)   # before model(x)",
            position=entry.model_input,
            ops=(TensorOp("unsqueeze", (0,)),),
        )
    head = f"call {call} asks for dim {asked} of a {rank}-D tensor"
    return [Finding(failure.path, head, evidence, cause, fix, score=0.95)]
