"""``input-too-small``: a kernel or pool window larger than what is left of the input."""

from __future__ import annotations

from torch import nn

from .._changes import EditInput, Fix, TensorOp
from .._records import Layer
from .._shapes import Window, min_input, output_size, per_dim
from .._text import shape
from ._context import Context, Finding
from ._registry import failure_rule
from ._words import pytorch, where

__all__ = ["input_too_small", "windows"]

_WINDOWED = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
_FALLBACK = ("Output size is too small", "Kernel size can't be greater")


def windows(module: nn.Module) -> tuple[Window, ...] | None:
    """One :class:`Window` per spatial dim of a conv/pool module; None for other modules."""
    if not isinstance(module, _WINDOWED) or isinstance(module.padding, str):
        return None
    dims = len(module.kernel_size) if isinstance(module.kernel_size, tuple) else _dims(module)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return None  # transposed convs grow the input; they never run out of room
    kernel, stride = (
        per_dim(_ints(module.kernel_size), dims),
        per_dim(_ints(module.stride or 1), dims),
    )
    padding = per_dim(_ints(module.padding), dims)
    dilation = per_dim(getattr(module, "dilation", 1), dims)
    ceil = bool(getattr(module, "ceil_mode", False))
    return tuple(
        Window(k, s, p, d, ceil)
        for k, s, p, d in zip(kernel, stride, padding, dilation, strict=True)
    )


def _ints(value: object) -> int | tuple[int, ...]:
    return value if isinstance(value, int) else tuple(int(v) for v in value)  # type: ignore[attr-defined]


def _dims(module: nn.Module) -> int:
    name = type(module).__name__
    return next((n for n in (1, 2, 3) if f"{n}d" in name), 2)


def _spatial_rows(ctx: Context, upto: int) -> list[tuple[Layer, tuple[Window, ...]]]:
    rows = []
    for layer in ctx.layers[: upto + 1]:
        module = ctx.module(layer) if layer.kind == "module" else None
        found = windows(module) if module is not None else None
        if found is not None and layer.inputs and len(layer.inputs[0].shape) > len(found):
            rows.append((layer, found))
    return rows


def _later_windows(ctx: Context, layer: Layer, dims: int) -> list[tuple[Window, ...]]:
    """The windows of the conv/pool modules the forward did not reach, in the order they are
    registered after the failing one (the order a VGG-style stack calls them in)."""
    failed = ctx.module(layer)
    called = {id(m) for m in ctx.module_at.values()}
    found, after = [], False
    for module in ctx.model.modules():
        if module is failed:
            after = True
        elif after and id(module) not in called:
            spans = windows(module)
            if spans is not None and len(spans) == dims:
                found.append(spans)
    return found


