"""Pure shape arithmetic: conv/pool output sizes, the smallest input that survives them.

No torch here: integers in, integers out, so every formula can be checked by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ._changes import Build

__all__ = [
    "Window",
    "halvings",
    "min_input",
    "multiple_below",
    "output_size",
    "per_dim",
    "projection",
]


@dataclass(frozen=True)
class Window:
    """A sliding window along one dimension (a conv or pool layer)."""

    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    ceil_mode: bool = False

    @property
    def span(self) -> int:
        """How many input positions one output position sees: ``dilation*(kernel-1)+1``."""
        return self.dilation * (self.kernel - 1) + 1


def output_size(size: int, w: Window) -> int:
    """PyTorch's output length: ``floor((size + 2p - span) / s) + 1`` (ceil with ceil_mode).

    Example:
        >>> output_size(4, Window(8, 8))
        0
    """
    room = size + 2 * w.padding - w.span
    if room < 0:
        return 0
    steps = math.ceil(room / w.stride) if w.ceil_mode else room // w.stride
    return steps + 1


def min_input(out: int, w: Window) -> int:
    """The smallest input length whose output is at least ``out`` (and at least 1).

    Example:
        >>> min_input(8, Window(1, 2))
        15
    """
    return max(1, (max(out, 1) - 1) * w.stride + w.span - 2 * w.padding)


def per_dim(value: int | Sequence[int], dims: int) -> tuple[int, ...]:
    """``3`` -> ``(3, 3)``; a sequence stays as it is."""
    if isinstance(value, int):
        return (value,) * dims
    return tuple(int(v) for v in value)


def halvings(size: int, smallest: int) -> int:
    """How many times ``size`` was halved to reach ``smallest``: ``halvings(488, 30) == 4``."""
    k = 0
    while smallest * 2 ** (k + 1) <= size:
        k += 1
    return k


def multiple_below(size: int, factor: int) -> int:
    """The nearest multiple of ``factor`` at or below ``size`` (``factor`` when that is 0)."""
    return max(factor, size - size % factor)


def projection(branch: Sequence[int], shortcut: Sequence[int]) -> Build | None:
    """The module that turns a shortcut of shape ``shortcut`` into one like ``branch`` (what a
    ResNet's ``downsample`` does): a strided 1x1 conv and a BatchNorm for images, a Linear for
    features; None when no such module fits (a branch larger than its shortcut, say).

    Example:
        >>> projection((8, 128, 16, 16), (8, 64, 32, 32)).args[0].kwargs
        (('stride', 2), ('bias', False))
        >>> projection((8, 10, 32), (8, 10, 16)).cls, projection((2, 5), (3, 5))
        ('Linear', None)
    """
    if len(branch) == 4 and len(shortcut) == 4 and branch[0] == shortcut[0] and branch[2]:
        stride = shortcut[2] // branch[2]
        if not stride or tuple(shortcut[2:]) != tuple(s * stride for s in branch[2:]):
            return None
        conv = Build("Conv2d", (shortcut[1], branch[1], 1), (("stride", stride), ("bias", False)))
        return Build("Sequential", (conv, Build("BatchNorm2d", (branch[1],))))
    if len(branch) in (2, 3) and len(shortcut) == len(branch) and branch[:-1] == shortcut[:-1]:
        return Build("Linear", (shortcut[-1], branch[-1]))
    return None
