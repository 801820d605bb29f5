"""Diagnosis rules: each reads a traced forward pass and returns candidate causes with fixes.

Rules are registered with their id (``_registry``); importing the rule modules below registers
them, in this order (the order breaks ties between equal scores). ``FAILURE_RULES`` run when the
forward raised; ``WARNING_RULES`` on models that ran. Rule ids are public and stable.
"""

from __future__ import annotations

from . import (  # noqa: F401  (imported for their registrations, in that order)
    advice,
    attention,
    batch,
    cat,
    conv,
    dtype_device,
    embedding,
    linear,
    loss,
    norm,
    rnn,
    sharding,
    size,
    view,
)
from ._context import Context, Finding
from ._registry import FAILURE_RULES, WARNING_RULES, Rule, find

__all__ = ["FAILURE_RULES", "WARNING_RULES", "Context", "Finding", "Rule", "find"]
