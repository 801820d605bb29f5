"""``dtype`` and ``device``: tensors that meet with different dtypes or on different devices."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._changes import ConvertModel, Fix, RegisterModules, TensorOp, Together
from .._records import Evidence, Failure, Layer, TensorInfo
from .._text import shape
from ._context import Context, Finding
from ._entry import at_entry, owner_of
from ._registry import failure_rule
from ._words import headline, pytorch

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


def _evidence(layer: Layer, params: str | None) -> list[Evidence]:
    found: list[Evidence] = [
        ("got", "  ".join(f"{shape(t.shape)} {t.dtype}" for t in layer.inputs[:3]))
    ]
    if params is not None:
        found.append(("expected", f"{params}   the dtype of the layer's weights"))
    return found


@failure_rule("dtype")
def dtype(ctx: Context) -> list[Finding]:
    """A layer whose input dtype differs from its weights' (or integer ids it needs), or an
    integer tensor into an op that works on floats only."""
    layer, failure = ctx.failed_layer(), ctx.failure
    if layer is None or failure is None or not layer.inputs or layer.path == "loss":
        return []
    module = ctx.module(layer) if layer.kind == "module" else None
    want = _want_for(module, layer.inputs[0]) if module is not None else _function_want(layer)
    floats = None if want else _float_for_integers(ctx, layer.inputs[0], failure.message)
    want = want or floats
    if want is None:
        return []
    got = layer.inputs[0].dtype
    image = got == "uint8" and want in _FLOATS  # 0..255 pixels: scale them as they are cast
    ops = (TensorOp("to", (want,)), *((TensorOp("div", (255,)),) if image else ()))
    code = f"x = x{_cast(want)}" + (" / 255" if image else "")
    fix = at_entry(ctx, layer, ops, code, f"cast the input to {want}")
    owner = layer if layer.kind == "module" else owner_of(ctx, layer) or layer
    if floats is not None:
        return [_integers(layer, owner, failure, fix, want)]
    verb = (
        f"cannot take {got} input"
        if layer.kind == "module"
        else f"mixes dtypes in '{layer.summary}'"
    )
    evidence = (*_evidence(layer, want), pytorch(failure))
    cause = f"{got} meets {want}; PyTorch never converts between them implicitly"
    findings = [Finding(owner.path, headline(owner, verb), evidence, cause, fix)]
    if want in _FLOATS and got in _FLOATS and fix.edits == "the input":
        findings.append(
            Finding(owner.path, headline(owner, verb), evidence, cause, _model_cast(got), score=0.9)
        )
    return findings


def _integers(layer: Layer, owner: Layer, failure: Failure, fix: Fix, want: str) -> Finding:
    """An integer tensor into an op that computes in floating point (pooling, mean, softmax)."""
    got = layer.inputs[0].dtype
    op = f"'{layer.summary}'" if layer.kind == "function" else f"'{layer.path}' ({layer.type})"
    evidence = (
        ("got", f"{shape(layer.inputs[0].shape)} {got}"),
        ("expected", f"a floating dtype ({want}, as the model's weights)"),
        pytorch(failure),
    )
    pixels = "; 0..255 image pixels are usually cast and divided by 255" if got == "uint8" else ""
    cause = f"{op} computes in floating point and PyTorch will not pick a float dtype for {got}"
    return Finding(
        owner.path,
        headline(owner, f"cannot take integer ({got}) input in {op}"),
        evidence,
        cause + pixels,
        fix,
    )


#: What PyTorch says when an op that needs floats is given integers (read only once the recorded
#: dtypes show an integer input: the message tells which op refused it).
_FLOAT_ONLY = (
    "not implemented for 'Long'",
    "not implemented for 'Int'",
    "not implemented for 'Byte'",
    "not implemented for 'Short'",
    "not implemented for 'Char'",
    "not implemented for 'Bool'",
    "can't be cast to the desired output type",
    "could not infer output dtype",
    "expected a floating point or complex tensor",
)


def _float_for_integers(ctx: Context, info: TensorInfo, message: str) -> str | None:
    """The model's floating dtype, when an integer tensor reached an op that needs floats."""
    if info.dtype.startswith(("float", "bfloat", "complex")) or not any(
        text in message for text in _FLOAT_ONLY
    ):
        return None
    weights = (p for p in ctx.model.parameters() if p.is_floating_point())
    first = next(weights, None)
    return str(first.dtype).removeprefix("torch.") if first is not None else "float32"


def _function_want(layer: Layer) -> str | None:
    """For a functional op: the floating dtype of its other inputs, when the first differs."""
    floats = [t.dtype for t in layer.inputs if t.dtype in _FLOATS]
    others = set(floats[1:])
    if len(set(floats)) > 1 and len(others) == 1 and floats[0] not in others:
        return others.pop()
    return None


def _model_cast(dtype_name: str) -> Fix:
    return ConvertModel(
        summary=f"convert the model to {dtype_name} instead",
        code=f"model = model{_cast(dtype_name)}",
        dtype=dtype_name,
    )


