"""Diagnosis rules: each reads a traced forward pass and returns candidate causes with fixes.

A rule is a pure function ``Context -> list[Finding]``. ``FAILURE_RULES`` run when the forward
raised; ``WARNING_RULES`` run on models that ran. Rule ids are public and stable.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from ._context import Context, Finding
from .attention import attention_dim
from .batch import missing_batch_dim
from .cat import cat_mismatch
from .conv import channels_last, conv_in_channels
from .dtype_device import device, dtype
from .embedding import embedding_index
from .linear import linear_in_features, missing_flatten
from .loss import loss_target
from .norm import norm_features
from .rnn import rnn_input
from .size import input_too_small
from .view import view_batch
from .warnings import (
    batchnorm_batch1,
    reused_module,
    softmax_before_loss,
    unused_module,
    view_batch_warning,
)

__all__ = ["FAILURE_RULES", "WARNING_RULES", "Context", "Finding", "Rule", "find"]

Rule = Callable[[Context], list[Finding]]

FAILURE_RULES: list[Rule] = [
    missing_flatten, linear_in_features, view_batch, channels_last, conv_in_channels,
    missing_batch_dim, input_too_small, norm_features, dtype, device, embedding_index,
    attention_dim, cat_mismatch, loss_target, rnn_input,
]  # fmt: skip
WARNING_RULES: list[Rule] = [
    view_batch_warning, reused_module, unused_module, softmax_before_loss, batchnorm_batch1,
]  # fmt: skip


def find(ctx: Context, rules: list[Rule]) -> list[Finding]:
    """Every finding of every rule, best first (stable for equal scores).

    A rule that crashes is skipped with a RuntimeWarning: a bug in one rule must never turn
    explain() itself into a crash (the test suite makes the warning an error).
    """
    findings = []
    for rule in rules:
        try:
            findings += rule(ctx)
        except Exception as error:
            warnings.warn(f"shapecheck rule {rule.__name__} failed: {error!r}", RuntimeWarning,
                          stacklevel=2)  # fmt: skip
    return sorted(findings, key=lambda f: -f.score)