def _needed(rows: list[tuple[Layer, tuple[Window, ...]]],
            later: list[tuple[Window, ...]]) -> tuple[int, ...]:  # fmt: skip
    """The smallest model-input size (per spatial dim) that leaves every window >= 1 output:
    through the windows not reached yet, then back through those the trace saw."""
    need = [1] * len(rows[-1][1])
    for spans in reversed(later):
        need = [min_input(n, w) for n, w in zip(need, spans, strict=True)]
    for layer, found in reversed(rows):
        x = layer.inputs[0].shape[-len(found) :]
        before = _size_before(rows, layer)
        for d, w in enumerate(found):
            scale = before[d] / x[d] if x[d] else 1.0  # resizes between windows (Upsample…)
            need[d] = max(1, int(-(-min_input(need[d], w) * scale // 1)))
    return tuple(need)


def _size_before(rows: list[tuple[Layer, tuple[Window, ...]]], layer: Layer) -> tuple[int, ...]:
    index = [r[0].index for r in rows].index(layer.index)
    x = layer.inputs[0].shape[-len(rows[index][1]) :]
    if index == 0:
        return x
    prev = rows[index - 1][0]
    return prev.outputs[0].shape[-len(x) :] if prev.outputs else x


def _history(rows: list[tuple[Layer, tuple[Window, ...]]]) -> list[str]:
    lines = []
    for layer, found in rows:
        x = layer.inputs[0].shape[-len(found) :]
        out = tuple(output_size(s, w) for s, w in zip(x, found, strict=True))
        if out != x or layer.failed:
            lines.append(f"  {shape(x)} → {shape(out)}   {where(layer)}")
    return lines


def _resize_fix(ctx: Context, need: tuple[int, ...]) -> Fix:
    image = next(
        (
            t
            for t in ctx.inputs
            if t.model_input is not None
            and len(t.shape) == len(need) + 2
            and t.dtype.startswith(("float", "bfloat"))
        ),
        None,
    )
    size = "x".join(map(str, need))
    code = f"x = F.interpolate(x, size={need})   # or feed inputs of at least {size}"
    if image is None or image.model_input is None:
        return Fix(summary=f"feed inputs of at least {size}", code=code)
    resize = TensorOp("interpolate", (), (("size", need), ("mode", "nearest")))
    return EditInput(
        summary=f"resize the input to {size}", code=code, position=image.model_input, ops=(resize,)
    )


@failure_rule("input-too-small")
def input_too_small(ctx: Context) -> list[Finding]:
    """A conv/pool window that no longer fits: name it, the sizes on the way, the minimum."""
    layer, failure = ctx.failed_layer(), ctx.failure
    if layer is None or failure is None or not layer.inputs:
        return []
    module = ctx.module(layer) if layer.kind == "module" else None
    found = windows(module) if module is not None else None
    if found is None:
        return _fallback(ctx, layer)
    if len(layer.inputs[0].shape) <= len(found):
        return []  # no channel dim at all: a flattened tensor, not a small image
    x = layer.inputs[0].shape[-len(found) :]
    out = tuple(output_size(s, w) for s, w in zip(x, found, strict=True))
    if min(out) > 0:
        return []
    rows = _spatial_rows(ctx, layer.index)
    need = _needed(rows, _later_windows(ctx, layer, len(found)))
    first = ctx.inputs[0].shape[-len(found) :] if ctx.inputs else x
    if len(set(first)) == 1:  # square images: one size for every side
        need = (max(need),) * len(need)
    evidence = (
        ("got", f"{shape(layer.inputs[0].shape)}   spatial {shape(x)}"),
        (
            "expected",
            f"spatial ≥ {shape(tuple(w.span - 2 * w.padding for w in found))}"
            f"   the window (kernel {shape(tuple(w.span for w in found))}, padding "
            f"{shape(tuple(w.padding for w in found))}) must fit",
        ),
        pytorch(failure),
    )
    arithmetic = (*_history(rows), f"  the smallest input that gets through the whole model is "
                  f"{shape(need)}")  # fmt: skip
    return [
        Finding(
            layer.path,
            f"layer {where(layer)} has no room left: the input is too small",
            evidence,
            f"the input {shape(first)} shrinks on the way, layer by layer:",
            _resize_fix(ctx, need),
            arithmetic,
        )
    ]


def _fallback(ctx: Context, layer: Layer) -> list[Finding]:
    """A functional pool/conv: no module attributes, so PyTorch's message is all we have."""
    failure = ctx.failure
    if failure is None or not any(text in failure.message for text in _FALLBACK):
        return []
    fix = Fix(
        summary="feed larger inputs, or use fewer down-sampling steps",
        code="x = F.interpolate(x, scale_factor=2)   # or a larger input",
    )
    head = f"call '{layer.summary}' in '{failure.path}' has no room left: the input is too small"
    evidence = (("got", shape(layer.inputs[0].shape)), pytorch(failure))
    return [
        Finding(
            failure.path,
            head,
            evidence,
            "the spatial size fell below the window of this call",
            fix,
            score=0.9,
        )
    ]
