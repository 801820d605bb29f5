"""Diagnosis rules: each reads a traced forward pass and returns candidate causes with fixes.

Rules are registered with their id (``_registry``) when their module is imported:
``FAILURE_RULES`` (read here) imports the failure rules, ``WARNING_RULES`` the warnings on
models that ran, each on first use, so a model that runs never loads the failure rules. Rule ids
are public and stable.
"""

from __future__ import annotations

import importlib

from ._context import Context, Finding
from ._registry import Rule, find

__all__ = ["FAILURE_RULES", "WARNING_RULES", "Context", "Finding", "Rule", "find"]

#: Which module registers each list (importing it fills the list in ``_registry``).
_LOADERS = {"FAILURE_RULES": ".failures", "WARNING_RULES": ".advice"}


def __getattr__(name: str) -> list[Rule]:
    if name not in _LOADERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module(_LOADERS[name], __name__)
    from . import _registry

    rules: list[Rule] = getattr(_registry, name)
    globals()[name] = rules  # asked once per explain: later reads skip this hook
    return rules
