"""Diagnosis rules: each reads a traced forward pass and returns candidate causes with fixes.

A rule is a pure function ``Context -> list[Finding]``. ``FAILURE_RULES`` run when the forward
raised; ``WARNING_RULES`` run on models that ran. Rule ids are public and stable.
"""

from __future__ import annotations

from collections.abc import Callable

from ._context import Context, Finding
from .linear import linear_in_features, missing_flatten
from .view import view_batch

__all__ = ["FAILURE_RULES", "WARNING_RULES", "Context", "Finding", "Rule", "find"]

Rule = Callable[[Context], list[Finding]]

FAILURE_RULES: list[Rule] = [missing_flatten, linear_in_features, view_batch]
WARNING_RULES: list[Rule] = []


def find(ctx: Context, rules: list[Rule]) -> list[Finding]:
    """Every finding of every rule, best first (stable for equal scores)."""
    findings = [finding for rule in rules for finding in rule(ctx)]
    return sorted(findings, key=lambda f: -f.score)
