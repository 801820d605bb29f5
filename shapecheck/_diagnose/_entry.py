"""Where a fix to a tensor goes: at the model's input when the tensor is that input, else
just before the layer that cannot take it. Shared by the rules of several families."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .._fixes import Fix, TransformInput, WrapModuleInput
from .._records import Layer, TensorInfo
from .._source import code_line, short
from ._context import Context

__all__ = ["ancestors", "at_entry", "model_arg", "modules_of", "owner_of"]

Transform = Callable[[torch.Tensor], torch.Tensor]


def ancestors(ctx: Context, layer: Layer) -> Iterator[Layer]:
    """The calls that were running when ``layer`` ran, innermost first."""
    index = layer.parent
    while index is not None:
        yield ctx.layers[index]
        index = ctx.layers[index].parent


def owner_of(ctx: Context, layer: Layer) -> Layer | None:
    """The module call a layer belongs to: itself for a module, its caller for a function."""
    if layer.kind == "module":
        return layer
    return ctx.layers[layer.parent] if layer.parent is not None else None


def model_arg(ctx: Context, info: TensorInfo) -> int | None:
    """Position of the model's positional tensor argument with ``info``'s shape and dtype."""
    for position, arg in enumerate(ctx.args):
        if (
            isinstance(arg, torch.Tensor)
            and tuple(arg.shape) == info.shape
            and str(arg.dtype).removeprefix("torch.") == info.dtype
        ):
            return position
    return None


def _made_inside(ctx: Context, layer: Layer) -> bool:
    """True when an earlier call (not one of ``layer``'s callers) produced its input's shape."""
    wanted = layer.inputs[0].shape
    callers = {a.index for a in ancestors(ctx, layer)}
    return any(
        wanted in earlier.output_shapes
        for earlier in ctx.layers[: layer.index]
        if earlier.index not in callers and earlier.path
    )


def _outermost_module(ctx: Context, layer: Layer) -> Layer | None:
    """The outermost non-root module call whose first input is the same as ``layer``'s."""
    wanted = layer.inputs[0].shape
    best = layer if layer.kind == "module" and layer.path else None
    for caller in ancestors(ctx, layer):
        if not caller.path or not caller.inputs or caller.inputs[0].shape != wanted:
            break
        best = caller
    return best


def at_entry(ctx: Context, layer: Layer, transform: Transform, code: str, summary: str) -> Fix:
    """A fix applying ``transform`` to the tensor that ``layer`` cannot take, where it enters."""
    position = model_arg(ctx, layer.inputs[0]) if layer.inputs else None
    if position is not None and not _made_inside(ctx, layer):
        return TransformInput(
            summary=f"{summary} before calling the model",
            code=f"{code}   # before model(x)",
            position=position,
            transform=transform,
        )
    target = _outermost_module(ctx, layer) if layer.inputs else None
    if target is None:
        return Fix(summary=summary, code=code)  # nowhere to try it: shown as not verified
    line = code_line(ctx.failure.source if ctx.failure else None)
    at = f"   # before {short(ctx.failure.source if ctx.failure else None)}: {line}" if line else ""
    return WrapModuleInput(
        summary=f"{summary} before '{target.path}'",
        code=code + at,
        path=target.path,
        transform=transform,
    )


def modules_of(ctx: Context, kinds: tuple[type, ...]) -> Iterator[Layer]:
    """Module rows (in call order) whose module is an instance of ``kinds``."""
    for layer in ctx.layers:
        if layer.kind == "module" and isinstance(ctx.module(layer), kinds):
            yield layer
