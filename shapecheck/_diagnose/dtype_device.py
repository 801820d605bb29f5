"""``dtype`` and ``device``: tensors that meet with different dtypes or on different devices."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .._fixes import ConvertModel, Fix, SetAttribute, Together, TransformInput
from .._records import Layer, TensorInfo
from .._text import shape
from ._context import Context, Finding
from ._entry import at_entry, owner_of
from ._words import headline, pytorch_line

__all__ = ["device", "dtype", "unregistered_modules"]

_FLOATS = ("float16", "bfloat16", "float32", "float64")
_CASTS = {
    "float16": "half",
    "bfloat16": "bfloat16",
    "float32": "float",
    "float64": "double",
    "int64": "long",
    "int32": "int",
}


def _param_dtype(module: nn.Module | None) -> str | None:
    """The dtype of the module's own floating-point parameters (None when it has none)."""
    if module is None:
        return None
    for p in module.parameters(recurse=False):
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return None


def _cast(name: str) -> str:
    return f".{_CASTS[name]}()" if name in _CASTS else f".to(torch.{name})"


def _want_for(module: nn.Module | None, info: TensorInfo) -> str | None:
    """The dtype ``module`` needs for its first input, when ``info`` does not have it."""
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return None if info.dtype in ("int64", "int32") else "int64"
    weight = _param_dtype(module)
    if weight is not None and info.dtype != weight:
        return weight
    return None


def _evidence(layer: Layer, params: str | None) -> list[str]:
    got = "  got       " + "  ".join(f"{shape(t.shape)} {t.dtype}" for t in layer.inputs[:3])
    lines = [got]
    if params is not None:
        lines.append(f"  expected  {params}   the dtype of the layer's weights")
    return lines


def dtype(ctx: Context) -> list[Finding]:
    """A layer whose input dtype differs from its weights' (or integer ids it needs)."""
    layer, failure = ctx.failed_layer(), ctx.failure
    if layer is None or failure is None or not layer.inputs or layer.path == "loss":
        return []
    module = ctx.module(layer) if layer.kind == "module" else None
    want = _want_for(module, layer.inputs[0]) if module is not None else _function_want(layer)
    if want is None:
        return []
    got = layer.inputs[0].dtype
    hint = " / 255" if got == "uint8" and want in _FLOATS else ""
    code = f"x = x{_cast(want)}{hint}"
    target = getattr(torch, want)
    fix = at_entry(ctx, layer, lambda t: t.to(target), code, f"cast the input to {want}")
    where = layer if layer.kind == "module" else owner_of(ctx, layer) or layer
    body = "\n".join(
        [
            headline(
                where,
                f"cannot take {got} input"
                if layer.kind == "module"
                else f"mixes dtypes in '{layer.summary}'",
            ),
            *_evidence(layer, want),
            pytorch_line(failure),
            f"cause: {got} meets {want}; PyTorch never converts between them implicitly",
        ]
    )
    findings = [Finding("dtype", where.path, body, fix, 1.0)]
    if want in _FLOATS and got in _FLOATS and type(fix) is TransformInput:
        findings.append(Finding("dtype", where.path, body, _model_cast(got), 0.9))
    return findings


def _function_want(layer: Layer) -> str | None:
    """For a functional op: the floating dtype of its other inputs, when the first differs."""
    floats = [t.dtype for t in layer.inputs if t.dtype in _FLOATS]
    others = set(floats[1:])
    if len(set(floats)) > 1 and len(others) == 1 and floats[0] not in others:
        return others.pop()
    return None


def _model_cast(dtype_name: str) -> Fix:
    target = getattr(torch, dtype_name)
    return ConvertModel(
        summary=f"convert the model to {dtype_name} instead",
        code=f"model = model{_cast(dtype_name)}",
        convert=lambda model: model.to(target),
    )


def unregistered_modules(model: nn.Module) -> list[tuple[str, str, Any]]:
    """(owner path, attribute, container) for modules kept in plain lists/tuples/dicts."""
    found = []
    for path, module in model.named_modules():
        for name, value in vars(module).items():
            items = value.values() if isinstance(value, dict) else value
            if name.startswith("_") or not isinstance(value, (list, tuple, dict)):
                continue
            if any(isinstance(item, nn.Module) for item in items):
                found.append((path, name, value))
    return found


def _device_of(container: Any) -> set[str]:
    items = container.values() if isinstance(container, dict) else container
    return {str(p.device) for m in items if isinstance(m, nn.Module) for p in m.parameters()}


def _registered(container: Any, device: torch.device) -> nn.Module:
    def moved(m: nn.Module) -> nn.Module:
        m = copy.deepcopy(m)
        on_meta = any(p.is_meta for p in m.parameters())
        return m.to_empty(device=device) if on_meta else m.to(device)

    if isinstance(container, dict):
        return nn.ModuleDict({k: moved(v) for k, v in container.items()})
    return nn.ModuleList([moved(m) for m in container])


