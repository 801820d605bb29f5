"""The command line: ``shapecheck explain FILE.py:NAME --input ...`` and ``shapecheck demo``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shapecheck._cli import main
from shapecheck._compat import torch_at_least

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn

    from shapecheck.demo import seed_model, seed_model_fixed

    broken = seed_model()          # an instance
    Fixed = type("Fixed", (nn.Sequential,), {})  # a class
    def make_fixed():              # a factory
        return seed_model_fixed()
    def make_with_input():         # a factory that also gives the example input
        return seed_model_fixed(), (torch.randn(2, 3, 32, 32),)
    def make_number():
        return 3
    not_a_model = 42

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)
        def forward(self, x):
            return self.lin(x)
    """
)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_broken_instance_exits_1_and_shows_the_fix(models: Path, capsys):
    code, out, err = _run(capsys, "explain", f"{models}:broken", "--input", "1,3,32,32")
    assert code == 1
    assert err == ""
    assert "64x8 and 512x32" in out
    assert "fix (verified by a real run: the model then runs, output (1, 2))" in out


def test_factory_exits_0(models: Path, capsys):
    code, out, _ = _run(capsys, "explain", f"{models}:make_fixed", "--input", "1,3,32,32")
    assert code == 0
    assert "(1, 2)" in out
    assert "18,090 total" in out


def test_factory_with_its_own_input(models: Path, capsys):
    code, out, _ = _run(capsys, "explain", f"{models}:make_with_input")
    assert code == 0
    assert "(2, 3, 32, 32)" in out


def test_class_is_instantiated(models: Path, capsys):
    code, out, _ = _run(capsys, "explain", f"{models}:Small", "--input", "3x4")
    assert code == 0
    assert "(3, 2)" in out
    assert "Linear(4→2)" in out


def test_json_dry_run_dtype_depth(models: Path, capsys):
    code, out, _ = _run(capsys, "explain", f"{models}:broken", "--input", "1,3,32,32", "--json",
                        "--dry-run", "--dtype", "float32", "--depth", "0")  # fmt: skip
    assert code == 1
    data = json.loads(out)
    assert data["ok"] is False
    assert data["dry_run"] is True
    assert data["failure"]["path"] == "6"
    assert data["inputs"] == [{"shape": [1, 3, 32, 32], "dtype": "float32", "device": "cpu"}]
    assert data["diagnoses"][0]["rule"] == "missing-flatten"
    assert data["diagnoses"][0]["output_shapes_after_fix"] == [[1, 2]]
    # a float64 image into float32 weights fails at the first conv, as PyTorch says
    code, out, _ = _run(capsys, "explain", f"{models}:broken", "--input", "1,3,32,32", "--json",
                        "--dtype", "float64")  # fmt: skip
    data = json.loads(out)
    assert code == 1
    assert data["failure"]["path"] == "0"
    assert data["inputs"][0]["dtype"] == "float64"


def test_depth_folds_rows(models: Path, capsys):
    _, full, _ = _run(capsys, "explain", f"{models}:make_fixed", "--input", "1,3,32,32")
    _, folded, _ = _run(capsys, "explain", f"{models}:make_fixed", "--input", "1,3,32,32",
                        "--depth", "0")  # fmt: skip
    assert "Conv2d" in full
    assert "Conv2d" not in folded


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{m}:nothing_here", "--input", "1,4"], "defines no 'nothing_here'"),
        (["{m}:not_a_model", "--input", "1,4"], "not an nn.Module"),
        (["{m}:make_number", "--input", "1,4"], "not an nn.Module"),
        (["missing.py:model", "--input", "1,4"], "FILE.py:NAME"),
        (["{m}", "--input", "1,4"], "FILE.py:NAME"),
        (["{m}:Small", "--input", "a,b"], "'a,b' is not a shape"),
        (["{m}:Small"], "give the input shape"),
        (["{m}:Small", "--input", "0,4"], "non-positive"),
        (["{m}:Small", "--input", "2,4", "--dtype", "float33"], "unknown dtype 'float33'"),
        (["{m}:Small", "--input", "2,4", "--device", "gpu7"], "unknown device 'gpu7'"),
        (["{m}:Small", "--input", "2,4", "--depth", "-1"], "depth"),
    ],
)
def test_usage_errors_exit_2(models: Path, capsys, argv: list[str], message: str):
    code, out, err = _run(capsys, "explain", *(a.replace("{m}", str(models)) for a in argv))
    assert code == 2
    assert out == ""
    assert err.startswith("shapecheck: error: ")
    assert message in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2


def test_demo_in_process(capsys):
    code, out, _ = _run(capsys, "demo")
    assert code == 0
    assert out.count("shapecheck: Sequential") == 2
    assert "64x8 and 512x32" in out
    assert "6  Flatten" in out


def test_entry_point_runs_as_a_program(models: Path):
    """The real program, as a user starts it: exit codes cross the process boundary."""
    done = subprocess.run(
        [sys.executable, "-m", "shapecheck", "explain", f"{models}:broken", "--input", "1,3,32,32"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "missing" not in done.stderr
    assert "Traceback" not in done.stderr
    assert "insert nn.Flatten() at index 6" in done.stdout


def test_demo_piped_into_a_reader_that_leaves_early_exits_quietly():
    with subprocess.Popen(
        [sys.executable, "-m", "shapecheck", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    ) as process:  # closes both pipes and waits, even when an assertion below fails
        try:
            assert process.stdout is not None
            assert process.stderr is not None
            assert process.stdout.read(16)  # like `| head -c 16`
            process.stdout.close()
            errors = process.stderr.read().decode()
            assert process.wait(timeout=120) == 0
        finally:
            if process.poll() is None:
                process.kill()
    assert "BrokenPipeError" not in errors


@pytest.mark.skipif(not torch_at_least("2.13"), reason="contracts need torch >= 2.13")
def test_contract_prints_the_formulas_and_json(models: Path, capsys):
    code, out, err = _run(capsys, "contract", f"{models}:make_fixed", "--input", "4,3,32,32",
                          "--spec", "B 3 H W")  # fmt: skip
    assert (code, err) == (0, "")
    assert "  5  MaxPool2d        (B, 8, H//4, W//4)" in out
    assert "requires   (H//4)*(W//4) == 64" in out
    code, out, _ = _run(capsys, "contract", f"{models}:make_fixed", "--input", "4,3,32,32",
                        "--spec", "B 3 H W", "--json")  # fmt: skip
    data = json.loads(out)
    assert (code, data["outputs"], data["constraints"]) == (0, [["B", 2]], ["(H//4)*(W//4) == 64"])


@pytest.mark.skipif(not torch_at_least("2.13"), reason="contracts need torch >= 2.13")
def test_contract_uses_the_factorys_input_and_says_what_is_missing(models: Path, capsys):
    code, out, _ = _run(capsys, "contract", f"{models}:make_with_input", "--spec", "B 3 H W")
    assert code == 0
    assert "example B=2, H=32, W=32" in out
    code, _, err = _run(capsys, "contract", f"{models}:make_fixed", "--input", "4,3,32,32")
    assert code == 2
    assert "give the spec" in err
    code, _, err = _run(capsys, "contract", f"{models}:make_fixed", "--input", "1,3,32,32",
                        "--spec", "B 3 H W")  # fmt: skip
    assert code == 2
    assert "B=1: a symbol's example size must be >= 2" in err
