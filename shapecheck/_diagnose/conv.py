"""Rules for a convolution that cannot take its input: ``channels-last``, ``conv-in-channels``."""

from __future__ import annotations

from torch import nn

from .._changes import Build, Fix, ReplaceModule, TensorOp
from .._records import Evidence, Layer
from .._text import shape
from ._context import Context, Finding
from ._entry import at_entry
from ._registry import layer_rule
from ._words import headline, layer_evidence, made_by

__all__ = ["channels_last", "conv_in_channels"]

_Conv = nn.modules.conv._ConvNd


def _channel_dim(layer: Layer, module: _Conv) -> int | None:
    """The index of the channel dim when the conv failed on a channel mismatch."""
    spatial = len(module.kernel_size)
    ndim = len(layer.inputs[0].shape)
    if ndim not in (spatial + 1, spatial + 2):
        return None
    channel_dim = ndim - spatial - 1
    return None if layer.inputs[0].shape[channel_dim] == module.in_channels else channel_dim


def _expected(module: _Conv, ndim: int) -> str:
    spatial = (
        ("H", "W") if len(module.kernel_size) == 2 else ("D", "H", "W")[-len(module.kernel_size) :]
    )
    dims = (
        ("N", str(module.in_channels), *spatial)
        if ndim > len(spatial) + 1
        else (str(module.in_channels), *spatial)
    )
    at = ndim - len(spatial) - 1
    return f"({', '.join(dims)})   channels at dim {at} = in_channels={module.in_channels}"


def _evidence(ctx: Context, layer: Layer, module: _Conv) -> tuple[Evidence, ...]:
    return layer_evidence(ctx, layer, _expected(module, len(layer.inputs[0].shape)))


@layer_rule("channels-last", _Conv)
def channels_last(ctx: Context, layer: Layer, module: _Conv) -> list[Finding]:
    """A channels-last tensor ((N, H, W, C) image, (N, L, C) sequence) reached a conv."""
    x = layer.inputs[0].shape
    if _channel_dim(layer, module) != 1 or x[-1] != module.in_channels:
        return []
    order = (0, len(x) - 1, *range(1, len(x) - 1))
    code = f"x = x.permute{order}" if len(x) > 3 else "x = x.transpose(1, 2)"
    moved = (x[0], x[-1], *x[1:-1])
    fix = at_entry(
        ctx,
        layer,
        (TensorOp("permute", order),),
        code,
        f"move the channels to dim 1: {shape(x)} → {shape(moved)}",
    )
    cause = (
        f"the input is channels-last: its last dim {x[-1]} = in_channels, "
        f"so the conv read dim 1 ({x[1]}) as channels"
    )
    return [Finding(layer.path, headline(layer), _evidence(ctx, layer, module), cause, fix)]


def _resized(module: _Conv, channels: int) -> Build:
    """The conv built for ``channels`` inputs, every other hyper-parameter kept."""
    groups = module.groups if channels % module.groups == 0 else 1
    options: list[tuple[str, object]] = [
        ("stride", module.stride),
        ("padding", module.padding),
        ("dilation", module.dilation),
        ("groups", groups),
        ("bias", module.bias is not None),
        ("padding_mode", module.padding_mode),
    ]
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        options.append(("output_padding", module.output_padding))
    args = (channels, module.out_channels, module.kernel_size)
    return Build(type(module).__name__, args, tuple(options))


def _input_fixes(ctx: Context, layer: Layer, got: int, want: int) -> list[tuple[Fix, float]]:
    """Convert a grayscale/RGB input where it enters the model."""
    rank = len(layer.inputs[0].shape)
    if (got, want) == (1, 3):
        spread = TensorOp("expand", (-1, 3, *[-1] * (rank - 2)))
        fix = at_entry(
            ctx, layer, (spread,), "x = x.expand(-1, 3, -1, -1)", "repeat the gray channel 3 times"
        )
    elif (got, want) == (3, 1):
        gray = TensorOp("mean", (), (("dim", 1), ("keepdim", True)))
        fix = at_entry(
            ctx,
            layer,
            (gray,),
            "x = x.mean(dim=1, keepdim=True)",
            "convert RGB to one gray channel",
        )
    else:
        return []
    return [(fix, 0.95)] if type(fix) is not Fix else []


@layer_rule("conv-in-channels", _Conv)
def conv_in_channels(ctx: Context, layer: Layer, module: _Conv) -> list[Finding]:
    """A conv built for in_channels=C received another number of channels."""
    channel_dim = _channel_dim(layer, module)
    if channel_dim is None:
        return []
    x = layer.inputs[0].shape
    got, want = x[channel_dim], module.in_channels
    source = made_by(ctx, layer).removeprefix("from ")
    origin = f"{source} makes {got}" if source else f"its input has {got}"
    cause = f"in_channels={want}, but {origin} channel{'s' if got != 1 else ''}"
    fixes = _input_fixes(ctx, layer, got, want)
    fixes.append(
        (
            ReplaceModule(
                summary=f"build '{layer.path}' for {got} input channels",
                code=f"nn.{type(module).__name__}({got}, {module.out_channels}, ...)",
                path=layer.path,
                build=_resized(module, got),
            ),
            0.9,
        )
    )
    last = channel_dim == 1 and x[-1] == want
    evidence = _evidence(ctx, layer, module)
    return [
        Finding(
            layer.path, headline(layer), evidence, cause, fix, score=score - (0.3 if last else 0)
        )
        for fix, score in fixes
    ]
