"""The benchmark scripts still run against the code they measure (their small settings): the
floor harness times explain beside its floors, and the FLOPs check equals its hand counts."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import floor
import flops_check


def test_the_floor_harness_times_explain_beside_its_floors() -> None:
    result = floor.time_config("llama-style", floor.llama_style, rounds=1)
    assert set(result["times"]) == {"floor", "explain", "fake floor", "explain dry"}
    assert all(len(times) == 1 and times[0] > 0 for times in result["times"].values())
    assert result["rows"] == 80  # 24 module calls and 56 functional ops, as the table has them


def test_the_flops_check_equals_its_hand_counts_on_the_small_models() -> None:
    for name, build in flops_check.SMALL.items():
        row = flops_check.measure(build)
        for column in ("real", "dry", "meta", "alone"):
            assert row[column] == row["hand"], (name, column)
        assert row["uncounted"] == set(), name
