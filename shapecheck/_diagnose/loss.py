"""``loss-target``: a target of the wrong shape, dtype or encoding for its loss."""

from __future__ import annotations

from .._changes import EditTarget, TensorOp
from .._loss import LOSS_PATH
from .._records import Layer, TensorInfo
from .._text import shape
from ._context import Context, Finding
from ._registry import failure_rule
from ._words import loss_row, pytorch

__all__ = ["loss_kind", "loss_target"]

_INDEX_LOSSES = ("CrossEntropyLoss", "NLLLoss", "cross_entropy", "nll_loss")
_SAME_SHAPE_LOSSES = (
    "BCELoss",
    "BCEWithLogitsLoss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "MSELoss",
    "L1Loss",
    "SmoothL1Loss",
    "HuberLoss",
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
)
_INTEGER = ("int64", "int32", "int16", "int8", "uint8")

Convert = tuple[str, str, tuple[TensorOp, ...]]


def loss_kind(ctx: Context, row: Layer) -> str | None:
    """``index`` (class ids), ``same`` (target shaped like the output) or None."""
    name = type(ctx.module(row)).__name__ if ctx.module(row) is not None else row.type
    if name in _INDEX_LOSSES:
        return "index"
    return "same" if name in _SAME_SHAPE_LOSSES else None


def _index_convert(o: tuple[int, ...], t: TensorInfo) -> Convert | None:
    """The conversion to class-index targets (N, d1, …) of int64, for an (N, C, d1, …) output."""
    s = t.shape
    if s == o and t.dtype in _INTEGER:
        return (
            "one-hot targets: one column per class",
            "target = target.argmax(dim=1)",
            (TensorOp("argmax", (), (("dim", 1),)),),
        )
    if len(s) == len(o) and len(s) >= 2 and s[1] == 1 and s[:1] + s[2:] == o[:1] + o[2:]:
        return (
            f"the class ids carry an extra dim of size 1: {shape(s)}",
            "target = target.squeeze(1).long()",
            (TensorOp("squeeze", (1,)), TensorOp("long")),
        )
    if s == o[:1] + o[2:] and t.dtype not in _INTEGER:
        return (f"class ids stored as {t.dtype}", "target = target.long()", (TensorOp("long"),))
    return None


def _same_convert(o: tuple[int, ...], t: TensorInfo) -> Convert | None:
    """The conversion to a float target shaped like the output."""
    if t.shape == o and t.dtype in _INTEGER:
        return (
            f"{t.dtype} targets; this loss needs floats",
            "target = target.float()",
            (TensorOp("float"),),
        )
    n = 1
    for d in o:
        n *= d
    count = 1
    for d in t.shape:
        count *= d
    if t.shape != o and count == n and t.shape[:1] == o[:1]:
        return (
            f"the target is {shape(t.shape)}, the output {shape(o)}: same values, other shape",
            "target = target.float().view_as(output)",
            (TensorOp("float"), TensorOp("reshape", o)),
        )
    return None


@failure_rule("loss-target")
def loss_target(ctx: Context) -> list[Finding]:
    """The loss failed and its target, not the model's output, is what does not fit."""
    failure = ctx.failure
    row = loss_row(ctx)
    if failure is None or failure.path != LOSS_PATH or row is None or len(row.inputs) < 2:
        return []
    out, target = row.inputs[0], row.inputs[1]
    batch = ctx.inputs[0].shape[:1] if ctx.inputs else ()
    if batch and out.shape[:1] != batch and target.shape[:1] == batch:
        return []  # the output lost its batch inside the model: not the target's fault
    kind = loss_kind(ctx, row)
    convert = (
        _index_convert(out.shape, target)
        if kind == "index"
        else _same_convert(out.shape, target)
        if kind == "same"
        else None
    )
    if convert is None:
        return []
    why, code, ops = convert
    expected = (
        f"{shape(out.shape[:1] + out.shape[2:])} int64 class ids"
        if kind == "index"
        else f"{shape(out.shape)} float, like the output"
    )
    evidence = (
        ("output", f"{shape(out.shape)} {out.dtype}"),
        ("got", f"{shape(target.shape)} {target.dtype}   the target"),
        ("expected", expected),
        pytorch(failure),
    )
    fix = EditTarget(summary="convert the target", code=code, ops=ops)
    return [
        Finding(
            LOSS_PATH, f"loss '{LOSS_PATH}' ({row.type}) cannot take its target", evidence, why, fix
        )
    ]
