"""Lazy modules' tensors before their first forward: telling them apart, copying a model that
holds them."""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["copy_model", "is_uninitialized"]

_Model = TypeVar("_Model", bound=nn.Module)

_MADE = frozenset({torch.Tensor, nn.Parameter})
_LAZY = (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer)


def is_uninitialized(tensor: torch.Tensor) -> bool:
    """True for a lazy module's parameter or buffer not made yet (the exact types first:
    ``isinstance`` against Parameter's metaclass runs Python code)."""
    return type(tensor) not in _MADE and isinstance(tensor, _LAZY)


def copy_model(model: _Model) -> _Model:
    """``copy.deepcopy(model)``, also when it holds a lazy module's buffers not made yet (torch
    cannot deep-copy an ``UninitializedBuffer``, as in ``nn.LazyBatchNorm2d``): the copy gets a
    new one of the same dtype, device and grad flag in place of each."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for buffer in module._buffers.values():
            if buffer is not None and isinstance(buffer, nn.parameter.UninitializedBuffer):
                memo.setdefault(id(buffer), _new_buffer(buffer))
    return copy.deepcopy(model, memo)


def _new_buffer(like: torch.Tensor) -> torch.Tensor:
    """A new uninitialized buffer of ``like``'s dtype, device and grad flag."""
    made: torch.Tensor = nn.parameter.UninitializedBuffer(  # type: ignore[call-arg]  # stub lags
        requires_grad=like.requires_grad, device=like.device, dtype=like.dtype
    )
    return made
