"""``norm-features``: a normalisation layer built for other features than it receives.

BatchNorm/InstanceNorm ``num_features``, LayerNorm ``normalized_shape`` and GroupNorm
``num_channels`` against the input; BatchNorm in training with one value per channel.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

from torch import nn

from .._changes import Build, EditInput, Fix, ReplaceModule, RouteByRank, TensorOp
from .._records import Layer
from .._text import shape
from ._context import Context, Finding
from ._registry import layer_rule
from ._words import layer_finding

__all__ = ["norm_features"]

_Batch = nn.modules.batchnorm._BatchNorm
_Instance = nn.modules.instancenorm._InstanceNorm
# accepted input ranks: BatchNorm1d (N, C) or (N, C, L); InstanceNorm also unbatched
_RANKS: dict[type[nn.Module], tuple[int, ...]] = {
    nn.BatchNorm1d: (2, 3),
    nn.BatchNorm2d: (4,),
    nn.BatchNorm3d: (5,),
    nn.InstanceNorm1d: (2, 3),
    nn.InstanceNorm2d: (3, 4),
    nn.InstanceNorm3d: (4, 5),
}
_BY_RANK = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _assigned_twice(ctx: Context, path: str) -> bool:
    """True when the owner's ``__init__`` assigns ``self.<name> =`` more than once."""
    owner_path, _, name = path.rpartition(".")
    try:
        owner = ctx.model.get_submodule(owner_path)
        source = inspect.getsource(type(owner).__init__)
    except (AttributeError, OSError, TypeError):
        return False
    return len(re.findall(rf"self\.{re.escape(name)}\s*=[^=]", source)) > 1


@layer_rule("norm-features", _Batch, _Instance, nn.LayerNorm, nn.GroupNorm)
def norm_features(ctx: Context, layer: Layer, module: Any) -> list[Finding]:
    """A norm layer whose size or rank does not fit its input, or BatchNorm on one sample."""
    x = layer.inputs[0].shape
    if isinstance(module, (_Batch, _Instance)):
        return _batch_norm(ctx, layer, module, x)
    if isinstance(module, nn.LayerNorm):
        return _layer_norm(ctx, layer, module, x)
    return _group_norm(ctx, layer, module, x)


def _batch_norm(ctx: Context, layer: Layer, module: nn.Module, x: tuple[int, ...]) -> list[Finding]:
    ranks = _RANKS.get(type(module), ())
    if ranks and len(x) not in ranks:
        return [_wrong_rank(ctx, layer, module, x, ranks)]
    channel = (
        1 if len(x) >= 2 and not (isinstance(module, _Instance) and len(x) == min(ranks)) else 0
    )
    features = x[channel]
    if features != module.num_features:
        return [_wrong_features(ctx, layer, module, x, features)]
    per_channel = math.prod(x) // max(features, 1)
    if isinstance(module, _Batch) and module.training and per_channel == 1:
        return [_one_sample(ctx, layer, module, x)]
    return []


def _wrong_rank(
    ctx: Context, layer: Layer, module: nn.Module, x: tuple[int, ...], ranks: tuple[int, ...]
) -> Finding:
    cls = _BY_RANK.get(len(x), nn.BatchNorm1d)
    channels = x[1] if len(x) > 1 else x[0]
    name = type(module).__name__
    twice = _assigned_twice(ctx, layer.path)
    attr = layer.path.rpartition(".")[2]
    cause = (
        f"{name} takes {' or '.join(f'{r}-D' for r in ranks)} input; this "
        f"{len(x)}-D input with {channels} channels needs {cls.__name__}({channels})"
    )
    arithmetic = (
        (
            f"  self.{attr} is assigned twice in __init__: the later "
            f"{name}({module.num_features}) replaced the layer meant for this call",
        )
        if twice
        else ()
    )
    code = f"self.{attr} = nn.{cls.__name__}({channels})"
    code += f"   # and give the {name} its own name" if twice else ""
    fix = RouteByRank(
        summary=f"use nn.{cls.__name__}({channels}) for this {len(x)}-D input",
        code=code,
        path=layer.path,
        build=Build(cls.__name__, (channels,)),
        rank=len(x),
    )
    expected = f"{' or '.join(f'{r}-D' for r in ranks)} input   {layer.summary}"
    return layer_finding(ctx, layer, expected, cause, fix, arithmetic=arithmetic)


