"""Tiny text helpers shared by messages and tables: shapes as tuples, counts with commas."""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["count", "nbytes", "shape", "shapes", "short"]


def shape(dims: Sequence[int]) -> str:
    """``(1, 8, 8, 8)``; a 1-D shape keeps its comma: ``(512,)``."""
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def shapes(many: Sequence[Sequence[int]]) -> str:
    """Shapes joined by spaces; ``—`` for none."""
    return " ".join(shape(s) for s in many) if many else "—"


def count(n: int) -> str:
    return f"{n:,}"


def nbytes(n: float) -> str:
    """Bytes in binary units: ``70.7 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def short(source: str | None) -> str:
    """``file:line`` with the directory dropped."""
    return os.path.basename(source) if source else ""
