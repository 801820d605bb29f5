"""'Verified' means it works: every verified plan, applied to the model, really runs.

Random broken models (``broken.py``) in float32, float64, bfloat16 and float16, explained for
real and dry: for every diagnosis whose plan is verified, the plan is applied (``apply`` when it
edits only layers, else the recorded input / forward / target edit) and the model is run for real
on the real inputs. Not one exception is allowed. A third mode allows no real run at all
(as for a model over the real-run budget): plans are then verified by dry runs, and still must
really run. The long run (>= 5,000 cases) is ``benchmarks/repair_check.py``; its result is in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from broken import Case, broken_cases
from hypothesis import HealthCheck, given, note, settings
from zoo import fixed, run_fixed, tensor_shapes

import shapecheck
import shapecheck._repair
import shapecheck._trace
from shapecheck import Diagnosis
from shapecheck._changes import edits_of

CI_CASES = 200  # x 3 modes; the long run is benchmarks/repair_check.py
#: real; dry (then confirmed by a real run, as it is affordable); dry with no real run allowed
MODES = ("real", "dry", "dry, shapes only")


@contextmanager
def mode(name: str) -> Iterator[bool]:
    """Yields ``dry_run`` for ``explain``; "shapes only" sets the real-run budget to 0 bytes,
    as for a model too large to run for real, so plans are verified by dry runs alone."""
    if name != "dry, shapes only":
        yield name != "real"
        return
    saved = shapecheck._trace.REAL_RUN_BYTES, shapecheck._repair.REAL_RUN_BYTES
    shapecheck._trace.REAL_RUN_BYTES = shapecheck._repair.REAL_RUN_BYTES = 0
    try:
        yield True
    finally:
        shapecheck._trace.REAL_RUN_BYTES, shapecheck._repair.REAL_RUN_BYTES = saved


def run_plan(case: Case, diagnosis: Diagnosis) -> Any:
    """The model with the diagnosis's plan, run for real: ``apply`` for layer edits, else the
    recorded input or forward edit. Raises whatever the real run raises."""
    if all(edits_of(step.change) == "model" for step in diagnosis.plan):
        with torch.no_grad():
            return diagnosis.apply(case.model)(*case.args)
    # a copy: running a model in training mode updates its BatchNorm statistics
    with fixed(copy.deepcopy(case.model), case.args, diagnosis) as view, torch.no_grad():
        return run_fixed(view)


def false_claims(case: Case, dry_run: bool) -> list[str]:
    """Every verified plan of the case's diagnoses that does not really run, or runs to other
    output shapes than the report said."""
    report = shapecheck.explain(case.model, *case.args, dry_run=dry_run)
    found = []
    for diagnosis in report.diagnoses:
        if not diagnosis.verified:
            continue
        try:
            out = run_plan(case, diagnosis)
        except Exception as error:
            found.append(f"{diagnosis.rule} ({diagnosis.verified_by}): {error!r}")
            continue
        if tensor_shapes(out) != diagnosis.output_shapes_after_fix:
            found.append(f"{diagnosis.rule}: ran to {tensor_shapes(out)}, said "
                         f"{diagnosis.output_shapes_after_fix}")  # fmt: skip
    return found


@settings(max_examples=CI_CASES, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(broken_cases())
def test_every_verified_plan_really_runs(case: Case) -> None:
    note(case.describe())
    before = copy.deepcopy(case.model.state_dict())
    for name in MODES:
        with mode(name) as dry_run:
            assert false_claims(case, dry_run) == [], (name, case.describe())
    now = case.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in before.items())  # the model is untouched
