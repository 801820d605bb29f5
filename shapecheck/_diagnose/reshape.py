"""Rules for a ``view``/``reshape`` that cannot be made: ``view-size`` (the sizes do not
multiply to what the tensor holds) and ``view-contiguous`` (a ``view`` of a permuted tensor)."""

from __future__ import annotations

import math
import re

from .._changes import CallRewrite, Fix, RewriteCall
from .._records import Evidence, Layer
from .._source import code_line
from .._text import count, shape, short
from ._context import Context, Finding
from ._registry import failure_rule
from ._words import caller, pytorch

__all__ = ["requested_shape", "view_contiguous", "view_size"]

_RESHAPES = frozenset({"view", "reshape"})
_REORDERS = frozenset(
    {
        "permute",
        "transpose",
        "t",
        "T",
        "mT",
        "swapaxes",
        "swapdims",
        "movedim",
        "narrow",
        "expand",
        "as_strided",
    }
)
_INVALID = re.compile(r"shape '\[([-\d, ]*)\]' is invalid for input of size (\d+)")


def requested_shape(layer: Layer, message: str) -> tuple[int, ...] | None:
    """The sizes a view asked for: from the recorded arguments, else PyTorch's message."""
    text = layer.arguments.strip().removeprefix("(").removesuffix(")").rstrip(",")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts and all(re.fullmatch(r"-?\d+", p) for p in parts):
        return tuple(int(p) for p in parts)
    found = _INVALID.search(message)
    return tuple(int(p) for p in found.group(1).split(",")) if found else None


def _failed_view(ctx: Context) -> Layer | None:
    layer = ctx.failed_layer()
    if layer is None or layer.kind != "function" or layer.type not in _RESHAPES:
        return None
    return layer if layer.inputs else None


def _at(layer: Layer) -> list[Evidence]:
    line = code_line(layer.source)
    return [("at", f"{short(layer.source)}   {line}")] if line else []


@failure_rule("view-size")
def view_size(ctx: Context) -> list[Finding]:
    """A view whose sizes do not multiply to the number of values the tensor holds."""
    layer, failure = _failed_view(ctx), ctx.failure
    if layer is None or failure is None:
        return []
    asked = requested_shape(layer, failure.message)
    x = layer.inputs[0].shape
    total = math.prod(x)
    if asked is None or asked.count(-1) > 1:
        return []
    known = math.prod(d for d in asked if d != -1)
    if (known and total % known == 0) if -1 in asked else known == total:
        return []  # the sizes fit: another error
    batch = ctx.batch
    per_sample = total // batch if batch and total % batch == 0 else None
    samples = f" = {batch} samples of {count(per_sample)}" if per_sample else ""
    asked_text = f"{layer.type}({', '.join(map(str, asked))})"
    evidence = (
        ("got", f"{shape(x)}   {count(total)} values{samples}"),
        (
            "asked",
            f"{asked_text}   {'*'.join(str(d) for d in asked if d != -1)} = "
            f"{count(known)}" + (" per row of -1" if -1 in asked else ""),
        ),
        *_at(layer),
        pytorch(failure),
    )
    if -1 in asked:
        cause = (
            f"-1 would have to be {count(total)} / {count(known)} = {total / known:.4g}: not "
            "a whole number, so no shape fits"
        )
    else:
        cause = f"{asked_text} makes {count(known)} values, but the tensor holds {count(total)}"
    arithmetic = (
        (
            f"  per sample the tensor holds {count(per_sample)} values: "
            f"{layer.type}(x.size(0), -1) gives {shape((batch, per_sample))}",
        )
        if per_sample and batch
        else ()
    )
    fix = _fix(layer, asked, batch)
    score = 0.85 if asked[0] == -1 else 1.0  # view(-1, n) guessing the batch: view-batch first
    head = f"call '{asked_text}' in {caller(ctx, layer)} cannot reshape its input"
    return [
        Finding(
            ctx.failure.path if ctx.failure else "", head, evidence, cause, fix, arithmetic, score
        )
    ]


def _fix(layer: Layer, asked: tuple[int, ...], batch: int | None) -> Fix:
    """Flatten per sample when the view means one row per sample; else say what must hold."""
    per_row = len(asked) == 2 and batch is not None and asked[0] in (-1, batch)
    if per_row and layer.source is not None:
        return RewriteCall(
            summary="flatten per sample: one row per sample, whatever its size",
            code="x = x.flatten(1)   # or x.view(x.size(0), -1)",
            source=layer.source,
            name=layer.type,
            rewrite=CallRewrite.FLATTEN_PER_SAMPLE,
        )
    return Fix(
        summary="size the view from the tensor: keep the batch and let -1 take the rest",
        code="x = x.view(x.size(0), -1)   # or sizes whose product is x.numel()",
    )


def _reordered_by(ctx: Context, layer: Layer) -> Layer | None:
    """The permute/transpose (or a view of one) that made the view's input, if one did."""
    info = layer.inputs[0]
    for _ in range(8):
        row = ctx.producer(info)
        if row is None or row.kind != "function" or not row.inputs:
            return None
        if row.type in _REORDERS:
            return row
        info = row.inputs[0]
    return None


@failure_rule("view-contiguous")
def view_contiguous(ctx: Context) -> list[Finding]:
    """``view`` of a tensor whose memory a permute/transpose reordered: only ``reshape`` (or
    ``.contiguous().view``) can make that shape."""
    layer, failure = _failed_view(ctx), ctx.failure
    if layer is None or failure is None or layer.type != "view":
        return []
    reorder = _reordered_by(ctx, layer)
    if (
        reorder is None
        and "is not compatible with input tensor's size and stride" not in failure.message
    ):
        return []
    call = f"view({layer.arguments})"
    made = f"   made by '{reorder.summary}'" if reorder is not None else ""
    evidence = (("got", f"{shape(layer.inputs[0].shape)}{made}"), *_at(layer), pytorch(failure))
    cause = (
        "view never copies: it needs the values in memory in the order of the new shape, "
        f"and {'the ' + reorder.type if reorder else 'a permute or transpose'} changed only "
        "the order of the dims, not of the memory"
    )
    fix = RewriteCall(
        summary="reshape instead of view (it copies when it has to)",
        code=f"x = x.reshape({layer.arguments})   # or x.contiguous().{call}",
        source=layer.source or "",
        name="view",
        rewrite=CallRewrite.RESHAPE,
    )
    head = f"call '{call}' in {caller(ctx, layer)} cannot view a reordered tensor"
    return [Finding(failure.path, head, evidence, cause, fix)]
