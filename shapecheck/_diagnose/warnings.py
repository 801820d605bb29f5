"""Warnings on models that run: ``view-batch``, ``reused-module``, ``unused-module``,
``softmax-before-loss`` and ``batchnorm-batch1``. Their fixes are suggestions (not re-run)."""

from __future__ import annotations

from collections import Counter

from torch import nn

from .._fixes import Fix
from .._loss import LOSS_PATH
from .._text import count, shape
from ._context import Context, Finding
from .loss import is_cross_entropy, loss_row
from .view import batch_changing_views

__all__ = [
    "batchnorm_batch1",
    "reused_module",
    "softmax_before_loss",
    "unused_module",
    "view_batch_warning",
]


def view_batch_warning(ctx: Context) -> list[Finding]:
    """A ``view(-1, …)`` that ran but changed the number of samples."""
    findings = []
    for layer in batch_changing_views(ctx):
        x, y = layer.inputs[0].shape, layer.outputs[0].shape
        owner = ctx.layers[layer.parent].path if layer.parent is not None else ""
        body = "\n".join(
            [
                f"call '{layer.type}({layer.arguments})' in '{owner}' changed the batch: "
                f"{x[0]} samples in, {y[0]} rows out",
                f"  got       {shape(x)}",
                f"  made      {shape(y)}",
                f"cause: -1 absorbs whatever is left: {x[0]} samples of "
                f"{'*'.join(map(str, x[1:]))} values regrouped into rows of {y[-1]}",
            ]
        )
        fix = Fix(
            summary="flatten per sample", code="x = x.flatten(1)   # or x.view(x.size(0), -1)"
        )
        findings.append(Finding("view-batch", owner, body, fix, 1.0))
    return findings


def _own(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _places(model: nn.Module) -> dict[int, tuple[nn.Module, list[str]]]:
    places: dict[int, tuple[nn.Module, list[str]]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        places.setdefault(id(module), (module, []))[1].append(path)
    return places


def _under(path: str, shared: set[str]) -> bool:
    """True when a proper ancestor of ``path`` is itself a shared module's path."""
    parts = path.split(".")
    return any(".".join(parts[:i]) in shared for i in range(1, len(parts)))


def reused_module(ctx: Context) -> list[Finding]:
    """One instance registered under several names: its weights are shared N times."""
    places = _places(ctx.model)
    reused = {k: v for k, v in places.items() if len(v[1]) > 1 and _own(v[0]) > 0}
    shared = {p for _, paths in reused.values() for p in paths}
    findings = []
    for module, paths in reused.values():
        if all(_under(p, shared) for p in paths):
            continue  # inside a reused block: reported with the block
        own, n, name = _own(module), len(paths), type(module).__name__
        body = "\n".join(
            [
                f"module '{paths[0]}' ({name}) is one instance used at {n} places",
                f"  at        {', '.join(repr(p) for p in paths[:6])}",
                f"  params    {count(own)} unique; {count(own * n)} if each place had its own copy",
                f"cause: [{name}()] * {n} (or one variable assigned twice) repeats the same "
                "object, "
                "so all places train one set of weights",
            ]
        )
        fix = Fix(
            summary="build a new instance for each place",
            code=f"nn.Sequential(*[{name}(...) for _ in range({n})])",
        )
        findings.append(Finding("reused-module", paths[0], body, fix, 1.0))
    return findings


def unused_module(ctx: Context) -> list[Finding]:
    """The top-most submodules with parameters that never ran, nor any module inside them."""
    called = {id(m) for m in ctx.trace.module_at.values()}
    dead = {id(m) for m in ctx.model.modules() if not any(id(x) in called for x in m.modules())}
    findings = []
    for path, module in ctx.model.named_modules():
        if not path or id(module) not in dead:
            continue
        parent = ctx.model.get_submodule(path.rpartition(".")[0])
        if id(parent) in dead or _uses_children_directly(parent):
            continue  # reported with its parent, or used through its weights (MHA.out_proj)
        params = _own(module)
        if params == 0:
            continue
        body = "\n".join(
            [
                f"module '{path}' ({type(module).__name__}) never ran in the forward",
                f"  params    {count(params)} that get no gradient and only take memory",
                "cause: it is built in __init__ but forward() never calls it",
            ]
        )
        fix = Fix(summary="call it in forward(), or delete it", code=f"del model.{path}")
        findings.append(Finding("unused-module", path, body, fix, 1.0))
    return findings


def _uses_children_directly(module: nn.Module) -> bool:
    """Built-in layers such as MultiheadAttention read their children's weights without calling
    them; containers (Sequential, ModuleList, ModuleDict) do not."""
    builtin = type(module).__module__.startswith("torch.nn.")
    return builtin and not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


_SOFTMAX = ("Softmax", "LogSoftmax", "softmax", "log_softmax")


def softmax_before_loss(ctx: Context) -> list[Finding]:
    """Probabilities (softmax output) fed to CrossEntropyLoss, which applies log_softmax itself."""
    row = loss_row(ctx)
    if row is None or not is_cross_entropy(ctx.module(row)) or not row.inputs:
        return []
    out = row.inputs[0].shape
    last = next(
        (
            x
            for x in reversed(ctx.layers[: row.index])
            if x.path != LOSS_PATH
            and x.outputs
            and x.output_shapes[0] == out
            and x.type not in ("Sequential",)
            and x.path != ""
        ),
        None,
    )
    if last is None or last.type not in _SOFTMAX:
        return []
    body = "\n".join(
        [
            f"'{last.path}' ({last.type}) feeds its output straight to {row.type}",
            f"  got       {shape(out)}   probabilities, not logits",
            f"cause: {row.type} applies log_softmax itself; a {last.type} before it squashes the "
            "logits twice and the gradients almost vanish",
        ]
    )
    fix = Fix(
        summary=f"return the logits (drop the {last.type})",
        code="return logits   # no softmax before CrossEntropyLoss",
    )
    return [Finding("softmax-before-loss", last.path, body, fix, 1.0)]


def batchnorm_batch1(ctx: Context) -> list[Finding]:
    """BatchNorm in training mode on a batch of one sample: its statistics are of one image."""
    findings = []
    seen: Counter[int] = Counter()
    for layer in ctx.layers:
        module = ctx.module(layer)
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not layer.inputs:
            continue
        if not module.training or layer.inputs[0].shape[:1] != (1,) or seen[id(module)]:
            continue
        seen[id(module)] += 1
        body = "\n".join(
            [
                f"layer '{layer.path}' ({layer.summary}) normalises a batch of 1 in training mode",
                f"  got       {shape(layer.inputs[0].shape)}",
                "cause: batch statistics from a single sample are noisy "
                "and its running stats drift",
            ]
        )
        fix = Fix(
            summary="train with batches of ≥ 2 samples, or call model.eval() for inference",
            code="model.eval()   # or DataLoader(..., drop_last=True)",
        )
        findings.append(Finding("batchnorm-batch1", layer.path, body, fix, 1.0))
    return findings[:1]
