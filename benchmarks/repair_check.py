"""Does "verified" mean it works, and how many re-runs does the repair search make?

    python benchmarks/repair_check.py --cases 5000          # the long sweep, ~4 minutes here
    python benchmarks/repair_check.py --corpus ../shared/cases

The sweep draws broken models from ``tests/broken.py`` (four dtypes), explains each for real,
dry, and dry with no real run allowed, and applies every verified plan for real
(``tests/test_verified.py`` does the same on a CI-sized sample). A false claim is a verified
plan that raises when applied, or runs to other shapes than the report said. The corpus part
explains every dev-corpus case and counts re-runs (``Report.reruns``). Both print markdown
tables for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from broken import Case, broken_cases  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from test_verified import MODES, false_claims, mode  # noqa: E402

import shapecheck  # noqa: E402


def sweep(cases: int) -> dict[str, Any]:
    """Explain ``cases`` drawn broken models in every mode; count claims and false ones."""
    tally: Counter[str] = Counter()
    by_dtype: Counter[str] = Counter()
    reruns: list[int] = []
    failures: list[str] = []

    def check(case: Case, name: str, dry_run: bool) -> None:
        report = shapecheck.explain(case.model, *case.args, dry_run=dry_run)
        if report.ok:
            tally["runs (the mistake did not break it)"] += 1
            return
        reruns.append(report.reruns)
        tally["explained failures"] += 1
        tally["with a diagnosis"] += bool(report.diagnoses)
        if not report.diagnoses:
            tally[f"no diagnosis: {case.family}/{case.mistake} ({name})"] += 1
        for d in report.diagnoses:
            if d.verified:
                tally[f"verified plans ({d.verified_by})"] += 1
                tally["verified plans that lose the batch"] += d.keeps_batch is False
        bad = false_claims(case, dry_run)
        tally["false claims"] += len(bad)
        failures.extend(f"{case.family}/{case.mistake} {case.dtype} ({name}): {b}" for b in bad)

    @settings(max_examples=cases, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)  # fmt: skip
    @given(broken_cases())
    def one(case: Case) -> None:
        by_dtype[str(case.dtype).removeprefix("torch.")] += 1
        for name in MODES:
            with mode(name) as dry_run:
                check(case, name, dry_run)

    started = time.perf_counter()
    one()
    return {"cases": cases, "by_dtype": dict(by_dtype), "tally": dict(tally), "reruns": reruns,
            "failures": failures, "seconds": time.perf_counter() - started}  # fmt: skip


def corpus(folder: Path) -> list[tuple[str, int, str, bool]]:
    """(case, re-runs, first rule, verified) for every dev-corpus case."""
    rows = []
    for path in sorted(folder.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"case_{path.stem}", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model, args = module.build()
        loss = {"loss_fn": module.loss_fn, "target": module.target} \
            if hasattr(module, "loss_fn") else {}  # fmt: skip
        report = shapecheck.explain(model, *args, **loss)
        first = report.diagnoses[0] if report.diagnoses else None
        rows.append((path.stem, report.reruns, first.rule if first else "—",
                     bool(first and first.verified)))  # fmt: skip
    return rows


def _sweep_table(result: dict[str, Any]) -> list[str]:
    dtypes = ", ".join(f"{k} {v}" for k, v in sorted(result["by_dtype"].items()))
    runs = result["reruns"]
    lines = [f"{result['cases']:,} cases ({dtypes}), each explained in {len(MODES)} modes, in "
             f"{result['seconds']:.0f} s", "", "| count | value |", "|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v:,} |" for k, v in sorted(result["tally"].items())]
    if runs:
        lines.append(f"| re-runs per failing explain: median / worst | "
                     f"{statistics.median(runs):g} / {max(runs)} |")  # fmt: skip
    lines += ["", *[f"- {f}" for f in result["failures"][:20]]]
    return lines


def _corpus_table(rows: list[tuple[str, int, str, bool]]) -> list[str]:
    runs = [r for _, r, _, _ in rows]
    lines = ["| case | re-runs | first rule | verified |", "|---|---|---|---|"]
    lines += [f"| {name} | {r} | {rule} | {'yes' if ok else 'no'} |" for name, r, rule, ok in rows]
    lines.append(f"\n{len(rows)} cases: re-runs per explain median {statistics.median(runs):g}, "
                 f"worst {max(runs)}")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=0, help="broken models to sweep")
    parser.add_argument("--corpus", type=Path, help="the dev corpus folder (../shared/cases)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.cases:
        print("\n".join(_sweep_table(sweep(args.cases))))
    if args.corpus:
        print("\n".join(_corpus_table(corpus(args.corpus))))


if __name__ == "__main__":
    main()
