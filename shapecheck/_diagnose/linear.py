"""Rules for a Linear that cannot take its input: ``missing-flatten``, ``linear-in-features``."""

from __future__ import annotations

import math

from torch import nn

from .._changes import Build, EditLayerInput, Fix, InsertModule, ReplaceModule, TensorOp
from .._describe import module_code
from .._records import Layer
from .._source import code_line
from .._text import short
from .._variable import for_variable
from ._context import Context, Finding
from ._registry import layer_rule
from ._words import layer_finding

__all__ = ["linear_in_features", "missing_flatten"]

_FLATTEN = (TensorOp("flatten", (1,)),)


def _product(dims: tuple[int, ...]) -> str:
    return "*".join(str(d) for d in dims)


def _expected(module: nn.Linear) -> str:
    n = module.in_features
    return f"(*, {n})       last dim must equal in_features={n}"


def _flatten_fix(ctx: Context, layer: Layer) -> Fix:
    slot = ctx.sequential_slot(layer.path)
    if slot is not None:
        seq_path, index, seq = slot
        before = f"{module_code(seq[index - 1])}, " if index > 0 else ""
        inside = f" of '{seq_path}'" if seq_path else ""
        return InsertModule(
            summary=f"insert nn.Flatten() at index {index}{inside}",
            code=f"nn.Sequential(..., {before}nn.Flatten(), {module_code(seq[index])}, ...)",
            sequential=seq_path,
            index=index,
            build=Build("Flatten"),
        )
    source = ctx.failure.source if ctx.failure else None
    line = code_line(source)
    attr = layer.path.rpartition(".")[2]
    at = f"   # before {short(source)}: {line}" if line else ""
    return EditLayerInput(
        summary=f"flatten the input before calling self.{attr}",
        code=for_variable("x = torch.flatten(x, 1)", line, attr) + at,
        path=layer.path,
        ops=_FLATTEN,
    )


@layer_rule("missing-flatten", nn.Linear)
def missing_flatten(ctx: Context, layer: Layer, module: nn.Linear) -> list[Finding]:
    """A Linear got a 3+-D input whose trailing dims multiply to exactly in_features."""
    assert ctx.failure is not None
    x = layer.inputs[0].shape
    if len(x) < 3 or math.prod(x[1:]) != module.in_features:
        return []
    cause = (
        f"a {len(x)}-D feature map reached Linear unflattened; "
        f"{_product(x[1:])} = {module.in_features} = in_features"
    )
    return [layer_finding(ctx, layer, _expected(module), cause, _flatten_fix(ctx, layer))]


def _resized(module: nn.Linear, in_features: int) -> Build:
    return Build("Linear", (in_features, module.out_features), (("bias", module.bias is not None),))


@layer_rule("linear-in-features", nn.Linear)
def linear_in_features(ctx: Context, layer: Layer, module: nn.Linear) -> list[Finding]:
    """A Linear whose in_features differs from the features it actually receives."""
    x = layer.inputs[0].shape
    image_like = len(x) >= 4
    features = math.prod(x[1:]) if image_like else x[-1]
    if features == module.in_features:
        return []
    arithmetic = f"{_product(x[1:])} = {features}" if image_like else f"{features}"
    slot = ctx.sequential_slot(layer.path)
    at = f" at index {slot[1]}" if slot else f" for '{layer.path}'"
    new_code = f"nn.Linear({features}, {module.out_features})"
    summary = f"use {new_code}{at} (or nn.LazyLinear({module.out_features}), which infers it)"
    linear = _resized(module, features)
    fix = ReplaceModule(
        summary=summary + (", after flattening" if image_like else ""),
        code=new_code + ("  # after x.flatten(1)" if image_like else ""),
        path=layer.path,
        build=Build("Sequential", (Build("Flatten"), linear)) if image_like else linear,
    )
    cause = f"the features reaching it are {arithmetic}, not in_features={module.in_features}"
    return [layer_finding(ctx, layer, _expected(module), cause, fix, score=0.8)]
