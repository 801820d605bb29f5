"""The notebook extension, run as a learner runs it: a real kernel executes real cells (nbclient),
and a real script crashes with ``shapecheck.enable()`` on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
from torch import nn

import shapecheck
from shapecheck._notebook import explain_error, failing_call, parse_magic
from shapecheck.demo import seed_model

ENV = dict(os.environ)  # explicit: what C libraries export behind Python's back stays out

BOOK_NET = """\
import torch.nn.functional as F
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 2)
    def forward(self, x):
        out = F.max_pool2d(torch.tanh(self.conv1(x)), 2)
        out = F.max_pool2d(torch.tanh(self.conv2(out)), 2)
        out = torch.tanh(self.fc1(out))
        return self.fc2(out)
Net()(img.unsqueeze(0))"""

CELLS = [
    "%load_ext shapecheck",
    "import torch\nfrom shapecheck.demo import seed_model\n"
    "model = seed_model()\nimg = torch.randn(3, 32, 32)",
    "out = model(img.unsqueeze(0))",  # the seed's failing cell
    BOOK_NET,
    "%shapecheck model img.unsqueeze(0)",
    "%shapecheck model input_sizes=(1, 3, 32, 32)",
    "fixed = _.diagnoses[0].apply(model)\nfixed(img.unsqueeze(0)).shape",
    "from torch.nn.modules import module\n"
    "len(module._global_forward_pre_hooks), len(module._global_forward_hooks)",
    "%unload_ext shapecheck\nmodel(img.unsqueeze(0))",
]


@pytest.fixture(scope="module")
def executed() -> list[Any]:
    nbformat = pytest.importorskip("nbformat", reason="needs the notebook extra: nbformat")
    nbclient = pytest.importorskip("nbclient", reason="needs the notebook extra: nbclient")
    pytest.importorskip("ipykernel", reason="needs the notebook extra: ipykernel")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(code) for code in CELLS]
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     allow_errors=True)  # fmt: skip
    client.execute()
    return [cell.outputs for cell in notebook.cells]


def _kinds(outputs: list[Any]) -> list[str]:
    return [o["output_type"] for o in outputs]


def test_a_failing_seed_cell_keeps_its_traceback_then_shows_the_explanation(executed):
    outputs = executed[2]
    assert _kinds(outputs) == ["error", "display_data"]
    error, shown = outputs
    assert error["ename"] == "RuntimeError"
    assert error["evalue"] == "mat1 and mat2 shapes cannot be multiplied (64x8 and 512x32)"
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["traceback"]))  # no colours
    assert "----> 1 out = model(img.unsqueeze(0))" in traceback
    html, text = shown["data"]["text/html"], shown["data"]["text/plain"]
    assert "class='shapecheck'" in html
    assert "insert nn.Flatten() at index 6" in html
    assert "(1, 8, 8, 8)" in html
    assert "layer '6' (Linear(512→32)) cannot take its input" in text
    assert "insert nn.Flatten() at index 6" in text
    assert "[real forward]" in text
    assert "notes" not in error  # not added twice: the traceback is PyTorch's own


def test_a_cell_defined_model_is_placed_as_ipython_places_it(executed):
    text = executed[3][1]["data"]["text/plain"]
    assert "out = torch.flatten(out, 1)   # before Cell In[4], line 13:" in text
    assert "ipykernel" not in text


def test_the_magic_explains_and_its_usage_errors_are_one_line(executed):
    (result,) = executed[4]
    assert result["output_type"] == "execute_result"
    assert "insert nn.Flatten() at index 6" in result["data"]["text/plain"]
    (usage,) = executed[5]  # IPython prints usage errors: one line on stderr, no traceback
    assert usage["name"] == "stderr"
    assert usage["text"].startswith("UsageError: explain() has no keyword input_sizes=; did you")
    (shape,) = executed[6]
    assert "torch.Size([1, 2])" in shape["data"]["text/plain"]


def test_after_unload_a_failing_cell_shows_only_its_traceback(executed):
    assert _kinds(executed[8]) == ["error"]


def test_cells_that_work_show_nothing_more_and_no_module_is_hooked(executed):
    assert executed[0] == []
    assert executed[1] == []
    (hooks,) = executed[7]  # loaded, and still nothing runs per module call
    assert hooks["data"]["text/plain"] == "(0, 0)"


def test_enable_in_a_script_adds_the_explanation_after_the_traceback(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent("""
        import torch, shapecheck
        from shapecheck.demo import seed_model
        shapecheck.enable()
        model = seed_model()
        model(torch.randn(4, 3, 32, 32))
    """)
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, check=False, env=ENV)  # fmt: skip
    assert done.returncode == 1
    err = done.stderr
    assert err.index("Traceback") < err.index("RuntimeError: mat1 and mat2 shapes cannot be") \
        < err.index("shapecheck: the forward pass, layer by layer")  # fmt: skip
    assert "insert nn.Flatten() at index 6" in err


def test_enable_and_disable_put_the_excepthook_back():
    before = sys.excepthook
    shapecheck.enable()
    try:
        assert sys.excepthook is not before
        shapecheck.enable()  # twice changes nothing
    finally:
        shapecheck.disable()
    assert sys.excepthook is before


class _Scaled(nn.Module):
    """Needs a keyword argument: clarify() cannot replay it, the traceback's frame can."""

    def __init__(self) -> None:
        super().__init__()
        self.body = seed_model()

    def forward(self, x: torch.Tensor, *, scale: float) -> torch.Tensor:
        out: torch.Tensor = self.body(x) * scale
        return out


def test_the_failing_call_comes_from_the_traceback_with_its_keywords():
    model, x = _Scaled(), torch.randn(1, 3, 32, 32)
    with pytest.raises(RuntimeError) as caught:
        model(x, scale=2.0)
    found = failing_call(caught.value.__traceback__)
    assert found is not None
    module, args, kwargs = found
    assert module is model
    assert args[0] is x
    assert kwargs == {"scale": 2.0}
    report = explain_error(caught.value)
    assert isinstance(report, shapecheck.Report)
    assert report.model_type == "_Scaled"
    assert report.diagnoses[0].rule == "missing-flatten"


def test_errors_outside_modules_and_already_explained_ones_are_left_alone():
    with pytest.raises(ZeroDivisionError) as plain:
        _ = 1 / 0
    assert explain_error(plain.value) is None
    with pytest.raises(RuntimeError) as caught, shapecheck.clarify():
        seed_model()(torch.randn(1, 3, 32, 32))
    assert explain_error(caught.value) is None  # clarify's note is there already


def test_magic_arguments_are_expressions_split_by_spaces_or_commas():
    scope = {"model": "m", "torch": torch}
    args, kwargs = parse_magic("model torch.zeros(1, 3) dry_run=True", scope)
    assert args[0] == "m"
    assert args[1].shape == (1, 3)
    assert kwargs == {"dry_run": True}
    assert parse_magic("model, [1, 2], depth=1", scope) == (["m", [1, 2]], {"depth": 1})
    with pytest.raises(shapecheck.UsageError, match="write %shapecheck model x"):
        parse_magic("model (", scope)
