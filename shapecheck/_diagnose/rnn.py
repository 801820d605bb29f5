"""``rnn-input``: RNN/LSTM/GRU input_size, ``batch_first`` and hidden-state shape mistakes."""

from __future__ import annotations

from torch import nn

from .._changes import Build, EditInput, Fix, ReplaceModule, TensorOp
from .._records import Layer
from .._text import shape
from ._context import Context, Finding
from ._entry import at_entry, owner_of
from ._registry import failure_rule, layer_rule
from ._words import layer_finding, pytorch
from .attention import batch_first_flipped

__all__ = ["hand_written_loop", "rnn_input"]


@layer_rule("rnn-input", nn.RNNBase)
def rnn_input(ctx: Context, layer: Layer, module: nn.RNNBase) -> list[Finding]:
    """A recurrent layer given the wrong layout or sizes."""
    x = layer.inputs[0].shape
    layout = "(N, L, H_in)" if module.batch_first else "(L, N, H_in)"
    expected = f"{layout}   H_in = input_size = {module.input_size}"
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
            f"the features sit at dim 1 ({x[1]} = input_size): a (N, C, L) tensor, channels first"
        )
        fix = at_entry(
            ctx,
            layer,
            (TensorOp("transpose", (1, 2)),),
            "x = x.transpose(1, 2)",
            f"put the features last: {shape(x)} → {shape((x[0], x[2], x[1]))}",
        )
        return layer_finding(ctx, layer, expected, cause, fix)
    rebuilt = Build(
        type(module).__name__,
        (x[-1], module.hidden_size),
        (
            ("num_layers", module.num_layers),
            ("bias", module.bias),
            ("batch_first", module.batch_first),
            ("bidirectional", module.bidirectional),
        ),
    )
    cause = f"the last dim is {x[-1]} features, not input_size={module.input_size}"
    fix = ReplaceModule(
        summary=f"build '{layer.path}' for input_size={x[-1]}",
        code=f"nn.{type(module).__name__}({x[-1]}, {module.hidden_size}, ...)",
        path=layer.path,
        build=rebuilt,
    )
    return layer_finding(ctx, layer, expected, cause, fix)


def _hidden(ctx: Context, layer: Layer, module: nn.RNNBase, x: tuple[int, ...]) -> list[Finding]:
    h = layer.inputs[1].shape
    batch = x[0] if module.batch_first else x[1]
    if len(h) != 3 or h[1] == batch:
        return []
    layout = "(N, L, H_in)" if module.batch_first else "(L, N, H_in)"
    expected = f"hidden (layers*dirs, {batch}, {module.hidden_size})   input read as {layout}"
    if h[1] == (x[1] if module.batch_first else x[0]):
        cause = (
            f"the hidden state's batch is {h[1]} = dim {0 if not module.batch_first else 1} "
            f"of the input, but batch_first={module.batch_first} reads the batch from dim "
            f"{1 if not module.batch_first else 0} ({batch})"
        )
        return [layer_finding(ctx, layer, expected, cause, batch_first_flipped(layer.path, module))]
    cause = f"the hidden state {shape(h)} is not (layers*dirs, {batch}, {module.hidden_size})"
    layers = module.num_layers * (2 if module.bidirectional else 1)
    fix = Fix(
        summary="make the hidden state for this batch",
        code=f"h0 = torch.zeros({layers}, {batch}, {module.hidden_size})",
    )
    return [layer_finding(ctx, layer, expected, cause, fix, score=0.9)]


@failure_rule("rnn-input")
def hand_written_loop(ctx: Context) -> list[Finding]:
    """A custom recurrence that reads dim 0 as time while its input is batch-first."""
    layer, failure = ctx.failed_layer(), ctx.failure
    if layer is None or failure is None or not layer.inputs:
        return []
    if isinstance(ctx.module(layer), nn.RNNBase) and layer.kind == "module":
        return []  # a built-in layer: rnn_input reads it
    owner = owner_of(ctx, layer)
    if owner is not None and isinstance(ctx.module(owner), nn.MultiheadAttention):
        return []  # not a hand-written loop: attention-dim reads its batch_first
    leading = {t.shape[0] for t in layer.inputs if t.shape}
    for arg in ctx.inputs:
        if (
            arg.model_input is None
            or len(arg.shape) != 3
            or not arg.dtype.startswith(("float", "bfloat"))
        ):
            continue
        n, steps, features = arg.shape
        if n == steps or leading != {n, steps}:
            continue
        expected = f"({steps}, {n}, {features})   (seq, batch, feature): the loop steps over dim 0"
        cause = (
            f"input {arg.model_input} {shape(arg.shape)} is batch-first (batch {n}, "
            f"{steps} steps) but the forward loops over dim 0 as time: each step holds "
            f"{steps} rows where the state holds {n}"
        )
        fix = EditInput(
            summary="pass the sequence time-major (or transpose it inside the forward)",
            code="x = x.transpose(0, 1)   # (batch, seq, feature) → (seq, batch, feature)",
            position=arg.model_input,
            ops=(TensorOp("transpose", (0, 1)),),
        )
        head = f"'{layer.summary}' in '{failure.path}' mixes the batch and time dims"
        evidence = (
            ("got", "  ".join(shape(t.shape) for t in layer.inputs[:2])),
            ("expected", expected),
            pytorch(failure),
        )
        return [Finding(failure.path, head, evidence, cause, fix, score=0.85)]
    return []
