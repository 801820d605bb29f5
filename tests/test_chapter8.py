"""``examples/chapter8.ipynb`` runs from top to bottom in a real kernel (nbclient), on the shared
CIFAR-2 data for two epochs: the broken model's error explained, the fix kept, a trained model
and its plot. Skipped, saying why, without the data or the notebook extra."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "chapter8.ipynb"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    if not (DATA / "cifar-10-batches-py").is_dir():
        pytest.skip(f"no CIFAR-10 batches at {DATA / 'cifar-10-batches-py'}")
    nbformat = pytest.importorskip("nbformat", reason="needs the notebook extra: nbformat")
    nbclient = pytest.importorskip("nbclient", reason="needs the notebook extra: nbclient")
    pytest.importorskip("ipykernel", reason="needs the notebook extra: ipykernel")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as env:  # the kernel inherits these
        env.setenv("CIFAR10_DIR", str(DATA))
        env.setenv("CHAPTER8_EPOCHS", "2")
        env.setenv("OMP_NUM_THREADS", "1")  # a small CNN on 2 shared cores: threads only contend
        env.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        where = {"metadata": {"path": str(NOTEBOOK.parent)}}  # the notebook's folder, as Jupyter
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources=where).execute()  # fmt: skip
    return list(notebook.cells)


def _text(cell: Any) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _cell_with(cells: list[Any], code: str) -> Any:
    return next(c for c in cells if c.cell_type == "code" and code in c.source)


def test_the_notebook_is_stored_without_outputs():
    text = NOTEBOOK.read_text(encoding="utf-8")
    assert '"outputs": []' in text
    assert '"execution_count": null' in text


def test_the_broken_model_fails_and_shapecheck_explains_it(cells):
    broken = _cell_with(cells, "model(img.unsqueeze(0))")
    kinds = [o["output_type"] for o in broken.outputs]
    assert kinds == ["error", "display_data"]
    assert broken.outputs[0]["evalue"] == (
        "mat1 and mat2 shapes cannot be multiplied (64x8 and 512x32)"
    )
    shown = broken.outputs[1]["data"]
    assert "insert nn.Flatten() at index 6" in shown["text/plain"]
    assert "class='shapecheck'" in shown["text/html"]


def test_the_fix_is_kept_and_the_fixed_model_explained(cells):
    text = _text(_cell_with(cells, "report.diagnoses[0].apply(model)"))
    assert "6  Flatten" in text
    assert "(64, 3, 32, 32)" in text
    assert "(64, 2)" in text
    assert "✗" not in text


def test_two_epochs_train_and_plot(cells):
    text = _text(_cell_with(cells, "optimizer = torch.optim.SGD"))
    losses = [float(x) for x in re.findall(r"epoch \d+: loss ([\d.]+)", text)]
    assert len(losses) == 2
    assert losses[1] < losses[0]
    accuracy = float(re.search(r"validation accuracy ([\d.]+)", text).group(1))  # type: ignore[union-attr]
    assert accuracy > 0.7  # two classes: chance is 0.5
    plot = _cell_with(cells, "plt.plot")
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)