def _wrong_features(
    ctx: Context, layer: Layer, module: Any, x: tuple[int, ...], features: int
) -> Finding:
    name = type(module).__name__
    new = Build(
        name,
        (features,),
        (
            ("eps", module.eps),
            ("momentum", module.momentum),
            ("affine", module.affine),
            ("track_running_stats", module.track_running_stats),
        ),
    )
    expected = f"(N, {module.num_features}, ...)   num_features={module.num_features}"
    cause = f"the input has {features} channels at dim 1, not num_features={module.num_features}"
    calls = [e for e in ctx.layers[: layer.index] if e.kind == "module" and e.path == layer.path]
    shared = any(e.inputs and e.inputs[0].shape[1:2] == (module.num_features,) for e in calls)
    arithmetic = (
        (
            f"  '{layer.path}' is one {name}({module.num_features}) used at "
            f"{len(calls) + 1} places: its call {len(calls) + 1} gets {features} channels",
        )
        if shared
        else ()
    )
    own = f"give this call its own {name}({features})"
    fix = RouteByRank(
        summary=own if calls else f"size '{layer.path}' for {features} features",
        code=f"nn.{name}({features})" + ("   # a new layer for this call" if calls else ""),
        path=layer.path,
        build=new,
        rank=len(x),
        channels=features if calls else 0,
    )
    return layer_finding(ctx, layer, expected, cause, fix, arithmetic=arithmetic)


def _one_sample(ctx: Context, layer: Layer, module: nn.Module, x: tuple[int, ...]) -> Finding:
    expected = "more than 1 value per channel   (BatchNorm in training mode)"
    cause = (
        f"{type(module).__name__} in training mode computes batch statistics; "
        f"{shape(x)} holds 1 value per channel (a last batch of 1 sample?)"
    )
    position = ctx.inputs[0].model_input if ctx.inputs else None
    code = (
        "DataLoader(..., drop_last=True)   # never a 1-sample training batch; "
        "or model.eval() to predict one sample"
    )
    if position is None:
        return layer_finding(
            ctx, layer, expected, cause, Fix(summary="drop 1-sample batches", code=code)
        )
    fix = EditInput(
        summary="train on batches of ≥ 2 samples (checked with a batch of 2)",
        code=code,
        position=position,
        ops=(TensorOp("repeat_interleave", (2,), (("dim", 0),)),),
    )
    return layer_finding(ctx, layer, expected, cause, fix)


def _layer_norm(
    ctx: Context, layer: Layer, module: nn.LayerNorm, x: tuple[int, ...]
) -> list[Finding]:
    want = tuple(module.normalized_shape)
    if x[-len(want) :] == want or len(x) < len(want):
        return []
    got = x[-len(want) :]
    expected = f"(*, {', '.join(map(str, want))})   normalized_shape={want}"
    cause = f"LayerNorm normalises the trailing dims {shape(got)}, not {shape(want)}"
    arg = got[0] if len(got) == 1 else got
    new = Build(
        "LayerNorm",
        (arg,),
        (("eps", module.eps), ("elementwise_affine", module.elementwise_affine)),
    )
    fix = ReplaceModule(
        summary=f"size '{layer.path}' for the trailing dims {shape(got)}",
        code=f"nn.LayerNorm({arg})",
        path=layer.path,
        build=new,
    )
    return [layer_finding(ctx, layer, expected, cause, fix)]


def _group_norm(
    ctx: Context, layer: Layer, module: nn.GroupNorm, x: tuple[int, ...]
) -> list[Finding]:
    if len(x) < 2 or x[1] == module.num_channels:
        return []
    channels = x[1]
    groups = math.gcd(module.num_groups, channels)
    expected = f"(N, {module.num_channels}, ...)   num_channels={module.num_channels}"
    cause = f"the input has {channels} channels at dim 1, not num_channels={module.num_channels}"
    new = Build("GroupNorm", (groups, channels), (("eps", module.eps), ("affine", module.affine)))
    fix = ReplaceModule(
        summary=f"size '{layer.path}' for {channels} channels",
        code=f"nn.GroupNorm({groups}, {channels})",
        path=layer.path,
        build=new,
    )
    return [layer_finding(ctx, layer, expected, cause, fix)]
