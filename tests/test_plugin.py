"""The pytest plugin, run in inner pytest sessions (pytester, in-process: torch loads once)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import shapecheck
import shapecheck.demo
import shapecheck.strategies
import shapecheck.testing
from shapecheck._compat import torch_at_least
from shapecheck.pytest_plugin import pytest_assertrepr_compare


@pytest.fixture(scope="module", autouse=True)
def _load_torch_once() -> None:
    """Import everything the inner sessions use before pytester snapshots ``sys.modules``.

    In-process sessions roll ``sys.modules`` back after each test, and torch modules cannot be
    imported twice in one process (its C extension and op registrations are global). Explaining
    a failing model loads the lazily imported parts (fake tensors, sympy, torch._inductor).
    """
    shapecheck.explain(shapecheck.demo.seed_model(), torch.randn(1, 3, 32, 32))
    assert shapecheck.strategies
    assert shapecheck.testing


MODELS = """
import pytest
import torch
from shapecheck.demo import seed_model, seed_model_fixed
from shapecheck.testing import assert_batch_polymorphic, assert_output_shape

@pytest.fixture
def model():
    return seed_model_fixed()
"""

PASSING = (
    MODELS
    + """
@pytest.mark.shapes(input="B 3 32 32", output="B 2")
def test_returned_model():
    return seed_model_fixed()

@pytest.mark.shapes(input="B 3 32 32", output="B 2", batch_sizes=[1, 4])
def test_model_fixture(model):
    assert model.training

def test_examples_option_sets_the_budget(model):
    assert assert_batch_polymorphic(model, "B 3 32 32", "B 2") == [1, 2, 3]

def test_output_shape(model):
    assert_output_shape(model, torch.randn(2, 3, 32, 32), input_spec="B 3 H W", spec="B 2")
"""
)

FAILING = (
    MODELS
    + """
@pytest.mark.shapes(input="B 3 32 32", output="B 2")
def test_seed_contract():
    return seed_model()

def test_size_compare():
    assert torch.randn(4, 8, 8, 8).shape == (4, 512)

def test_report_compare(model):
    report = assert_output_shape(model, torch.randn(4, 3, 32, 32), spec="B 2")
    assert report.output_shapes == [(4, 3)]

@pytest.mark.shapes("B 3 32 32", "B 2")
def test_positional_marker(model):
    pass

@pytest.mark.shapes(input="B 3 32 32", output="B 2")
def test_no_model():
    pass
"""
)


def test_a_passing_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_contract=PASSING)
    result = pytester.runpytest_inprocess("--shapecheck-examples=0", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_a_failing_suite_shows_the_layer_the_shapes_and_the_diagnosis(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_contract=FAILING)
    result = pytester.runpytest_inprocess("--shapecheck-examples=0", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=5)
    result.stdout.fnmatch_lines([
        "*at batch size 1: the forward pass raised RuntimeError in layer '6' (Linear)",
        "*diagnosis: missing-flatten*",
        "*layer '6' (Linear(512→32)) cannot take its input",
        "*got       (1, 8, 8, 8)   from '5' (MaxPool2d)",
        "*expected  (*, 512)*",
        "*fix (verified*insert nn.Flatten() at index 6",
    ])  # fmt: skip
    result.stdout.fnmatch_lines([
        "*shape (4, 8, 8, 8) == (4, 512)",
        "*rank   4 != 2",
        "*dim 1  8 != 512",
        "*numel  2,048 == 2,048: the same elements in another layout*",
    ])  # fmt: skip
    text = result.stdout.str()  # fnmatch would read the brackets below as character classes
    assert "assert shapes [(4, 2)] == [(4, 3)]" in text
    assert "shape 0: (4, 2) != (4, 3)" in text
    result.stdout.fnmatch_lines(["*use @pytest.mark.shapes(input='B 3 32 32', output='B 2')*"])
    result.stdout.fnmatch_lines(["*needs the test to return an nn.Module or take a `model`*"])


SNAPSHOT = """
import torch
from torch import nn
from shapecheck.demo import seed_model_fixed

def test_cifar2(shape_snapshot):
    model = seed_model_fixed()
    {change}
    shape_snapshot(model, torch.randn(2, 3, 32, 32))
