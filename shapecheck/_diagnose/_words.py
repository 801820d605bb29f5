"""Phrases shared by the rules' messages, in the style of STYLE.md."""

from __future__ import annotations

from .._records import Failure, Layer
from .._text import shape
from ._context import Context

__all__ = ["got_line", "headline", "layer_message", "pytorch_line", "where"]


def where(layer: Layer) -> str:
    """``'6' (Linear(512→32))``."""
    return f"'{layer.path}' ({layer.summary})"


def headline(layer: Layer, verb: str = "cannot take its input") -> str:
    return f"layer {where(layer)} {verb}"


def got_line(layer: Layer, producer: Layer | None) -> str:
    source = f"   from '{producer.path}' ({producer.type})" if producer else ""
    return f"  got       {shape(layer.inputs[0].shape)}{source}"


def pytorch_line(failure: Failure) -> str:
    return f"  PyTorch   {failure.message}"


def layer_message(ctx: Context, layer: Layer, expected: str, cause: str) -> str:
    """The usual message: headline, what the layer got and from where, what it expects,
    PyTorch's own words, and the cause."""
    assert ctx.failure is not None
    return "\n".join([
        headline(layer), got_line(layer, ctx.producer(layer)), expected,
        pytorch_line(ctx.failure), cause,
    ])  # fmt: skip
