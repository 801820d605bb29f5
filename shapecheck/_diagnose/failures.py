# isort: skip_file
# (the order of the rule modules is the order in which rules of equal score run)
"""Every failure rule, registered by importing its module, in the order they run."""

from __future__ import annotations

from . import linear, view, conv, batch, size, norm, dtype_device, embedding  # noqa: F401
from . import attention, cat, loss, rnn, residual, reshape, dims, input_size  # noqa: F401
from . import sharding  # noqa: F401  (tensor parallelism: rules that read placements)
from ._registry import FAILURE_RULES

__all__ = ["FAILURE_RULES"]
