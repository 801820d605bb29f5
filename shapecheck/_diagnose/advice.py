"""Warnings on models that run: ``view-batch``, ``reused-module``, ``unused-module``,
``softmax-before-loss`` and ``batchnorm-batch1``. Their fixes are suggestions (not re-run)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._loss import LOSS_PATH
from .._text import count, shape
from ._context import Context, Finding
from ._registry import warning_rule
from ._words import caller, is_cross_entropy, loss_row
from .view import batch_changing_views

if TYPE_CHECKING:
    from .._changes import Fix

__all__ = [
    "batchnorm_batch1",
    "reused_module",
    "softmax_before_loss",
    "unused_module",
    "view_batch_warning",
]


def _suggestion(summary: str, code: str) -> Fix:
    """A warning's fix: the fix records load only when a warning is found (a model that runs
    without one pays nothing for them)."""
    from .._changes import Fix

    return Fix(summary=summary, code=code)


@warning_rule("view-batch")
def view_batch_warning(ctx: Context) -> list[Finding]:
    """A ``view(-1, …)`` that changed the number of samples, and the model's output has lost
    the batch too. A (batch·seq) or window flatten that is undone later (GPT-2's Conv1D, Swin's
    window partition) keeps the batch at the output and is fine."""
    out = ctx.outputs[0].shape if ctx.outputs else ()
    if ctx.batch is None or not out or ctx.batch in (out[0], ctx.output_batch):
        return []  # one row per sample, or one output per sample (a list of them)
    findings = []
    for layer in batch_changing_views(ctx):
        x, y = layer.inputs[0].shape, layer.outputs[0].shape
        owner = ctx.layers[layer.parent].path if layer.parent is not None else ""
        head = (
            f"call '{layer.type}({layer.arguments})' in {caller(ctx, layer)} changed the batch: "
            f"{x[0]} samples in, {y[0]} rows out"
        )
        cause = (
            f"-1 absorbs whatever is left: {x[0]} samples of {'*'.join(map(str, x[1:]))} "
            f"values regrouped into rows of {y[-1]}"
        )
        fix = _suggestion(
            summary="flatten per sample", code="x = x.flatten(1)   # or x.view(x.size(0), -1)"
        )
        evidence = (("got", shape(x)), ("made", shape(y)), ("output", f"{shape(out)}   for "
                    f"{ctx.batch} sample{'s' if ctx.batch != 1 else ''}"))  # fmt: skip
        findings.append(Finding(owner, head, evidence, cause, fix))
    return findings


def _own(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _places(ctx: Context) -> dict[int, tuple[nn.Module, list[str]]]:
    places: dict[int, tuple[nn.Module, list[str]]] = {}
    for path, module in ctx.tree().every:
        places.setdefault(id(module), (module, []))[1].append(path)
    return places


def _under(path: str, shared: set[str]) -> bool:
    """True when a proper ancestor of ``path`` is itself a shared module's path."""
    parts = path.split(".")
    return any(".".join(parts[:i]) in shared for i in range(1, len(parts)))


@warning_rule("reused-module")
def reused_module(ctx: Context) -> list[Finding]:
    """One instance registered under several names: its weights are shared N times."""
    places = _places(ctx)
    reused = {k: v for k, v in places.items() if len(v[1]) > 1 and _own(v[0]) > 0}
    shared = {p for _, paths in reused.values() for p in paths}
    findings = []
    for module, paths in reused.values():
        if all(_under(p, shared) for p in paths):
            continue  # inside a reused block: reported with the block
        own, n, name = _own(module), len(paths), type(module).__name__
        evidence = (
            ("at", ", ".join(repr(p) for p in paths[:6])),
            ("params", f"{count(own)} unique; {count(own * n)} if each place had its own copy"),
        )
        cause = (
            f"[{name}()] * {n} (or one variable assigned twice) repeats the same object, "
            "so all places train one set of weights"
        )
        fix = _suggestion(
            summary="build a new instance for each place",
            code=f"nn.Sequential(*[{name}(...) for _ in range({n})])",
        )
        findings.append(
            Finding(
                paths[0],
                f"module '{paths[0]}' ({name}) is one instance used at {n} places",
                evidence,
                cause,
                fix,
            )
        )
    return findings


