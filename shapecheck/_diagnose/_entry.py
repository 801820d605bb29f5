"""Where a fix to a tensor goes: at the model's input when the tensor is that input, else
just before the outermost layer that takes it. Shared by the rules of several families; uses
the provenance recorded while tracing, never a guess from equal shapes."""

from __future__ import annotations

from collections.abc import Iterator

from .._changes import EditInput, EditLayerInput, Fix, TensorOp
from .._records import Layer
from .._source import code_line
from .._text import short
from .._variable import for_variable
from ._context import Context

__all__ = ["ancestors", "at_entry", "modules_of", "owner_of"]


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


def _outermost_module(ctx: Context, layer: Layer) -> Layer | None:
    """The outermost non-root module call that was handed the same tensor as ``layer``."""
    key = layer.inputs[0].key
    best = layer if layer.kind == "module" and layer.path else None
    for caller in ancestors(ctx, layer):
        if not caller.path or not caller.inputs or caller.inputs[0].key != key:
            break
        best = caller
    return best


def at_entry(ctx: Context, layer: Layer, ops: tuple[TensorOp, ...], code: str, summary: str) -> Fix:
    """A fix applying ``ops`` to the tensor that ``layer`` cannot take, where it enters."""
    position = layer.inputs[0].model_input if layer.inputs else None
    if position is not None:
        return EditInput(
            summary=f"{summary} before calling the model",
            code=f"{code}   # before model(x)",
            position=position,
            ops=ops,
        )
    target = _outermost_module(ctx, layer) if layer.inputs else None
    if target is None:
        return Fix(summary=summary, code=code)  # nowhere to try it: shown as not verified
    source = ctx.failure.source if ctx.failure else None
    line = code_line(source)
    at = f"   # before {short(source)}: {line}" if line else ""
    own = for_variable(code, line, target.path.rpartition(".")[2])
    return EditLayerInput(
        summary=f"{summary} before '{target.path}'", code=own + at, path=target.path, ops=ops
    )


def modules_of(ctx: Context, kinds: tuple[type, ...]) -> Iterator[Layer]:
    """Module rows (in call order) whose module is an instance of ``kinds``."""
    for layer in ctx.layers:
        if layer.kind == "module" and isinstance(ctx.module(layer), kinds):
            yield layer
