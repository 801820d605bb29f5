"""Forward FLOPs counted at the dispatch level: PyTorch's own formulas, and shapecheck's for
the kernels PyTorch's registry has none for (:mod:`shapecheck._flop_formulas`).

:class:`FlopCounter` is a ``TorchDispatchMode`` that keeps ONE running total. The tracer reads
it when a call starts and when it ends, so a layer's FLOPs (its children included) are a
subtraction: O(1) per call whatever the model's size. The per-op logic mirrors
``torch.utils.flop_counter.FlopCounterMode`` (same registry, same metadata skips, same
decomposition of ops without a formula), so wherever that class counts an op the two agree;
only the per-module bookkeeping of that class (a ``ModuleTracker`` and a dict update per op
and parent) is left out. An op of a counted family (products, convolutions, attention,
recurrent layers) that still has no formula is named in ``uncounted``: the total is then a
lower bound, which :func:`lower_bound_text` says.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from ._compat import aten_ops
from ._flop_formulas import FORMULAS, does_work, op_name

__all__ = ["FlopCounter"]

# Metadata queries FlopCounterMode hands back untouched (nested tensors answer them in Python);
# sym_is_contiguous exists from torch 2.9 only.
_METADATA = aten_ops(
    "sym_is_contiguous", "is_contiguous", "is_contiguous.memory_format",
    "is_strides_like_format", "is_non_overlapping_and_dense", "size", "sym_size", "stride",
    "sym_stride", "storage_offset", "sym_storage_offset", "numel", "sym_numel", "dim",
    "prim::layout",
)  # fmt: skip


class FlopCounter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """A running total of FLOPs of every aten op run while the mode is active.

    ``uncounted`` maps each op that does work but has no formula to its number of calls.

    Example:
        >>> import torch
        >>> with FlopCounter() as counter:
        ...     _ = torch.randn(4, 8) @ torch.randn(8, 2)
        >>> counter.total, counter.uncounted
        (128, {})
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.total = 0
        self.uncounted: dict[str, int] = {}
        self.uncounted_calls = 0  # a running count, read per call like ``total``
        # torch's formula wins where both have one: totals equal FlopCounterMode's wherever
        # it counts an op, and ours only fill its gaps
        self.formulas: dict[Any, Callable[..., int]] = {**FORMULAS, **flop_registry}

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _METADATA or isinstance(func, torch._ops.HigherOrderOperator):
            return NotImplemented
        # As FlopCounterMode: an op is first offered its decomposition, whose parts then count.
        # (Its registry is keyed by op packets, so this test is true for every overload.)
        if func not in self.formulas and func is not torch.ops.prim.device.default:
            with self:
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        formula = self.formulas.get(packet)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        else:
            name = _work_name(packet)
            if name is not None:
                self.uncounted[name] = self.uncounted.get(name, 0) + 1
                self.uncounted_calls += 1
        return out


@functools.cache
def _work_name(packet: Any) -> str | None:
    """The op's name if it does work by the convention (an uncounted one then), else None."""
    name = op_name(packet)
    return name if does_work(name) else None