def _weights_in_use(ctx: Context) -> set[int]:
    """Ids of the weights the forward used: those of every module that ran, and those that
    functional calls were given directly (``F.linear(x, self.qkv.weight, bias)``)."""
    used = set(ctx.weights_read)
    for module in ctx.module_at.values():
        used.update(id(p) for p in module._parameters.values() if p is not None)
    return used


@warning_rule("unused-module")
def unused_module(ctx: Context) -> list[Finding]:
    """The top-most submodules with parameters that never ran, nor any module inside them, and
    whose weights nothing used: a weight tied to a module that ran (T5's ``shared``
    embedding is its encoder's ``embed_tokens``) or read directly by the parent counts as used.
    TorchScript submodules take no hooks, so whether they ran is not known: left out."""
    tree = ctx.tree().named
    live = _ran_or_holds_one(ctx, tree)
    idle = [(path, module) for path, module in tree if path and id(module) not in live
            and not isinstance(module, torch.jit.ScriptModule)]  # fmt: skip
    if not idle:  # the common case: every module ran
        return []
    used = _weights_in_use(ctx)
    parents = {id(child): module for _, module in tree for child in module.children()}
    findings = []
    for path, module in idle:
        parent = parents.get(id(module), ctx.model)
        if id(parent) not in live or _uses_children_directly(parent):
            continue  # reported with its parent, or used through its weights (MHA.out_proj)
        weights = list(module.parameters())
        if not weights or any(id(p) in used for p in weights):
            continue
        evidence = (("params", f"{count(sum(p.numel() for p in weights))} that get no gradient "
                               "and only take memory"),)  # fmt: skip
        fix = _suggestion(summary="call it in forward(), or delete it", code=f"del model.{path}")
        head = f"module '{path}' ({type(module).__name__}) never ran in the forward"
        findings.append(
            Finding(
                path, head, evidence, "it is built in __init__ but forward() never calls it", fix
            )
        )
    return findings


def _ran_or_holds_one(ctx: Context, tree: list[tuple[str, nn.Module]]) -> set[int]:
    """Ids of the modules that ran or hold one that ran: one pass, children before parents."""
    live = {id(m) for m in ctx.module_at.values()}
    for _, module in reversed(tree):
        if id(module) not in live and any(id(c) in live for c in module.children()):
            live.add(id(module))
    return live


def _uses_children_directly(module: nn.Module) -> bool:
    """Built-in layers such as MultiheadAttention read their children's weights without calling
    them; containers (Sequential, ModuleList, ModuleDict) do not."""
    builtin = type(module).__module__.startswith("torch.nn.")
    return builtin and not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


_SOFTMAX = ("Softmax", "LogSoftmax", "softmax", "log_softmax")


@warning_rule("softmax-before-loss")
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
    cause = (
        f"{row.type} applies log_softmax itself; a {last.type} before it squashes the "
        "logits twice and the gradients almost vanish"
    )
    fix = _suggestion(
        summary=f"return the logits (drop the {last.type})",
        code="return logits   # no softmax before CrossEntropyLoss",
    )
    return [
        Finding(
            last.path,
            f"'{last.path}' ({last.type}) feeds its output straight to {row.type}",
            (("got", f"{shape(out)}   probabilities, not logits"),),
            cause,
            fix,
        )
    ]


@warning_rule("batchnorm-batch1")
def batchnorm_batch1(ctx: Context) -> list[Finding]:
    """BatchNorm in training mode on a batch of one sample: its statistics are of one image."""
    findings = []
    seen: Counter[int] = Counter()
    for index, module in ctx.module_at.items():  # in call order
        layer = ctx.layers[index]
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not layer.inputs:
            continue
        if not module.training or layer.inputs[0].shape[:1] != (1,) or seen[id(module)]:
            continue
        seen[id(module)] += 1
        fix = _suggestion(
            summary="train with batches of ≥ 2 samples, or call model.eval() for inference",
            code="model.eval()   # or DataLoader(..., drop_last=True)",
        )
        findings.append(
            Finding(
                layer.path,
                f"layer '{layer.path}' ({layer.summary}) normalises a batch of 1 in training mode",
                (("got", shape(layer.inputs[0].shape)),),
                "batch statistics from a single sample are noisy and its running stats drift",
                fix,
            )
        )
    return findings[:1]
