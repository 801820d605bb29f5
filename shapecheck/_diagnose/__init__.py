# isort: skip_file
# (the order of the rule modules is the order in which rules of equal score run)
"""Diagnosis rules: each reads a traced forward pass and returns candidate causes with fixes.

Rules are registered with their id (``_registry``); importing the rule modules below registers
them, in this order (the order breaks ties between equal scores). ``FAILURE_RULES`` run when the
forward raised; ``WARNING_RULES`` on models that ran. Rule ids are public and stable.
"""

from __future__ import annotations

from . import linear, view, conv, batch, size, norm, dtype_device, embedding  # noqa: F401
from . import attention, cat, loss, rnn, residual, reshape, dims, input_size, advice  # noqa: F401
from . import sharding  # noqa: F401  (tensor parallelism: rules that read placements)
from ._context import Context, Finding
from ._registry import FAILURE_RULES, WARNING_RULES, Rule, find

__all__ = ["FAILURE_RULES", "WARNING_RULES", "Context", "Finding", "Rule", "find"]
