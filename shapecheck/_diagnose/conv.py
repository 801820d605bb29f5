"""Rules for a convolution that cannot take its input: ``channels-last``, ``conv-in-channels``."""

from __future__ import annotations

import copy

from torch import nn

from .._fixes import Fix, ReplaceModule
from .._records import Layer
from .._text import shape
from ._context import Context, Finding
from ._entry import at_entry
from ._words import layer_message

__all__ = ["channels_last", "conv_in_channels"]

_Conv = nn.modules.conv._ConvNd


def _failing_conv(ctx: Context) -> tuple[Layer, _Conv, int] | None:
    """(row, conv, index of the channel dim) when a conv failed on a channel mismatch."""
    layer = ctx.failed_layer()
    module = ctx.module(layer) if layer is not None else None
    if layer is None or not isinstance(module, _Conv) or not layer.inputs:
        return None
    if isinstance(module, nn.modules.lazy.LazyModuleMixin):
        return None
    spatial = len(module.kernel_size)
    ndim = len(layer.inputs[0].shape)
    if ndim not in (spatial + 1, spatial + 2):
        return None
    channel_dim = ndim - spatial - 1
    if layer.inputs[0].shape[channel_dim] == module.in_channels:
        return None
    return layer, module, channel_dim


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
    return (
        f"  expected  ({', '.join(dims)})   channels at dim {at} = in_channels={module.in_channels}"
    )


def _body(ctx: Context, layer: Layer, module: _Conv, cause: str) -> str:
    return layer_message(ctx, layer, _expected(module, len(layer.inputs[0].shape)), cause)


def channels_last(ctx: Context) -> list[Finding]:
    """A channels-last tensor ((N, H, W, C) image, (N, L, C) sequence) reached a conv."""
    found = _failing_conv(ctx)
    if found is None:
        return []
    layer, module, channel_dim = found
    x = layer.inputs[0].shape
    if channel_dim != 1 or x[-1] != module.in_channels:
        return []
    order = (0, len(x) - 1, *range(1, len(x) - 1))
    code = f"x = x.permute{order}" if len(x) > 3 else "x = x.transpose(1, 2)"
    moved = (x[0], x[-1], *x[1:-1])
    fix = at_entry(
        ctx,
        layer,
        lambda t: t.permute(*order),
        code,
        f"move the channels to dim 1: {shape(x)} → {shape(moved)}",
    )
    cause = (
        f"cause: the input is channels-last: its last dim {x[-1]} = in_channels, "
        f"so the conv read dim 1 ({x[1]}) as channels"
    )
    return [Finding("channels-last", layer.path, _body(ctx, layer, module, cause), fix, 1.0)]


def _resized(module: _Conv, channels: int) -> _Conv:
    new = copy.deepcopy(module)
    new.in_channels = channels
    groups = module.groups if channels % module.groups == 0 else 1
    new.groups = groups
    shape_ = list(module.weight.shape)
    index = 0 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 1
    shape_[index] = channels // groups if index == 1 else channels
    new.weight = nn.Parameter(module.weight.new_empty(shape_))
    nn.init.kaiming_uniform_(new.weight, a=5**0.5)
    return new


def _input_fixes(ctx: Context, layer: Layer, module: _Conv, got: int) -> list[tuple[Fix, float]]:
    """Convert a grayscale/RGB input where it enters the model."""
    want = module.in_channels
    if (got, want) == (1, 3):
        fix = at_entry(
            ctx,
            layer,
            lambda t: t.expand(-1, 3, *t.shape[2:]),
            "x = x.expand(-1, 3, -1, -1)",
            "repeat the gray channel 3 times",
        )
    elif (got, want) == (3, 1):
        fix = at_entry(
            ctx,
            layer,
            lambda t: t.mean(dim=1, keepdim=True),
            "x = x.mean(dim=1, keepdim=True)",
            "convert RGB to one gray channel",
        )
    else:
        return []
    return [(fix, 0.95)] if type(fix) is not Fix else []


def conv_in_channels(ctx: Context) -> list[Finding]:
    """A conv built for in_channels=C received another number of channels."""
    found = _failing_conv(ctx)
    if found is None:
        return []
    layer, module, channel_dim = found
    x = layer.inputs[0].shape
    got, want = x[channel_dim], module.in_channels
    producer = ctx.producer(layer)
    origin = (
        f"'{producer.path}' ({producer.type}) makes {got}" if producer else f"its input has {got}"
    )
    cause = f"cause: in_channels={want}, but {origin} channel{'s' if got != 1 else ''}"
    body = _body(ctx, layer, module, cause)
    fixes = _input_fixes(ctx, layer, module, got)
    new_code = f"nn.{type(module).__name__}({got}, {module.out_channels}, ...)"
    fixes.append(
        (
            ReplaceModule(
                summary=f"build '{layer.path}' for {got} input channels",
                code=new_code,
                path=layer.path,
                make=lambda: _resized(module, got),
            ),
            0.9,
        )
    )
    last = channel_dim == 1 and x[-1] == want
    return [
        Finding("conv-in-channels", layer.path, body, fix, score - (0.3 if last else 0))
        for fix, score in fixes
    ]
