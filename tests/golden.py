"""Golden files: compare rendered text with ``tests/golden/<folder>/<name>.txt``.

Rewrite them, after checking the change is intended, with ``SHAPECHECK_UPDATE_GOLDEN=1``.
Without that variable a missing or different golden file is a failure, never rewritten.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_golden"]

ROOT = Path(__file__).parent / "golden"


def check_golden(folder: str, name: str, text: str) -> None:
    path = ROOT / folder / f"{name}.txt"
    if os.environ.get("SHAPECHECK_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing: run with SHAPECHECK_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text(encoding="utf-8").removesuffix("\n")
    assert text == expected, f"rendering differs from {path.name} (update it on purpose only)"
