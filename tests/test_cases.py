"""The dev corpus (``../shared/cases``): real-world failing models, one file each.

Per case: the failure is located at the expected path; the summary test reports and asserts
the three rates: located (100%), right rule first (>= 90%), a verified fix (>= 80%; the first
diagnosis' fix or the repair plan it starts).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import shapecheck
from shapecheck import ShapecheckError
from shapecheck._changes import edits_of

CASES = Path(__file__).resolve().parents[2] / "shared" / "cases"
FILES = sorted(CASES.glob("*.py")) if CASES.is_dir() else []
FAMILY_RULES = {
    "missing-flatten": {"missing-flatten"}, "wrong-in-features": {"linear-in-features"},
    "head-in-features": {"linear-in-features"}, "view-batch": {"view-batch"},
    "channels": {"conv-in-channels", "channels-last"}, "missing-batch-dim": {"missing-batch-dim"},
    "input-too-small": {"input-too-small"}, "norm-features": {"norm-features"},
    "rnn-layout": {"rnn-input", "channels-last"}, "dtype": {"dtype"}, "device": {"device"},
    "embedding": {"embedding-index", "attention-dim"}, "loss-target": {"loss-target"},
    "skip-cat": {"cat-mismatch"},
}  # fmt: skip

pytestmark = pytest.mark.skipif(not FILES, reason=f"the dev corpus {CASES} is not here")


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"case_{path.stem.replace('-', '_')}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    """Explain every case once: {file name: outcome}."""
    found = {}
    for path in FILES:
        case = _load(path)
        model, args = case.build()
        loss = {"loss_fn": case.loss_fn, "target": case.target} if hasattr(case, "loss_fn") else {}
        report = shapecheck.explain(model, *args, **loss)
        first = report.diagnoses[0] if report.diagnoses else None
        expected = case.EXPECTED
        found[path.name] = {
            "path": report.failure.path if report.failure else None,
            "expected": expected,
            "message": str(report.failure.exception) if report.failure else "",
            "rule": first.rule if first else None,
            "right_rule": first is not None and first.rule in FAMILY_RULES[expected["family"]],
            "verified": first is not None and first.verified,
            "report": report, "model": model, "args": args, **loss,
        }  # fmt: skip
    return found


@pytest.mark.parametrize("name", [p.name for p in FILES])
def test_case_located(name: str, results: dict[str, dict[str, Any]]) -> None:
    outcome = results[name]
    assert outcome["path"] == outcome["expected"]["fails_at"]
    assert outcome["expected"]["error"] in outcome["message"]  # PyTorch's own error, traced


@pytest.mark.parametrize("name", [p.name for p in FILES])
def test_case_fix_is_kept_or_refused(name: str, results: dict[str, dict[str, Any]]) -> None:
    """A plan of layer edits is kept in a copy that really runs; any other fix is refused with
    the code to write. The user's model stays broken either way."""
    outcome = results[name]
    model, args, first = outcome["model"], outcome["args"], outcome["report"].diagnoses[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    in_code = [s.change.code for s in first.plan if edits_of(s.change) != "model"]
    if in_code or not first.verified:
        with pytest.raises(ShapecheckError, match=re.escape((in_code or [first.fix])[0])):
            first.apply(model)
    else:
        with torch.no_grad():
            out = first.apply(model)(*args)
            if "loss_fn" in outcome:
                outcome["loss_fn"](out, outcome["target"])
        assert [tuple(out.shape)] == first.output_shapes_after_fix
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    loss = {k: outcome[k] for k in ("loss_fn", "target") if k in outcome}
    assert shapecheck.explain(model, *args, **loss).failure is not None


def test_corpus_rates(results: dict[str, dict[str, Any]], record_property: Any) -> None:
    n = len(results)
    located = sum(r["path"] == r["expected"]["fails_at"] for r in results.values()) / n
    right = sum(r["right_rule"] for r in results.values()) / n
    verified = sum(r["right_rule"] and r["verified"] for r in results.values()) / n
    for key, value in (("located", located), ("right_rule", right), ("verified", verified)):
        record_property(key, f"{value:.0%}")
    print(f"\ndev corpus ({n} cases): located {located:.0%}, right rule first {right:.0%}, "
          f"verified fix {verified:.0%}")  # fmt: skip
    misses = {k: r["rule"] for k, r in results.items() if not r["right_rule"]}
    assert located == 1.0
    assert right >= 0.9, misses
    assert verified >= 0.8
