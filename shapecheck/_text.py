"""Tiny text helpers shared by messages and tables: shapes as tuples, counts with commas,
the glyphs and their ASCII stand-ins, notebook cells named as IPython names them."""

from __future__ import annotations

import codecs
import os
import re
import sys
from collections.abc import Sequence

__all__ = [
    "GLYPHS",
    "call_text",
    "can_encode",
    "count",
    "nbytes",
    "plural",
    "shape",
    "shapes",
    "short",
    "to_ascii",
]

#: Every non-ASCII character shapecheck writes itself, and what it becomes in ASCII.
GLYPHS = {"─": "-", "→": "->", "✗": "x", "·": ".", "—": "-", "…": "...", "×": "x", "≈": "~",
          "⋮": ":", "↑": "^", "≥": ">=", "≤": "<="}  # fmt: skip
_ASCII = str.maketrans(GLYPHS)


def call_text(positional: Sequence[object], keywords: Sequence[tuple[str, object]] = ()) -> str:
    """A call's arguments as written in code, at most 40 characters.

    >>> call_text((-1, 512))
    '-1, 512'
    >>> call_text((1,), (("keepdim", True),))
    '1, keepdim=True'
    """
    parts = [repr(a) for a in positional]
    if keywords:
        parts += [f"{name}={value!r}" for name, value in keywords]
    text = ", ".join(parts)
    return text if len(text) <= 40 else text[:39] + "…"


def shape(dims: Sequence[int]) -> str:
    """``(1, 8, 8, 8)``; a 1-D shape keeps its comma: ``(512,)``."""
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def shapes(many: Sequence[Sequence[int]]) -> str:
    """Shapes joined by spaces; ``—`` for none."""
    return " ".join(shape(s) for s in many) if many else "—"


def count(n: int) -> str:
    return f"{n:,}"


def plural(n: int, word: str) -> str:
    """``1 sample``, ``2 samples``, ``1,024 samples``.

    >>> plural(1, "sample"), plural(3, "row")
    ('1 sample', '3 rows')
    """
    return f"{count(n)} {word}" + ("" if n == 1 else "s")


def nbytes(n: float) -> str:
    """Bytes in binary units: ``70.7 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def short(source: str | None) -> str:
    """``file:line`` with the directory dropped; a notebook cell as IPython shows it,
    ``Cell In[3], line 11``, while that IPython session runs."""
    if not source:
        return ""
    filename, _, line = source.rpartition(":")
    cell = _cell(filename) if line.isdigit() else None
    return f"{cell}, line {line}" if cell else os.path.basename(source)


def _cell(filename: str) -> str | None:
    """IPython's own name for the code it compiled from a cell (``Cell In[3]``), or None."""
    ipython = sys.modules.get("IPython")  # never imported here: only asked when running
    shell = ipython.get_ipython() if ipython is not None else None
    namer = getattr(getattr(shell, "compile", None), "format_code_name", None)
    named = namer(filename) if callable(namer) else None
    if isinstance(named, tuple) and len(named) == 2:
        return f"{named[0]} {named[1]}"
    return None


def can_encode(encoding: str | None) -> bool:
    """True when text in ``encoding`` can hold the glyphs shapecheck draws (``─ → ✗ · —``)."""
    if not encoding:
        return False
    try:
        codecs.lookup(encoding)
        "".join(GLYPHS).encode(encoding)
    except (LookupError, UnicodeError):
        return False
    return True


_NON_ASCII = re.compile(r"[^\x00-\x7f\u00a0]")  # no-break spaces glue words for wrapping only


def to_ascii(text: str) -> str:
    """The glyphs as ASCII (``→`` becomes ``->``); any other non-ASCII character as ``?``."""
    return _NON_ASCII.sub("?", text.translate(_ASCII))
