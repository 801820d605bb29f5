"""``attention-dim``: MultiheadAttention given another embedding size, layout or key shape."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from .._changes import Build, EditLayerInput, Fix, ReplaceModule, SetAttributes, TensorOp
from .._records import Layer
from .._text import shape
from ._context import Context, Finding
from ._entry import at_entry
from ._registry import layer_rule
from ._words import layer_finding

__all__ = ["attention_dim", "batch_first_flipped"]


def batch_first_flipped(path: str, module: nn.RNNBase | nn.MultiheadAttention) -> SetAttributes:
    """The same layer, same weights, reading its input the other way round."""
    flipped = not module.batch_first
    return SetAttributes(
        summary=f"set batch_first={flipped}",
        code=f"nn.{type(module).__name__}(..., batch_first={flipped})",
        path=path,
        values=(("batch_first", flipped),),
    )


@layer_rule("attention-dim", nn.MultiheadAttention)
def attention_dim(ctx: Context, layer: Layer, module: nn.MultiheadAttention) -> list[Finding]:
    """Query/key/value sizes against embed_dim, kdim/vdim and batch_first."""
    q = layer.inputs[0].shape
    if q[-1] != module.embed_dim:
        return _embed(ctx, layer, module, q)
    if len(layer.inputs) >= 3:
        k, v = layer.inputs[1].shape, layer.inputs[2].shape
        if k[-1] != module.kdim or v[-1] != module.vdim:
            return [_key_value(ctx, layer, module, k, v)]
    return _layout(ctx, layer, module, q)


def _embed(
    ctx: Context, layer: Layer, module: nn.MultiheadAttention, q: tuple[int, ...]
) -> list[Finding]:
    e = module.embed_dim
    layout = "(N, L, E)" if module.batch_first else "(L, N, E)"
    expected = f"{layout} with E = embed_dim = {e}"
    if len(q) == 2 and q[-1] % e == 0 and q[-1] > e:
        steps = q[-1] // e
        cause = (
            f"the last dim {q[-1]} = {steps}*{e}: a sequence of {steps} tokens of {e} "
            "features was flattened into one vector per sample"
        )
        if not module.batch_first:
            cause += (
                f"; this layer has batch_first=False, so (N, {steps}, {e}) also needs "
                "batch_first=True"
            )
        unflatten = (TensorOp("unflatten", (-1, (steps, e))),)
        fix = at_entry(
            ctx,
            layer,
            unflatten,
            f"x = x.view(x.size(0), {steps}, {e})",
            f"unflatten the input into {shape((q[0], steps, e))}",
        )
        return [layer_finding(ctx, layer, expected, cause, _with_key_value(fix, layer, q))]
    cause = f"the last dim of the query is {q[-1]}, not embed_dim={e}"
    project = Fix(summary=f"project the features to {e} first", code=f"nn.Linear({q[-1]}, {e})")
    return [
        layer_finding(ctx, layer, expected, cause, _resized(layer, module, q[-1]), score=0.9),
        layer_finding(ctx, layer, expected, cause, project, score=0.85),
    ]


def _resized(layer: Layer, module: nn.MultiheadAttention, features: int) -> Fix:
    """The attention built for the features it is given (heads: the most that divide them)."""
    heads = max(h for h in range(1, module.num_heads + 1) if features % h == 0)
    options = (
        ("dropout", module.dropout),
        ("bias", module.in_proj_bias is not None),
        ("batch_first", module.batch_first),
    )
    code = f"nn.MultiheadAttention({features}, {heads}" + (
        ", batch_first=True)" if module.batch_first else ")"
    )
    return ReplaceModule(
        summary=f"build the attention for {features} features",
        code=code,
        path=layer.path,
        build=Build("MultiheadAttention", (features, heads), options),
    )


def _with_key_value(fix: Fix, layer: Layer, q: tuple[int, ...]) -> Fix:
    """An edit on the attention itself reshapes only its first argument (the query): in
    ``attn(x, x, x)`` the key and value are the same flattened tensor and need it too."""
    if not isinstance(fix, EditLayerInput) or fix.path != layer.path:
        return fix
    return replace(fix, every_like=q)


def _key_value(
    ctx: Context,
    layer: Layer,
    module: nn.MultiheadAttention,
    k: tuple[int, ...],
    v: tuple[int, ...],
) -> Finding:
    expected = f"key (*, {module.kdim}), value (*, {module.vdim})   kdim, vdim"
    cause = (
        f"key {shape(k)} and value {shape(v)} do not end in kdim={module.kdim}, vdim={module.vdim}"
    )
    new = Build(
        "MultiheadAttention",
        (module.embed_dim, module.num_heads),
        (("kdim", k[-1]), ("vdim", v[-1]), ("batch_first", module.batch_first)),
    )
    fix = ReplaceModule(
        summary="build the attention for these key/value sizes",
        code=f"nn.MultiheadAttention({module.embed_dim}, {module.num_heads}, "
        f"kdim={k[-1]}, vdim={v[-1]})",
        path=layer.path,
        build=new,
    )
    return layer_finding(ctx, layer, expected, cause, fix)


def _layout(
    ctx: Context, layer: Layer, module: nn.MultiheadAttention, q: tuple[int, ...]
) -> list[Finding]:
    """Right sizes, wrong order: batch_first flipped makes the sequences line up."""
    if len(q) != 3 or q[0] == q[1]:
        return []
    layout = "(N, L, E)" if module.batch_first else "(L, N, E)"
    order = "batch, sequence" if module.batch_first else "sequence, batch"
    cause = (
        f"dims 0 and 1 of {shape(q)} are read as {order}; the other tensors (key, value, "
        "masks) are laid out the other way"
    )
    return [
        layer_finding(
            ctx,
            layer,
            f"{layout}   batch_first={module.batch_first}",
            cause,
            batch_first_flipped(layer.path, module),
            score=0.8,
        )
    ]
