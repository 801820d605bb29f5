"""``rnn-input``: RNN/LSTM/GRU input_size, ``batch_first`` and hidden-state shape mistakes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._fixes import Fix, ReplaceModule, TransformInput, batch_first_flipped
from .._records import Layer
from .._text import shape
from ._context import Context, Finding
from ._entry import at_entry, owner_of
from ._words import layer_message, pytorch_line

__all__ = ["rnn_input"]


def rnn_input(ctx: Context) -> list[Finding]:
    """A recurrent layer (or a hand-written recurrence) given the wrong layout or sizes."""
    layer, failure = ctx.failed_layer(), ctx.failure
    if layer is None or failure is None or not layer.inputs:
        return []
    module = ctx.module(layer) if layer.kind == "module" else None
    if isinstance(module, nn.RNNBase):
        return _builtin(ctx, layer, module)
    owner = owner_of(ctx, layer)
    if owner is not None and isinstance(ctx.module(owner), nn.MultiheadAttention):
        return []  # not a hand-written loop: attention-dim reads its batch_first
    return _hand_written(ctx, layer)


def _builtin(ctx: Context, layer: Layer, module: nn.RNNBase) -> list[Finding]:
    x = layer.inputs[0].shape
    layout = "(N, L, H_in)" if module.batch_first else "(L, N, H_in)"
    expected = f"  expected  {layout}   H_in = input_size = {module.input_size}"
    if x[-1] != module.input_size:
        return [_size(ctx, layer, module, x, expected)]
    if len(layer.inputs) > 1 and len(x) == 3:
        return _hidden(ctx, layer, module, x)
    return []


def _size(
    ctx: Context, layer: Layer, module: nn.RNNBase, x: tuple[int, ...], expected: str
) -> Finding:
    if len(x) == 3 and x[1] == module.input_size:
        cause = (
            f"cause: the features sit at dim 1 ({x[1]} = input_size): "
            "a (N, C, L) tensor, channels first"
        )
        fix = at_entry(
            ctx,
            layer,
            lambda t: t.transpose(1, 2),
            "x = x.transpose(1, 2)",
            f"put the features last: {shape(x)} → {shape((x[0], x[2], x[1]))}",
        )
        return Finding(
            "rnn-input", layer.path, layer_message(ctx, layer, expected, cause), fix, 1.0
        )
    cls: Any = type(module)  # LSTM/GRU/RNN: (input_size, hidden_size, ...)
    rebuilt = cls(
        x[-1],
        module.hidden_size,
        num_layers=module.num_layers,
        bias=module.bias,
        batch_first=module.batch_first,
        bidirectional=module.bidirectional,
    )
    cause = f"cause: the last dim is {x[-1]} features, not input_size={module.input_size}"
    fix = ReplaceModule(
        summary=f"build '{layer.path}' for input_size={x[-1]}",
        code=f"nn.{type(module).__name__}({x[-1]}, {module.hidden_size}, ...)",
        path=layer.path,
        make=lambda: rebuilt,
    )
    return Finding("rnn-input", layer.path, layer_message(ctx, layer, expected, cause), fix, 1.0)


def _hidden(ctx: Context, layer: Layer, module: nn.RNNBase, x: tuple[int, ...]) -> list[Finding]:
    h = layer.inputs[1].shape
    batch = x[0] if module.batch_first else x[1]
    if len(h) != 3 or h[1] == batch:
        return []
    layout = "(N, L, H_in)" if module.batch_first else "(L, N, H_in)"
    expected = (
        f"  expected  hidden (layers*dirs, {batch}, {module.hidden_size})   input read as {layout}"
    )
    if h[1] == (x[1] if module.batch_first else x[0]):
        cause = (
            f"cause: the hidden state's batch is {h[1]} = dim {0 if not module.batch_first else 1} "
            f"of the input, but batch_first={module.batch_first} reads the batch from dim "
            f"{1 if not module.batch_first else 0} ({batch})"
        )
        fix: Fix = batch_first_flipped(layer.path, module)
        return [
            Finding("rnn-input", layer.path, layer_message(ctx, layer, expected, cause), fix, 1.0)
        ]
    cause = (
        f"cause: the hidden state {shape(h)} is not (layers*dirs, {batch}, {module.hidden_size})"
    )
    fix = Fix(
        summary="make the hidden state for this batch",
        code=f"h0 = torch.zeros({module.num_layers * (2 if module.bidirectional else 1)}, "
        f"{batch}, {module.hidden_size})",
    )
    return [Finding("rnn-input", layer.path, layer_message(ctx, layer, expected, cause), fix, 0.9)]


def _hand_written(ctx: Context, layer: Layer) -> list[Finding]:
    """A custom recurrence that reads dim 0 as time while its input is batch-first."""
    leading = {t.shape[0] for t in layer.inputs if t.shape}
    for position, arg in enumerate(ctx.args):
        if not isinstance(arg, torch.Tensor) or arg.dim() != 3 or not arg.is_floating_point():
            continue
        n, steps = arg.shape[0], arg.shape[1]
        if n == steps or leading != {n, steps}:
            continue
        expected = (
            f"  expected  ({steps}, {n}, {arg.shape[2]})   "
            "(seq, batch, feature): the loop steps over dim 0"
        )
        cause = (
            f"cause: input {position} {shape(tuple(arg.shape))} is batch-first (batch {n}, "
            f"{steps} steps) but the forward loops over dim 0 as time: each step holds "
            f"{steps} rows where the state holds {n}"
        )
        fix = TransformInput(
            summary="pass the sequence time-major (or transpose it inside the forward)",
            code="x = x.transpose(0, 1)   # (batch, seq, feature) → (seq, batch, feature)",
            position=position,
            transform=lambda t: t.transpose(0, 1),
        )
        body = "\n".join(
            [
                f"'{layer.summary}' in '{ctx.failure.path if ctx.failure else ''}' "
                "mixes the batch and time dims",
                "  got       " + "  ".join(shape(t.shape) for t in layer.inputs[:2]),
                expected,
                pytorch_line(ctx.failure) if ctx.failure else "",
                cause,
            ]
        )
        return [Finding("rnn-input", ctx.failure.path if ctx.failure else "", body, fix, 0.85)]
    return []
