"""Rules for a Linear that cannot take its input: ``missing-flatten``, ``linear-in-features``."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._describe import module_code
from .._fixes import Fix, InsertModule, ReplaceModule, WrapModuleInput
from .._records import Layer
from .._source import code_line, short
from ._context import Context, Finding
from ._words import got_line, headline, pytorch_line

__all__ = ["linear_in_features", "missing_flatten"]


def _failing_linear(ctx: Context) -> tuple[Layer, nn.Linear] | None:
    layer = ctx.failed_layer()
    if layer is None or layer.kind != "module" or not layer.inputs:
        return None
    module = ctx.module(layer)
    if not isinstance(module, nn.Linear) or isinstance(module, nn.LazyLinear):
        return None
    return layer, module


def _product(dims: tuple[int, ...]) -> str:
    return "*".join(str(d) for d in dims)


def _expected_line(module: nn.Linear) -> str:
    n = module.in_features
    return f"  expected  (*, {n})       last dim must equal in_features={n}"


def _flatten_fix(ctx: Context, layer: Layer, producer: Layer | None) -> Fix:
    slot = ctx.sequential_slot(layer.path)
    if slot is not None:
        seq_path, index, seq = slot
        before = f"{module_code(seq[index - 1])}, " if index > 0 else ""
        inside = f" of '{seq_path}'" if seq_path else ""
        return InsertModule(
            summary=f"insert nn.Flatten() at index {index}{inside}",
            code=f"nn.Sequential(..., {before}nn.Flatten(), {module_code(seq[index])}, ...)",
            sequential_path=seq_path, index=index, make=nn.Flatten,
        )  # fmt: skip
    source = ctx.failure.source if ctx.failure else None
    line = code_line(source)
    attr = layer.path.rpartition(".")[2]
    at = f"   # before {short(source)}: {line}" if line else ""
    return WrapModuleInput(
        summary=f"flatten the input before calling self.{attr}",
        code=f"x = torch.flatten(x, 1){at}",
        path=layer.path, transform=lambda t: torch.flatten(t, 1),
    )  # fmt: skip


def missing_flatten(ctx: Context) -> list[Finding]:
    """A Linear got a 3+-D input whose trailing dims multiply to exactly in_features."""
    found = _failing_linear(ctx)
    if found is None or ctx.failure is None:
        return []
    layer, module = found
    x = layer.inputs[0].shape
    if len(x) < 3 or math.prod(x[1:]) != module.in_features:
        return []
    producer = ctx.producer(layer)
    body = "\n".join([
        headline(layer), got_line(layer, producer), _expected_line(module),
        pytorch_line(ctx.failure),
        f"cause: a {len(x)}-D feature map reached Linear unflattened; "
        f"{_product(x[1:])} = {module.in_features} = in_features",
    ])  # fmt: skip
    return [Finding("missing-flatten", layer.path, body, _flatten_fix(ctx, layer, producer), 1.0)]


def _resized(module: nn.Linear, in_features: int) -> nn.Linear:
    return nn.Linear(in_features, module.out_features, bias=module.bias is not None)


def linear_in_features(ctx: Context) -> list[Finding]:
    """A Linear whose in_features differs from the features it actually receives."""
    found = _failing_linear(ctx)
    if found is None or ctx.failure is None:
        return []
    layer, module = found
    x = layer.inputs[0].shape
    image_like = len(x) >= 4
    features = math.prod(x[1:]) if image_like else x[-1]
    if features == module.in_features:
        return []
    producer = ctx.producer(layer)
    arithmetic = f"{_product(x[1:])} = {features}" if image_like else f"{features}"
    slot = ctx.sequential_slot(layer.path)
    at = f" at index {slot[1]}" if slot else f" for '{layer.path}'"
    new_code = f"nn.Linear({features}, {module.out_features})"
    summary = f"use {new_code}{at} (or nn.LazyLinear({module.out_features}), which infers it)"
    fix = ReplaceModule(
        summary=summary + (", after flattening" if image_like else ""),
        code=new_code + ("  # after x.flatten(1)" if image_like else ""),
        path=layer.path,
        make=lambda: nn.Sequential(nn.Flatten(), _resized(module, features))
        if image_like else _resized(module, features),
    )  # fmt: skip
    body = "\n".join([
        headline(layer), got_line(layer, producer), _expected_line(module),
        pytorch_line(ctx.failure),
        f"cause: the features reaching it are {arithmetic}, not in_features={module.in_features}",
    ])  # fmt: skip
    return [Finding("linear-in-features", layer.path, body, fix, 0.8)]
