"""The notebook HTML in a real browser (headless Chromium): it fits 1000 px, the failing row and
the fix are on the first screen, shapes are monospaced, the failure's colour reads on light and
dark themes, and an nbconvert export keeps all that.

Chromium comes from Debian's ``chromium`` package (``.ci/run`` installs it); without it these
tests skip, saying so.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import shapecheck
from shapecheck.demo import seed_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import benchzoo  # noqa: E402
import screenshot as browser_page  # noqa: E402

BROWSER = browser_page.find_chromium()
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium on PATH (Debian: apt-get install chromium; .ci/run "
    "installs it)"
)  # fmt: skip


def _seed() -> shapecheck.Report:
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return shapecheck.explain(seed_model(), image)


def _resnet() -> shapecheck.Report:
    torch.manual_seed(0)
    model = benchzoo.ResNet().eval()
    model.fc = nn.Linear(512, 1000)  # ResNet-18's head on ResNet-50's 2048 features
    return shapecheck.explain(model, torch.randn(1, 3, 64, 64))


@pytest.fixture(scope="module")
def seed() -> shapecheck.Report:
    return _seed()


def _measure(tmp_path: Path, document: str, name: str) -> dict[str, Any]:
    assert BROWSER is not None
    path = tmp_path / f"{name}.html"
    path.write_text(document, encoding="utf-8")
    return browser_page.measure(BROWSER, path)


def _first_screen(found: dict[str, Any]) -> None:
    assert found["viewport"] == browser_page.WIDTH
    assert found["scrollWidth"] <= browser_page.WIDTH, "the page scrolls sideways"
    assert found["failingRow"] is not None
    assert found["failingRow"] <= browser_page.HEIGHT, "the failing row is below the first screen"
    assert found["fix"] is not None
    assert found["fix"] <= browser_page.HEIGHT, "the fix is below the first screen"
    low, high = found["charWidths"]
    assert found["shapes"] > 5
    assert high - low < 0.05, "shapes are not monospaced: columns would not line up"
    low, high = found["evidenceLefts"]
    assert high - low < 0.5, "got / expected / PyTorch do not start in one column"


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_seed_report_fits_and_reads_on_light_and_dark(tmp_path: Path, seed, dark: bool):
    found = _measure(tmp_path, browser_page.page(seed._repr_html_(), dark=dark), "seed")
    _first_screen(found)
    assert found["failureContrast"] >= 4.5  # WCAG AA for text, on this theme's background


def test_a_resnet_report_shows_the_failure_and_fix_first_and_folds_its_table(tmp_path: Path):
    found = _measure(tmp_path, browser_page.page(_resnet()._repr_html_()), "resnet")
    _first_screen(found)
    assert found["details"] >= 2  # folded blocks open on a click, the whole table too


def test_an_nbconvert_export_keeps_the_explanation_aligned(tmp_path: Path, seed):
    nbformat = pytest.importorskip("nbformat", reason="needs the notebook extra: nbformat")
    nbconvert = pytest.importorskip("nbconvert", reason="needs the notebook extra: nbconvert")
    cell = nbformat.v4.new_code_cell("model(img.unsqueeze(0))")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "text/html": seed._repr_html_(), "text/plain": str(seed)})]  # fmt: skip
    notebook = nbformat.v4.new_notebook(cells=[cell])
    exported, _ = nbconvert.HTMLExporter(template_name="lab").from_notebook_node(notebook)
    _first_screen(_measure(tmp_path, browser_page.with_probe(exported), "exported"))


def test_the_screenshot_is_a_png_of_the_page(tmp_path: Path, seed):
    assert BROWSER is not None
    page = tmp_path / "seed.html"
    page.write_text(browser_page.page(seed._repr_html_(), probe=False), encoding="utf-8")
    png = tmp_path / "seed.png"
    browser_page.screenshot(BROWSER, page, png, height=600)
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (browser_page.WIDTH, 600)
