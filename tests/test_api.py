"""``shapecheck.__all__`` is exactly the public API, and the Report's documented names exist."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import types

import shapecheck

#: what issue 2 promises; other issues may add names, none may drop these
CORE = {
    "Diagnosis", "Failure", "Layer", "Report", "ShapeError", "ShapecheckError", "TensorInfo",
    "UsageError", "clarify", "explain",
}  # fmt: skip


def _public_names() -> set[str]:
    names = set(dir(shapecheck))
    return {
        n for n in names
        if not n.startswith("_") and not isinstance(getattr(shapecheck, n), types.ModuleType)
    }  # fmt: skip


def test_all_is_exactly_the_public_names():
    assert len(shapecheck.__all__) == len(set(shapecheck.__all__)), "duplicates in __all__"
    assert set(shapecheck.__all__) == _public_names()
    assert sorted(shapecheck.__all__, key=str.lower) == sorted(shapecheck.__all__, key=str.lower)


def test_core_api_is_there():
    assert set(shapecheck.__all__) >= CORE


def test_every_public_name_is_documented_and_resolves():
    for name in shapecheck.__all__:
        value = getattr(shapecheck, name)
        assert inspect.getdoc(value), f"{name} has no docstring"
        assert getattr(value, "__module__", "").startswith("shapecheck"), name


def test_star_import_gives_exactly_all():
    namespace: dict[str, object] = {}
    exec("from shapecheck import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(shapecheck.__all__)


def test_explain_signature_matches_the_issue():
    params = inspect.signature(shapecheck.explain).parameters
    kinds = {n: p.kind for n, p in params.items()}
    assert list(params)[:2] == ["model", "inputs"]
    assert kinds["inputs"] is inspect.Parameter.VAR_POSITIONAL
    for name in ("input_size", "dtypes", "device", "depth", "dry_run"):
        assert kinds[name] is inspect.Parameter.KEYWORD_ONLY, name
    assert params["dry_run"].default is False
    assert list(params)[-1] == "forward_kwargs"


def test_report_and_records_carry_the_documented_names():
    layer_fields = {f.name for f in dataclasses.fields(shapecheck.Layer)}
    assert {"path", "kind", "type", "depth", "params", "trainable"} <= layer_fields
    assert {"input_shapes", "output_shapes"} <= set(dir(shapecheck.Layer))
    failure = {f.name for f in dataclasses.fields(shapecheck.Failure)} | set(
        dir(shapecheck.Failure)
    )
    assert {"path", "type", "input_shapes", "exception", "source"} <= failure
    diagnosis = {f.name for f in dataclasses.fields(shapecheck.Diagnosis)} | set(
        dir(shapecheck.Diagnosis)
    )
    assert {"rule", "path", "message", "fix", "change", "plan", "verified", "verified_by",
            "keeps_batch", "output_shapes_after_fix", "apply"} <= diagnosis  # fmt: skip
    step = {f.name for f in dataclasses.fields(shapecheck.Step)}
    assert {"rule", "path", "headline", "evidence", "cause", "arithmetic", "change",
            "outcome"} <= step  # fmt: skip
    report = {f.name for f in dataclasses.fields(shapecheck.Report)} | set(dir(shapecheck.Report))
    assert {"ok", "layers", "total_params", "trainable_params", "output_shapes", "failure",
            "diagnoses", "raise_for_failure", "to_dict", "_repr_html_"} <= report  # fmt: skip


def test_records_are_frozen():
    records = (shapecheck.Layer, shapecheck.Failure, shapecheck.Diagnosis, shapecheck.Step,
               shapecheck.Outcome, shapecheck.TensorInfo, shapecheck.TrainingMemory)  # fmt: skip
    for record in records:
        assert record.__dataclass_params__.frozen, record.__name__  # type: ignore[attr-defined]


def test_importing_shapecheck_is_light():
    """``import shapecheck`` (the pytest plugin's path) imports neither torch nor IPython, and
    ``shapecheck.enable()`` outside IPython does not import IPython either."""
    code = ("import sys, shapecheck; print('torch' in sys.modules, 'IPython' in sys.modules); "
            "shapecheck.enable(); print('IPython' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    assert done.stdout.split() == ["False", "False", "False"]


def test_ipython_finds_the_extension_hooks_without_them_being_public_api():
    assert callable(shapecheck.load_ipython_extension)  # type: ignore[attr-defined]
    assert callable(shapecheck.unload_ipython_extension)  # type: ignore[attr-defined]
    assert "load_ipython_extension" not in shapecheck.__all__
