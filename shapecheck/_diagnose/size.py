"""``input-too-small``: a kernel or pool window larger than what is left of the input."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .._fixes import Fix, TransformInput
from .._records import Layer
from .._shapes import Window, min_input, output_size, per_dim
from .._text import shape
from ._context import Context, Finding
from ._entry import model_arg
from ._words import pytorch_line, where

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


def _needed(rows: list[tuple[Layer, tuple[Window, ...]]]) -> tuple[int, ...]:
    """The smallest model-input size (per spatial dim) that leaves every window >= 1 output."""
    need = [1] * len(rows[-1][1])
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
            i
            for i, a in enumerate(ctx.args)
            if isinstance(a, torch.Tensor) and a.dim() == len(need) + 2 and a.is_floating_point()
        ),
        None,
    )
    size = "x".join(map(str, need))
    code = f"x = F.interpolate(x, size={need})   # or feed inputs of at least {size}"
    if image is None or model_arg(ctx, _info(ctx.args[image])) is None:
        return Fix(summary=f"feed inputs of at least {size}", code=code)
    mode = "nearest"
    return TransformInput(
        summary=f"resize the input to {size}",
        code=code,
        position=image,
        transform=lambda t: _resize(t, need, mode),
    )


def _resize(t: torch.Tensor, size: tuple[int, ...], mode: str) -> torch.Tensor:
    return F.interpolate(t, size=size, mode=mode)


def _info(t: Any) -> Any:
    from .._records import TensorInfo

    return TensorInfo(tuple(t.shape), str(t.dtype).removeprefix("torch."), str(t.device))


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
    need = _needed(rows)
    first = ctx.trace.inputs[0].shape[-len(found) :] if ctx.trace.inputs else x
    body = "\n".join(
        [
            f"layer {where(layer)} has no room left: the input is too small",
            f"  got       {shape(layer.inputs[0].shape)}   spatial {shape(x)}",
            f"  expected  spatial ≥ {shape(tuple(w.span - 2 * w.padding for w in found))}"
            f"   the window (kernel {shape(tuple(w.span for w in found))}, padding "
            f"{shape(tuple(w.padding for w in found))}) must fit",
            pytorch_line(failure),
            f"cause: the input {shape(first)} shrinks on the way, layer by layer:",
            *_history(rows),
            f"  the smallest input that gets through '{layer.path}' is {shape(need)}",
        ]
    )
    return [Finding("input-too-small", layer.path, body, _resize_fix(ctx, need), 1.0)]


def _fallback(ctx: Context, layer: Layer) -> list[Finding]:
    """A functional pool/conv: no module attributes, so PyTorch's message is all we have."""
    failure = ctx.failure
    if failure is None or not any(text in failure.message for text in _FALLBACK):
        return []
    body = "\n".join(
        [
            f"call '{layer.summary}' in '{failure.path}' has no room left: the input is too small",
            f"  got       {shape(layer.inputs[0].shape)}",
            pytorch_line(failure),
            "cause: the spatial size fell below the window of this call",
        ]
    )
    fix = Fix(
        summary="feed larger inputs, or use fewer down-sampling steps",
        code="x = F.interpolate(x, scale_factor=2)   # or a larger input",
    )
    return [Finding("input-too-small", failure.path, body, fix, 0.9)]
