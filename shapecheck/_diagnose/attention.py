"""``attention-dim``: MultiheadAttention given another embedding size, layout or key shape."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._fixes import Fix, ReplaceModule, WrapModuleArgs, WrapModuleInput, batch_first_flipped
from .._records import Layer
from .._text import shape
from ._context import Context, Finding
from ._entry import at_entry
from ._words import layer_message

__all__ = ["attention_dim"]


def attention_dim(ctx: Context) -> list[Finding]:
    """Query/key/value sizes against embed_dim, kdim/vdim and batch_first."""
    layer, failure = ctx.failed_layer(), ctx.failure
    module = ctx.module(layer) if layer is not None else None
    if layer is None or failure is None or not isinstance(module, nn.MultiheadAttention):
        return []
    if len(layer.inputs) < 1:
        return []
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
    expected = f"  expected  {layout} with E = embed_dim = {e}"
    if len(q) == 2 and q[-1] % e == 0 and q[-1] > e:
        steps = q[-1] // e
        cause = (
            f"cause: the last dim {q[-1]} = {steps}*{e}: a sequence of {steps} tokens of "
            f"{e} features was flattened into one vector per sample"
        )
        if not module.batch_first:
            cause += (
                f"; this layer has batch_first=False, so (N, {steps}, {e}) "
                "also needs batch_first=True"
            )
        code = f"x = x.view(x.size(0), {steps}, {e})"
        fix = _with_key_value(
            at_entry(
                ctx,
                layer,
                lambda t: t.view(t.shape[0], steps, e),
                code,
                f"unflatten the input into {shape((q[0], steps, e))}",
            ),
            layer,
            q,
        )
        return [
            Finding(
                "attention-dim", layer.path, layer_message(ctx, layer, expected, cause), fix, 1.0
            )
        ]
    body = layer_message(ctx, layer, expected, f"cause: the last dim of the query is {q[-1]}, "
                         f"not embed_dim={e}")  # fmt: skip
    project = Fix(summary=f"project the features to {e} first", code=f"nn.Linear({q[-1]}, {e})")
    return [
        Finding("attention-dim", layer.path, body, _resized(layer, module, q[-1]), 0.9),
        Finding("attention-dim", layer.path, body, project, 0.85),
    ]


def _resized(layer: Layer, module: nn.MultiheadAttention, features: int) -> Fix:
    """The attention built for the features it is given (heads: the most that divide them)."""
    heads = max(h for h in range(1, module.num_heads + 1) if features % h == 0)
    new = nn.MultiheadAttention(features, heads, dropout=module.dropout,
                                bias=module.in_proj_bias is not None,
                                batch_first=module.batch_first)  # fmt: skip
    return ReplaceModule(
        summary=f"build the attention for {features} features",
        code=f"nn.MultiheadAttention({features}, {heads}"
        + (", batch_first=True)" if module.batch_first else ")"),
        path=layer.path,
        make=lambda: new,
    )


def _with_key_value(fix: Fix, layer: Layer, q: tuple[int, ...]) -> Fix:
    """A wrap on the attention itself reshapes only its first argument (the query): in
    ``attn(x, x, x)`` the key and value are the same flattened tensor and need it too."""
    if not isinstance(fix, WrapModuleInput) or fix.path != layer.path:
        return fix
    transform = fix.transform

    def each(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        def one(t: Any) -> Any:
            same = isinstance(t, torch.Tensor) and t.is_floating_point() and tuple(t.shape) == q
            return transform(t) if same else t

        return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}

    return WrapModuleArgs(summary=fix.summary, code=fix.code, path=fix.path, transform=each)


def _key_value(
    ctx: Context,
    layer: Layer,
    module: nn.MultiheadAttention,
    k: tuple[int, ...],
    v: tuple[int, ...],
) -> Finding:
    expected = f"  expected  key (*, {module.kdim}), value (*, {module.vdim})   kdim, vdim"
    cause = (
        f"cause: key {shape(k)} and value {shape(v)} do not end in "
        f"kdim={module.kdim}, vdim={module.vdim}"
    )
    new = nn.MultiheadAttention(
        module.embed_dim, module.num_heads, kdim=k[-1], vdim=v[-1], batch_first=module.batch_first
    )
    fix = ReplaceModule(
        summary="build the attention for these key/value sizes",
        code=f"nn.MultiheadAttention({module.embed_dim}, {module.num_heads}, "
        f"kdim={k[-1]}, vdim={v[-1]})",
        path=layer.path,
        make=lambda: new,
    )
    return Finding(
        "attention-dim", layer.path, layer_message(ctx, layer, expected, cause), fix, 1.0
    )


def _layout(
    ctx: Context, layer: Layer, module: nn.MultiheadAttention, q: tuple[int, ...]
) -> list[Finding]:
    """Right sizes, wrong order: batch_first flipped makes the sequences line up."""
    if len(q) != 3 or q[0] == q[1]:
        return []
    layout = "(N, L, E)" if module.batch_first else "(L, N, E)"
    expected = f"  expected  {layout}   batch_first={module.batch_first}"
    cause = (
        f"cause: dims 0 and 1 of {shape(q)} are read as "
        f"{'batch, sequence' if module.batch_first else 'sequence, batch'}; the other "
        "tensors (key, value, masks) are laid out the other way"
    )
    fix = batch_first_flipped(layer.path, module)
    return [
        Finding("attention-dim", layer.path, layer_message(ctx, layer, expected, cause), fix, 0.8)
    ]