def unregistered_modules(model: nn.Module) -> list[tuple[str, str, Any]]:
    """(owner path, attribute, container) for modules kept in plain lists/tuples/dicts."""
    found = []
    for path, module in model.named_modules():
        for name, value in vars(module).items():
            if name.startswith("_") or not isinstance(value, (list, tuple, dict)):
                continue
            items = value.values() if isinstance(value, dict) else value
            if any(isinstance(item, nn.Module) for item in items):
                found.append((path, name, value))
    return found


def _device_of(container: Any) -> set[str]:
    items = container.values() if isinstance(container, dict) else container
    return {str(p.device) for m in items if isinstance(m, nn.Module) for p in m.parameters()}


def _data_device(ctx: Context) -> str | None:
    """Where the model's inputs live (for a dry run: where the run placed them)."""
    return ctx.inputs[0].device if ctx.inputs else None


def _seen_devices(ctx: Context, layer: Layer | None) -> dict[str, list[str]]:
    """device -> what sits there (inputs of the failing call, and its module's weights)."""
    seen: dict[str, list[str]] = {}
    infos = layer.inputs if layer is not None else ()
    for i, t in enumerate(infos[:4]):
        seen.setdefault(t.device, []).append(f"input {i} {shape(t.shape)}")
    module = ctx.module(layer) if layer is not None and layer.kind == "module" else None
    for name, p in module.named_parameters() if module is not None else ():
        # a dry run with a device ran every registered weight there, whatever its own device
        where = ctx.weights_on or str(p.device)
        seen.setdefault(where, []).append(f"{name} {shape(tuple(p.shape))}")
    return seen


@failure_rule("device")
def device(ctx: Context) -> list[Finding]:
    """Tensors on different devices: unregistered layers, inputs or weights left behind."""
    failure, layer = ctx.failure, ctx.failed_layer()
    home = _data_device(ctx)
    seen = _seen_devices(ctx, layer)
    if failure is None or home is None or len(seen) < 2:
        return []
    loose = unregistered_modules(ctx.model)
    stray = loose if any(_device_of(c) - {home} for _, _, c in loose) else []
    where = (owner_of(ctx, layer) if layer is not None else None) or layer
    head = f"'{where.path}' ({where.type})" if where is not None else "the forward"
    head += " mixes devices" + (
        f" in '{layer.summary}'" if layer and layer.kind == "function" else ""
    )
    evidence = (
        *[(dev, ", ".join(items)) for dev, items in seen.items()],
        ("data", f"{home} (the model's inputs)"),
        pytorch(failure),
    )
    path = where.path if where is not None else ""
    if stray:
        return [_stray_finding(path, head, evidence, stray, home)]
    return _moved_findings(ctx, layer, head, evidence, home, seen)


def _stray_finding(
    path: str,
    head: str,
    evidence: tuple[Evidence, ...],
    stray: list[tuple[str, str, Any]],
    home: str,
) -> Finding:
    names = ", ".join(f"self.{a}" for _, a, _ in stray)
    kinds = sorted(
        {type(m).__name__ for _, _, c in stray for m in (c.values() if isinstance(c, dict) else c)}
    )
    places = ", ".join(sorted(set().union(*(_device_of(c) for _, _, c in stray))))
    cause = (
        f"{names} is a plain Python {type(stray[0][2]).__name__} of {'/'.join(kinds)}; "
        "modules there are not registered, so model.to(device) and model.parameters() "
        f"never see them (they sit on {places})"
    )
    parts = tuple(
        RegisterModules(summary="", code="", owner=o, name=a, device=home) for o, a, _ in stray
    )
    kind = "ModuleDict" if isinstance(stray[0][2], dict) else "ModuleList"
    fix = Together(
        summary=f"register them with nn.{kind}, then move the whole model with model.to(device)",
        code="; ".join(f"self.{a} = nn.{kind}({a})" for _, a, _ in stray),
        parts=parts,
    )
    return Finding(path, head, evidence, cause, fix)


def _moved_findings(
    ctx: Context,
    layer: Layer | None,
    head: str,
    evidence: tuple[Evidence, ...],
    home: str,
    seen: dict[str, list[str]],
) -> list[Finding]:
    others = [d for d in seen if d != home]
    path = layer.path if layer is not None else ""
    cause = (
        f"the model's weights or tensors it creates sit on {', '.join(others)}, "
        f"its inputs on {home}"
    )
    move = ConvertModel(
        summary=f"move the whole model to the data's device {home}",
        code=f"model = model.to({home!r})",
        device=home,
    )
    findings = [Finding(path, head, evidence, cause, move, score=0.95)]
    if layer is not None and len(others) == 1:
        fix = at_entry(
            ctx,
            layer,
            (TensorOp("to", (others[0],)),),
            f"x = x.to({others[0]!r})",
            f"move the input to {others[0]}",
        )
        findings.append(Finding(path, head, evidence, cause, fix, score=0.9))
    return findings
