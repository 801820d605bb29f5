"""Rules are registered once, with their id and, for layer rules, the layer types they read.

``@layer_rule("missing-flatten", nn.Linear)`` does the common guard (the failing call is a
module of one of these types, built, with inputs) and hands the rule that layer and module;
``@failure_rule`` and ``@warning_rule`` hand it the context alone. ``find`` runs them: a rule
that raises is skipped with a warning, and the others still run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from .._records import Layer
from ._context import Context, Finding

__all__ = [
    "FAILURE_RULES",
    "WARNING_RULES",
    "Rule",
    "failure_rule",
    "find",
    "layer_rule",
    "warning_rule",
]

ContextRule = Callable[[Context], list[Finding]]
LayerRule = Callable[[Context, Layer, Any], list[Finding]]


@dataclass(frozen=True)
class Rule:
    """A registered rule: its public, stable id and the function that reads a context."""

    id: str
    read: ContextRule


FAILURE_RULES: list[Rule] = []
WARNING_RULES: list[Rule] = []


def failure_rule(rule_id: str) -> Callable[[ContextRule], ContextRule]:
    """Register ``read(ctx)`` as a rule for failures."""

    def register(read: ContextRule) -> ContextRule:
        FAILURE_RULES.append(Rule(rule_id, read))
        return read

    return register


def layer_rule(rule_id: str, *types: type) -> Callable[[LayerRule], LayerRule]:
    """Register ``read(ctx, layer, module)`` for failures in a module of one of ``types``."""

    def register(read: LayerRule) -> LayerRule:
        def guarded(ctx: Context) -> list[Finding]:
            layer = ctx.failed_layer()
            if ctx.failure is None or layer is None or layer.kind != "module" or not layer.inputs:
                return []
            module = ctx.module(layer)
            lazy = isinstance(module, nn.modules.lazy.LazyModuleMixin)
            return read(ctx, layer, module) if isinstance(module, types) and not lazy else []

        FAILURE_RULES.append(Rule(rule_id, guarded))
        return read

    return register


def warning_rule(rule_id: str) -> Callable[[ContextRule], ContextRule]:
    """Register ``read(ctx)`` as a warning on models that run."""

    def register(read: ContextRule) -> ContextRule:
        WARNING_RULES.append(Rule(rule_id, read))
        return read

    return register


def find(ctx: Context, rules: list[Rule]) -> list[Finding]:
    """Every finding of every rule, best first (stable for equal scores).

    A rule that raises is skipped with a RuntimeWarning: a bug in one rule must never turn
    explain() itself into a crash, nor hide what the other rules found.
    """
    findings = []
    for rule in rules:
        try:
            found = rule.read(ctx)
        except Exception as error:
            warnings.warn(
                f"shapecheck rule {rule.id!r} failed and was skipped: {error!r}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        findings += [replace(f, rule=rule.id) for f in found]
    return sorted(findings, key=lambda f: -f.score)
