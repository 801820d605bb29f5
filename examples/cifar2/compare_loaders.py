"""Measure the tensor fast path against the book's DataLoader loop, in one process.

Both runs use the same model, recipe, seed and device; only the way batches are made differs.
Each appends its JSON line to ``--out``; the last line printed is the samples/s ratio::

    python examples/cifar2/compare_loaders.py --epochs 3 --data-dir ../shared/data
"""

from __future__ import annotations

import sys

import train
from data import DataError


def main(argv: list[str] | None = None) -> int:
    """Run ``train.py`` with each loader (all other options passed through); print the ratio."""
    argv = list(sys.argv[1:] if argv is None else argv)
    records = {}
    try:
        for loader in ("dataloader", "tensor"):
            records[loader] = train.run(train.parse_args([*argv, "--loader", loader]))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fast, book = records["tensor"]["samples_per_s"], records["dataloader"]["samples_per_s"]
    print(
        f"tensor {fast:,.0f} samples/s vs dataloader {book:,.0f} samples/s: "
        f"{fast / book:.1f}x on {records['tensor']['device']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
