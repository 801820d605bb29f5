"""Phrases and evidence lines shared by the rules' messages, in the style of STYLE.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .._loss import LOSS_PATH
from .._records import Evidence, Failure, Layer
from .._text import shape
from ._context import Context, Finding

if TYPE_CHECKING:  # the fix records load with the rules that make fixes, not with warnings
    from .._changes import Fix

__all__ = [
    "caller",
    "got",
    "headline",
    "is_cross_entropy",
    "layer_evidence",
    "layer_finding",
    "loss_row",
    "made_by",
    "pytorch",
    "where",
]


def where(layer: Layer) -> str:
    """``'6' (Linear(512→32))``."""
    return f"'{layer.path}' ({layer.summary})"


def caller(ctx: Context, layer: Layer) -> str:
    """The module call a functional op ran in: ``'layer2.0' (BasicBlock)``, or ``the model
    (Net)`` for the root's own forward."""
    owner = ctx.layers[layer.parent] if layer.parent is not None else None
    if owner is None:
        return "the forward"
    return f"'{owner.path}' ({owner.type})" if owner.path else f"the model ({owner.type})"


def headline(layer: Layer, verb: str = "cannot take its input") -> str:
    return f"layer {where(layer)} {verb}"


def made_by(ctx: Context, layer: Layer, position: int = 0) -> str:
    """``from '5' (MaxPool2d)``: the call that made ``layer``'s input (recorded provenance);
    ``""`` for a model input or when nothing recorded made it."""
    if position >= len(layer.inputs):
        return ""
    maker = ctx.producer(layer.inputs[position])
    if maker is None or maker.index == layer.parent or not maker.path:
        return ""
    if maker.kind == "function":
        return f"from '{maker.summary}' in '{maker.path}'"
    return f"from '{maker.path}' ({maker.type})"


def got(ctx: Context, layer: Layer) -> Evidence:
    source = made_by(ctx, layer)
    return ("got", shape(layer.inputs[0].shape) + (f"   {source}" if source else ""))


def pytorch(failure: Failure) -> Evidence:
    """PyTorch's own words, verbatim (first line)."""
    return ("PyTorch", failure.message)


def layer_evidence(ctx: Context, layer: Layer, expected: str) -> tuple[Evidence, ...]:
    """The usual evidence: what the layer got and from where, what it expects, PyTorch's words."""
    assert ctx.failure is not None
    return got(ctx, layer), ("expected", expected), pytorch(ctx.failure)


def layer_finding(
    ctx: Context,
    layer: Layer,
    expected: str,
    cause: str,
    fix: Fix,
    *,
    arithmetic: tuple[str, ...] = (),
    score: float = 1.0,
) -> Finding:
    """The usual finding of a layer that cannot take its input: its headline and evidence."""
    evidence = layer_evidence(ctx, layer, expected)
    return Finding(layer.path, headline(layer), evidence, cause, fix, arithmetic, score)


def loss_row(ctx: Context) -> Layer | None:
    """The call of the loss (the module traced at ``"loss"``)."""
    return next((x for x in ctx.layers if x.kind == "module" and x.path == LOSS_PATH), None)


def is_cross_entropy(module: nn.Module | None) -> bool:
    """True for CrossEntropyLoss or F.cross_entropy wrapped as a loss module."""
    return type(module).__name__ in ("CrossEntropyLoss", "cross_entropy")
