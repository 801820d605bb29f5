"""The one place that knows which torch this is, and what only newer releases have.

shapecheck supports the oldest torch ``pyproject.toml`` admits (the floor). Anything newer is
looked up here, guarded: an aten op that a release lacks is simply absent from
:func:`aten_ops`, and a feature that needs a newer release calls :func:`require_torch`, which
raises a ``UsageError`` naming the minimum.
"""

from __future__ import annotations

import re

import torch

from ._errors import UsageError

__all__ = ["FLOOR", "TORCH", "aten_ops", "require_torch", "torch_at_least"]

#: The oldest torch release line shapecheck supports (keep equal to pyproject.toml's floor).
FLOOR = (2, 4)


def _release(version: str) -> tuple[int, int]:
    """``(2, 13)`` for ``"2.13.0+cpu"``; ``(0, 0)`` for a version string torch never made."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


#: The release line of the torch that is running.
TORCH = _release(torch.__version__)


def torch_at_least(minimum: str) -> bool:
    """True when the running torch is ``minimum`` (``"2.6"``) or newer."""
    return _release(minimum) <= TORCH


def require_torch(minimum: str, feature: str) -> None:
    """Raise a UsageError when ``feature`` needs a newer torch than the one running."""
    if not torch_at_least(minimum):
        raise UsageError(
            f"{feature} needs torch >= {minimum}; this is torch {torch.__version__}. "
            f"Upgrade torch (pip install 'torch>={minimum}') to use it."
        )


def aten_ops(*names: str) -> frozenset[torch._ops.OpOverload]:
    """The overloads named ``"op.overload"`` (``"sym_size.int"``) that this torch has.

    Ops added after the floor (``sym_is_contiguous`` arrived in 2.9) are left out on older
    releases instead of failing the import of the module that names them.
    """
    found = set()
    for name in names:
        namespace, _, dotted = name.rpartition("::")
        packet_name, _, overload = dotted.partition(".")
        ops = getattr(torch.ops, namespace or "aten")
        packet = getattr(ops, packet_name, None)
        op = getattr(packet, overload or "default", None) if packet is not None else None
        if op is not None:
            found.add(op)
    return frozenset(found)