"""


def test_snapshot_create_pass_change_fail_update_pass(pytester: pytest.Pytester) -> None:
    def run(change: str = "", *args: str) -> pytest.RunResult:
        pytester.makepyfile(test_snap=SNAPSHOT.format(change=change))
        return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)

    stored = pytester.path / "__shapes__" / "test_snap" / "test_cifar2.txt"
    missing = run()
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(
        ["*no shape snapshot at *test_cifar2.txt*", "*--shapecheck-update*"]
    )
    assert not stored.exists()

    created = run("", "--shapecheck-update")
    created.assert_outcomes(passed=1)
    created.stdout.fnmatch_lines(["shapecheck: 1 snapshot(s) written, 0 updated"])
    assert "  7  Linear(512→32)" in stored.read_text(encoding="utf-8")
    run().assert_outcomes(passed=1)

    wider = "model[3] = nn.Conv2d(16, 8, 5, padding=2)"
    changed = run(wider)
    changed.assert_outcomes(failed=1)
    changed.stdout.fnmatch_lines([
        "*the layer shapes differ from the snapshot*test_cifar2.txt",
        "*--- snapshot", "*+++ now",
        "*-  3  Conv2d(16→8, k=3, p=1)*1,160",
        "*+  3  Conv2d(16→8, k=5, p=2)*3,208",
        "*run pytest --shapecheck-update if the change is intended",
    ])  # fmt: skip

    run(wider, "--shapecheck-update").stdout.fnmatch_lines(["*0 snapshot(s) written, 1 updated"])
    run(wider).assert_outcomes(passed=1)
    assert "k=5, p=2" in stored.read_text(encoding="utf-8")


def test_a_negative_example_budget_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--shapecheck-examples=-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--shapecheck-examples must be >= 0, got -1*"])


def test_a_suite_that_does_not_use_shapecheck_never_imports_torch(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    assert (1, 2) != (1, 3)\n")
    code = textwrap.dedent("""
        import sys, pytest
        code = pytest.main(["-q", "-p", "no:cacheprovider", "test_plain.py"])
        assert "shapecheck.pytest_plugin" in sys.modules, "the plugin was not loaded"
        assert "torch" not in sys.modules, "loading the plugin imported torch"
        sys.exit(code)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=pytester.path, timeout=120,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ((4, 2), (4, 3), None),  # plain tuples are left to pytest: they are often not shapes
        ([1, 2], [1, 3], None),
        ([(2, 3)], [(2, 3), (1,)], ["shapes [(2, 3)] == [(2, 3), (1,)]", "  1 shape(s) != 2"]),
    ],
)
def test_assertrepr_compare_only_explains_shapes(
    left: object, right: object, expected: list[str] | None
) -> None:
    assert pytest_assertrepr_compare(None, "==", left, right) == expected  # type: ignore[arg-type]


def test_assertrepr_compare_on_torch_size() -> None:
    lines = pytest_assertrepr_compare(None, "==", torch.Size([2, 3]), (2, 4))  # type: ignore[arg-type]
    assert lines == ["shape (2, 3) == (2, 4)", "  dim 1  3 != 4", "  numel  6 != 8"]
    assert pytest_assertrepr_compare(None, "!=", torch.Size([2]), (3,)) is None  # type: ignore[arg-type]


def test_the_cifar2_contract_example_passes(pytester: pytest.Pytester) -> None:
    example = Path(__file__).parents[1] / "examples" / "test_cifar2_contract.py"
    result = pytester.runpytest_inprocess(str(example), "-p", "no:cacheprovider",
                                          "--shapecheck-examples=1")  # fmt: skip
    result.assert_outcomes(passed=8)


SYMBOLIC = """
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from shapecheck.demo import seed_model_fixed

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16 * 16, 2)

    def forward(self, x):
        return self.fc(F.max_pool2d(self.conv(x), 2).view(-1, 8 * 16 * 16))

@pytest.mark.shapes(input="B 3 H W", output="B 2", symbolic=True, example=(4, 3, 32, 32))
def test_cifar2():
    return seed_model_fixed()

@pytest.mark.shapes(input="B 3 H W", output="B 2", symbolic=True, B=4, H=32, W=32)
def test_view_mixes_the_batch():
    return Net()
"""


@pytest.mark.skipif(not torch_at_least("2.13"), reason="contracts need torch >= 2.13")
def test_the_marker_checks_the_contract_symbolically(pytester: pytest.Pytester) -> None:
    import shapecheck._contract  # noqa: F401  (loaded before the inner session snapshots modules)

    pytester.makepyfile(test_symbolic=SYMBOLIC)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*input-size contract broken*",
        "*dim 0 is (B*(H//2)*(W//2))//256, not B for every size*",
    ])  # fmt: skip
