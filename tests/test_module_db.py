"""PyTorch's own module test database as the oracle: every nn module, every sample input.

For each sample (CPU, float32, in train and eval mode where they differ) the module is run for
real under plain forward hooks of this file's own making; explain(), real and dry, must report
the same output shapes, the same shapes for every module call, and the unique parameter count.
Where the real forward raises, explain must report a failure of the same exception type.

The default run takes a deterministic sample of about one in eight inputs (always the first of
each module); ``SHAPECHECK_FULL_MODULE_DB=1`` runs all of them (about 2,000).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from zoo import capture, tensor_shapes, unique_params

import shapecheck

pytest.importorskip("expecttest")  # torch.testing._internal imports it
common_modules = pytest.importorskip("torch.testing._internal.common_modules")

FULL = os.environ.get("SHAPECHECK_FULL_MODULE_DB") == "1"
STRIDE = 1 if FULL else 8

#: (module name, sample desc) -> why the dry run cannot match: PyTorch's fake/meta kernels differ
#: from the real ones there. Asserted to still differ, so this list shrinks when PyTorch is fixed.
DRY_DIVERGES = {
    ("nn.MultiLabelMarginLoss", "1d_reduction_none"):
        "the meta kernel of multilabel_margin_loss returns shape (1,) for a 1-D input with "
        "reduction='none'; the CPU kernel returns ()",
}  # fmt: skip
#: modules whose float32 samples make the real kernel raise (their _random_samples are float64)
#: while the fake kernel does not check the dtype: a dry run cannot see that error.
DRY_MISSES_ERROR = {"nn.FractionalMaxPool3d": "fractional_max_pool3d's meta kernel skips the "
                    "'_random_samples must have the input's dtype' check"}  # fmt: skip


def _samples(info: Any) -> Iterator[tuple[bool, int, Any]]:
    for training in (True, False) if info.train_and_eval_differ else (False,):
        inputs = info.module_inputs_func(
            info, device="cpu", dtype=torch.float32, requires_grad=False, training=training
        )
        for index, sample in enumerate(inputs):
            if index % STRIDE == 0 or (info.name, sample.desc) in DRY_DIVERGES:
                yield training, index, sample


def _build(info: Any, sample: Any, training: bool) -> nn.Module:
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module: nn.Module = info.module_cls(*args, **kwargs)
    return module.train(training)


def _inputs(sample: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return copy.deepcopy((sample.forward_input.args, sample.forward_input.kwargs))


def _check(info: Any, training: bool, index: int, sample: Any, dry_run: bool) -> str | None:
    """None when explain agrees with the real forward, else what differs."""
    module = _build(info, sample, training)
    reference = copy.deepcopy(module)
    args, kwargs = _inputs(sample)
    seen = capture(reference, *args, **kwargs)
    args, kwargs = _inputs(sample)
    report = shapecheck.explain(module, *args, dry_run=dry_run, **kwargs)
    if seen.error is not None:
        if dry_run and info.name in DRY_MISSES_ERROR:
            return None if report.ok else "the dry run now sees the error: update DRY_MISSES_ERROR"
        if report.failure is None or type(report.failure.exception) is not type(seen.error):
            return f"real forward raised {seen.error!r}, explain: {report.failure}"
        return None
    if report.failure is not None:
        return f"explain failed: {report.failure.exception!r}"
    problems = []
    rows = [(x.path, x.output_shapes) for x in report.layers if x.kind == "module"]
    # Transformer's eval fast path passes ragged (nested) tensors between its layers under plain
    # hooks; explain's function mode turns the fast path off. Those calls have no shape to match.
    ragged = {i for i, (_, shapes) in enumerate(seen.calls) if (-1,) in shapes}
    if [r for i, r in enumerate(rows) if i not in ragged] != [
        c for i, c in enumerate(seen.calls) if i not in ragged
    ] or len(rows) != len(seen.calls):
        problems.append(f"module calls {rows} != real {seen.calls}")
    if report.output_shapes != tensor_shapes(seen.output):
        problems.append(f"outputs {report.output_shapes} != real {tensor_shapes(seen.output)}")
    if report.total_params != unique_params(reference):
        problems.append(f"total {report.total_params} != unique {unique_params(reference)}")
    if getattr(module, "has_uninitialized_params", lambda: False)() != info.is_lazy:
        problems.append("explain materialised the user's lazy module")
    known = DRY_DIVERGES.get((info.name, sample.desc)) if dry_run else None
    if known is not None:
        return None if problems else f"no longer diverges ({known}): update DRY_DIVERGES"
    return "; ".join(problems) or None


def _infos() -> list[Any]:
    return sorted(common_modules.module_db, key=lambda info: info.name)


TALLY: dict[str, list[int]] = {"real": [0, 0], "dry": [0, 0]}  # mode -> [passed, checked]


@pytest.fixture(scope="module", autouse=True)
def _print_tally(pytestconfig: pytest.Config) -> Iterator[None]:
    """Say how many samples agreed, in the terminal summary of the run."""
    yield
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capturing = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capturing is None or not any(n for _, n in TALLY.values()):
        return
    scope = "all" if FULL else f"1 in {STRIDE}; SHAPECHECK_FULL_MODULE_DB=1 for all"
    with capturing.global_and_fixture_disabled():
        reporter.write_line("")
        for mode, (passed, checked) in TALLY.items():
            reporter.write_line(f"module_db {mode}: {passed} of {checked} samples agree ({scope})")


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry"])
@pytest.mark.parametrize("info", _infos(), ids=lambda info: info.name)
def test_module_db(info: Any, dry_run: bool):
    failures = []
    checked = 0
    with warnings.catch_warnings():
        # the modules' own deprecation warnings (size_average=, nested tensors) are not ours
        warnings.simplefilter("ignore")
        for training, index, sample in _samples(info):
            checked += 1
            problem = _check(info, training, index, sample, dry_run)
            if problem:
                mode = "train" if training else "eval"
                failures.append(f"#{index} {sample.desc or '(default)'} [{mode}]: {problem}")
    tally = TALLY["dry" if dry_run else "real"]
    tally[0] += checked - len(failures)
    tally[1] += checked
    assert checked > 0
    assert not failures, f"{len(failures)} of {checked} samples differ:\n" + "\n".join(failures)
