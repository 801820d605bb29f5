"""Parameter and buffer totals from the root, each tensor counted once (tied weights too)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["ParamTotals", "param_totals"]


@dataclass(frozen=True)
class ParamTotals:
    total: int
    trainable: int
    bytes_by_dtype: dict[str, int]
    buffer_count: int
    buffer_bytes: int


def param_totals(model: nn.Module) -> ParamTotals:
    """Unique parameters (``model.parameters()`` de-duplicates shared tensors) and buffers."""
    total = trainable = 0
    by_dtype: dict[str, int] = {}
    for p in model.parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            continue
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
        name = str(p.dtype).removeprefix("torch.")
        by_dtype[name] = by_dtype.get(name, 0) + p.numel() * p.element_size()
    buffers = [b for b in model.buffers() if not isinstance(b, nn.parameter.UninitializedBuffer)]
    return ParamTotals(
        total, trainable, by_dtype,
        sum(b.numel() for b in buffers), sum(b.numel() * b.element_size() for b in buffers),
    )  # fmt: skip
