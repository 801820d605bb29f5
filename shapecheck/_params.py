"""Parameter and buffer totals from the root, each tensor counted once (tied weights too)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._lazy import is_uninitialized
from ._paths import ModelWalk, walk_of

__all__ = ["ParamTotals", "param_totals", "tied_params"]


@dataclass(frozen=True)
class ParamTotals:
    total: int
    trainable: int
    bytes_by_dtype: dict[str, int]
    buffer_count: int
    buffer_bytes: int


def param_totals(model: nn.Module | ModelWalk) -> ParamTotals:
    """Unique parameters (``model.parameters()`` de-duplicates shared tensors) and buffers."""
    total = trainable = 0
    by_dtype: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if is_uninitialized(p):
            continue
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
        by_dtype[p.dtype] = by_dtype.get(p.dtype, 0) + n * p.element_size()
    count = nbytes = 0
    for b in model.buffers():
        if not is_uninitialized(b):
            n = b.numel()
            count, nbytes = count + n, nbytes + n * b.element_size()
    names = {str(dtype).removeprefix("torch."): size for dtype, size in by_dtype.items()}
    return ParamTotals(total, trainable, names, count, nbytes)


def tied_params(model: nn.Module | ModelWalk) -> tuple[tuple[str, str, int], ...]:
    """Parameters one module shares with another (tied weights, or one module registered
    under two names): ``(path, path that holds them first, how many)``, in module order."""
    owner: dict[int, str] = {}
    shared: dict[tuple[str, str], int] = {}
    for path, module in walk_of(model).every:
        for p in module._parameters.values():
            if p is None or is_uninitialized(p):
                continue
            first = owner.setdefault(id(p), path)
            if first != path:
                shared[path, first] = shared.get((path, first), 0) + p.numel()
    return tuple((path, first, n) for (path, first), n in shared.items())
