"""``cat-mismatch``: torch.cat/stack of tensors whose other dims differ (U-Net skips, say)."""

from __future__ import annotations

from .._changes import CallRewrite, EditInput, RewriteCall, TensorOp
from .._records import Evidence, Layer
from .._shapes import halvings, multiple_below
from .._text import shape
from ._context import Context, Finding
from ._registry import failure_rule
from ._words import made_by, pytorch

__all__ = ["cat_mismatch"]

_JOINS = frozenset({"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack"})


def _cat_dim(layer: Layer) -> int:
    text = layer.arguments.replace(" ", "")
    for part in text.split(","):
        value = part.removeprefix("dim=")
        if value.lstrip("-").isdigit():
            return int(value)
    return 0


@failure_rule("cat-mismatch")
def cat_mismatch(ctx: Context) -> list[Finding]:
    """A cat/stack whose tensors disagree outside the joined dim."""
    layer, failure = ctx.failed_layer(), ctx.failure
    if layer is None or failure is None or layer.kind != "function" or layer.type not in _JOINS:
        return []
    shapes = [t.shape for t in layer.inputs]
    if len(shapes) < 2 or len({len(s) for s in shapes}) != 1:
        return []
    dim = _cat_dim(layer) % len(shapes[0]) if layer.type in ("cat", "concat", "concatenate") else -1
    differ = [d for d in range(len(shapes[0])) if d != dim and len({s[d] for s in shapes}) > 1]
    if not differ:
        return []
    owner = ctx.layers[layer.parent] if layer.parent is not None else None
    head = (
        f"'{layer.type}' in '{owner.path if owner else ''}' ({owner.type if owner else '?'}) "
        f"got tensors that differ outside dim {dim}"
    )
    evidence = (
        *[("got", f"{shape(s)}   {made_by(ctx, layer, i)}".rstrip()) for i, s in enumerate(shapes)],
        pytorch(failure),
    )
    sizes = " vs ".join(str(s[differ[0]]) for s in shapes)
    findings = _size_findings(ctx, layer, shapes, differ, head, evidence, sizes)
    fix = RewriteCall(
        summary="resize (or pad/crop) the skip to the other tensor's size before joining",
        code=f"y = F.interpolate(y, size=x.shape[2:])   # before torch.{layer.type}([x, y], ...)",
        source=layer.source or "",
        name=layer.type,
        rewrite=CallRewrite.RESIZE_TO_FIRST,
    )
    cause = f"dim {differ[0]} is {sizes}; a down/up-sampling path rounded an odd size"
    findings.append(Finding(failure.path, head, evidence, cause, fix, score=0.9))
    return findings


def _size_findings(
    ctx: Context,
    layer: Layer,
    shapes: list[tuple[int, ...]],
    differ: list[int],
    head: str,
    evidence: tuple[Evidence, ...],
    sizes: str,
) -> list[Finding]:
    """Inputs whose spatial sizes divide by 2^k: the smallest map decides k."""
    first = ctx.inputs[0] if ctx.inputs else None
    if first is None or first.model_input is None or len(first.shape) not in (3, 4, 5):
        return []
    if len(first.shape) != len(shapes[0]):
        return []
    spatial = first.shape[2:]
    maps = [
        t.outputs[0].shape
        for t in ctx.layers[: layer.index]
        if t.outputs and len(t.outputs[0].shape) == len(first.shape)
    ] or [first.shape]
    smallest = [min(m[d] for m in maps) for d in range(2, len(first.shape))]
    k = max(halvings(s, m) for s, m in zip(spatial, smallest, strict=True))
    factor = 2**k
    if k == 0 or all(s % factor == 0 for s in spatial):
        return []
    size = tuple(multiple_below(s, factor) for s in spatial)
    odd = ", ".join(sorted({str(s) for s in spatial if s % factor}))
    cause = (
        f"dim {differ[0]} is {sizes}: the input {shape(spatial)} is halved {k} times, and "
        f"{odd} is not a multiple of 2^{k} = {factor}, so a halving rounds down and the way "
        "back up cannot match"
    )
    fix = EditInput(
        summary=f"use inputs whose sides are multiples of {factor}: {shape(size)}",
        code=f"x = F.interpolate(x, size={size})   # sides divisible by 2^{k} = {factor}",
        position=first.model_input,
        ops=(TensorOp("interpolate", (), (("size", size),)),),
    )
    path = ctx.failure.path if ctx.failure else ""
    return [Finding(path, head, evidence, cause, fix)]
