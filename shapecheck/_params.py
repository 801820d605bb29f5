"""Parameter and buffer totals from the root, each tensor counted once (tied weights too)."""

from __future__ import annotations

from dataclasses import dataclass

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
    by_dtype: dict[str, int] = {}
    for p in model.parameters():
        if is_uninitialized(p):
            continue
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
        name = str(p.dtype).removeprefix("torch.")
        by_dtype[name] = by_dtype.get(name, 0) + p.numel() * p.element_size()
    buffers = [b for b in model.buffers() if not is_uninitialized(b)]
    return ParamTotals(
        total, trainable, by_dtype,
        sum(b.numel() for b in buffers), sum(b.numel() * b.element_size() for b in buffers),
    )  # fmt: skip


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