def _data_device(ctx: Context) -> torch.device | None:
    """Where the first input lives (a dry run's shape-only ``meta`` input: where it ran)."""
    from .._inputs import tensors_in

    tensors = tensors_in((ctx.args, ctx.kwargs))
    if not tensors or not ctx.trace.inputs:
        return None
    meta = tensors[0].device.type == "meta" and ctx.trace.dry_run
    return torch.device(ctx.trace.inputs[0].device) if meta else tensors[0].device


def _seen_devices(ctx: Context, layer: Layer | None) -> dict[str, list[str]]:
    """device -> what sits there (inputs of the failing call, and its module's weights)."""
    seen: dict[str, list[str]] = {}
    infos = layer.inputs if layer is not None else ()
    for i, t in enumerate(infos[:4]):
        seen.setdefault(t.device, []).append(f"input {i} {shape(t.shape)}")
    module = ctx.module(layer) if layer is not None and layer.kind == "module" else None
    for name, p in module.named_parameters() if module is not None else ():
        # a dry run with a device ran every registered weight there, whatever its own device
        where = ctx.trace.weights_on or str(p.device)
        seen.setdefault(where, []).append(f"{name} {shape(tuple(p.shape))}")
    return seen


def device(ctx: Context) -> list[Finding]:
    """Tensors on different devices: unregistered layers, inputs or weights left behind."""
    failure, layer = ctx.failure, ctx.failed_layer()
    home = _data_device(ctx)
    seen = _seen_devices(ctx, layer)
    if failure is None or home is None or len(seen) < 2:
        return []
    loose = unregistered_modules(ctx.model)
    stray = loose if any(_device_of(c) - {str(home)} for _, _, c in loose) else []
    where = (owner_of(ctx, layer) if layer is not None else None) or layer
    head = f"'{where.path}' ({where.type})" if where is not None else "the forward"
    evidence = [f"  {dev:<9} {', '.join(items)}" for dev, items in seen.items()]
    lines = [
        f"{head} mixes devices"
        + (f" in '{layer.summary}'" if layer and layer.kind == "function" else ""),
        *evidence,
        f"  data      {home} (the model's inputs)",
        pytorch_line(failure),
    ]
    if stray:
        return [_stray_finding(ctx, lines, stray, home, where)]
    return _moved_findings(ctx, layer, lines, home, seen)


def _stray_finding(
    ctx: Context,
    lines: list[str],
    stray: list[tuple[str, str, Any]],
    home: torch.device,
    where: Layer | None,
) -> Finding:
    names = ", ".join(f"self.{a}" for _, a, _ in stray)
    kinds = sorted(
        {type(m).__name__ for _, _, c in stray for m in (c.values() if isinstance(c, dict) else c)}
    )
    lines.append(
        f"cause: {names} is a plain Python {type(stray[0][2]).__name__} of "
        f"{'/'.join(kinds)}; modules there are not registered, so model.to(device) "
        f"and model.parameters() never see them (they sit on "
        f"{', '.join(sorted(set().union(*(_device_of(c) for _, _, c in stray))))})"
    )
    parts = tuple(
        SetAttribute(summary="", code="", owner=o, name=a, make=lambda old: _registered(old, home))
        for o, a, _ in stray
    )
    kind = "ModuleDict" if isinstance(stray[0][2], dict) else "ModuleList"
    code = "; ".join(f"self.{a} = nn.{kind}({a})" for _, a, _ in stray)
    fix = Together(
        summary=f"register them with nn.{kind}, then move the whole model with model.to(device)",
        code=code,
        parts=parts,
    )
    return Finding("device", where.path if where else "", "\n".join(lines), fix, 1.0)


def _moved_findings(
    ctx: Context,
    layer: Layer | None,
    lines: list[str],
    home: torch.device,
    seen: dict[str, list[str]],
) -> list[Finding]:
    others = [d for d in seen if d != str(home)]
    path = layer.path if layer is not None else ""
    lines.append(
        f"cause: the model's weights or tensors it creates sit on {', '.join(others)}, "
        f"its inputs on {home}"
    )
    body = "\n".join(lines)
    move = ConvertModel(
        summary=f"move the whole model to the data's device {home}",
        code=f"model = model.to({str(home)!r})",
        convert=lambda m: _moved_model(m, home),
    )
    findings = [Finding("device", path, body, move, 0.95)]
    if layer is not None and len(others) == 1:
        weights = torch.device(others[0])
        fix = at_entry(
            ctx,
            layer,
            lambda t: t.to(weights),
            f"x = x.to({others[0]!r})",
            f"move the input to {others[0]}",
        )
        findings.append(Finding("device", path, body, fix, 0.9))
    return findings


def _moved_model(model: nn.Module, home: torch.device) -> nn.Module:
    on_meta = any(p.is_meta for p in model.parameters())
    return model.to_empty(device=home) if on_meta and home.type != "meta" else model.to(home)
