"""Benchmark: ``explain_ranks`` on a ~7B GPT built on ``meta``, tensor parallel over 8 ranks.

Run ``python benchmarks/sharded.py [--rounds 3]``. Each round is a fresh process that imports
shapecheck and torch, makes the input, and calls ``explain_ranks`` (whose rank processes
build the model on meta, parallelise it and dry-run it); the round reports its wall time and
the peak RSS of the calling process and of the largest rank process. Prints a Markdown table.
The model and its plan are the tests' (``tests/sharded_models.py``: 32 layers of 4096, 32
heads, vocabulary 32,000; q, k, v, up and the head Colwise, o and down Rowwise).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"


def one_round(build: str) -> dict[str, float]:
    sys.path.insert(0, str(TESTS))
    started = time.perf_counter()
    import sharded_models as sm
    import torch

    import shapecheck

    tokens = torch.randint(0, 32_000, (1, 2048))
    ranks = shapecheck.explain_ranks(getattr(sm, build), tokens, world_size=8)
    seconds = time.perf_counter() - started
    report = ranks.report(0)
    assert ranks.ok
    assert report.dry_run
    return {
        "seconds": seconds,
        "parent_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rank_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "params": report.total_params,
        "rank_bytes": ranks.rank_param_bytes[0],
        "groups": len(ranks.groups),
    }


CASES = {
    "build_meta_7b": "vocabulary 32,000: every rank holds the same shards",
    "build_meta_7b_uneven": "vocabulary 32,001: rank 7's shard of the head is shorter",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.one:
        print(json.dumps(one_round(options.one)))
        return
    print("| model | groups traced | wall s (median, min-max) | RSS caller MiB | RSS largest "
          "rank process MiB |\n| --- | --- | --- | --- | --- |")  # fmt: skip
    for build, words in CASES.items():
        rounds = []
        for _ in range(options.rounds):
            done = subprocess.run([sys.executable, __file__, "--one", build],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            rounds.append(json.loads(done.stdout.splitlines()[-1]))
        seconds = [r["seconds"] for r in rounds]
        print(f"| {rounds[0]['params']:,} parameters, {words} | {rounds[0]['groups']} | "
              f"{statistics.median(seconds):.1f} ({min(seconds):.1f}-{max(seconds):.1f}) | "
              f"{max(r['parent_mib'] for r in rounds):.0f} | "
              f"{max(r['rank_mib'] for r in rounds):.0f} |")  # fmt: skip
    print(f"\n{options.rounds} rounds each, load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
