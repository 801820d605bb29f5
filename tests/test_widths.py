"""Text that fits any width: 60, 80, 100 and 120 columns, golden files per width, nothing cut.

Golden files live in ``tests/golden/widths/<model>-<width>.txt``; rewrite them, after checking
the change is intended, with ``SHAPECHECK_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from golden import check_golden
from torch import nn
from zoo import ZOO, BookNet

import shapecheck
from shapecheck._fold import visible_rows
from shapecheck._render import _window
from shapecheck._text import shape
from shapecheck.demo import seed_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import benchzoo

WIDTHS = (60, 80, 100, 120)


def _image(*dims: int) -> torch.Tensor:
    return torch.randn(*dims, generator=torch.Generator().manual_seed(0))


def _resnet50(broken: bool = False) -> shapecheck.Report:
    torch.manual_seed(0)
    model = benchzoo.ResNet().eval()
    if broken:  # the head written for ResNet-18's 512 features
        model.fc = nn.Linear(512, 1000)
    return shapecheck.explain(model, _image(1, 3, 64, 64))


def _gpt2() -> shapecheck.Report:
    torch.manual_seed(0)
    model, (tokens,) = benchzoo.gpt2_small(seq=16)
    return shapecheck.explain(model, tokens)


def _lstm() -> shapecheck.Report:
    torch.manual_seed(0)
    model, (tokens,) = benchzoo.lstm(batch=4, seq=16)
    return shapecheck.explain(model, tokens)


MODELS: dict[str, Callable[[], shapecheck.Report]] = {
    "seed": lambda: shapecheck.explain(seed_model(), _image(1, 3, 32, 32)),
    "book-net": lambda: shapecheck.explain(BookNet(), _image(2, 3, 64, 64)),
    "lstm": _lstm,
    "resnet50": _resnet50,
    "resnet50-broken": lambda: _resnet50(broken=True),
    "gpt2": _gpt2,
}


@pytest.fixture(scope="module")
def reports() -> dict[str, shapecheck.Report]:
    return {name: make() for name, make in MODELS.items()}


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", MODELS)
def test_golden_at_each_width(reports: dict[str, shapecheck.Report], name: str, width: int):
    text = reports[name].render(width, ascii=False)
    check_golden("widths", f"{name}-{width}", text)
    too_wide = [line for line in text.splitlines() if len(line) > width]
    assert not too_wide, too_wide


def _uncut(report: shapecheck.Report, text: str) -> None:
    """Every row's type name with its hyper-parameters, and every shape, appears whole (a name
    wider than the text may fold after a comma)."""
    text = re.sub(r",\n +", ", ", text)
    rows = visible_rows(report.layers, depth=report.depth, fold=report.fold)
    if "rows not shown here" in text:  # a failing big model: the rows around the failure
        rows = _window(rows, report.layers)[0]
    for row in rows:
        layer = row.layer
        assert layer.summary in text, layer.summary
        for dims in [*layer.input_shapes, *layer.output_shapes]:
            assert shape(dims) in text, (layer.path, dims)
    assert "…" not in text


@pytest.mark.parametrize("width", WIDTHS)
def test_type_names_channel_counts_and_shapes_are_never_cut(
    reports: dict[str, shapecheck.Report], width: int
):
    for report in reports.values():
        _uncut(report, report.render(width, ascii=False))


@pytest.mark.parametrize("width", WIDTHS)
def test_every_zoo_model_fits_every_width(width: int):
    for entry in ZOO:
        model, args, kwargs = entry.build()
        report = shapecheck.explain(model, *args, **kwargs)
        text = report.render(width, ascii=False)
        assert max(len(line) for line in text.splitlines()) <= width, entry.name
        _uncut(report, text)


def _rows(text: str) -> list[str]:
    """The table's rows: the lines between the rule under the header and the first blank."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line) == {"─"}) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return [line for line in lines[start:end]
            if not line.startswith((" " * 20, "* "))]  # fmt: skip


def test_resnet50_folds_to_at_most_40_rows_and_fold_false_gives_every_call(
    reports: dict[str, shapecheck.Report],
):
    report = reports["resnet50"]
    folded = _rows(report.render(120))
    assert len(folded) <= 40, len(folded)
    assert any("layer2.1..3  Bottleneck ×3" in row for row in folded)
    full = report.render(200, fold=False)
    assert len(_rows(full)) == len(report.layers) > 150


def test_gpt2_folds_to_at_most_40_rows_with_one_block_open(reports: dict[str, shapecheck.Report]):
    report = reports["gpt2"]
    text = report.render(120)
    rows = _rows(text)
    assert len(rows) <= 40, len(rows)
    assert "blocks.1..11  DecoderBlock ×11" in text
    assert "blocks.0.qkv  Linear(768→2304)" in text  # the inside of one block, once
    assert "blocks.1.qkv" not in text
    assert len(_rows(report.render(200, fold=False))) == len(report.layers)


def test_depth_still_folds_and_fold_false_keeps_depth(reports: dict[str, shapecheck.Report]):
    report = reports["resnet50"]
    shallow = _rows(report.render(100, depth=1, fold=False))
    assert all(not row.startswith("    ") for row in shallow)
    assert any("layer1  Sequential [+" in row for row in shallow)


def test_tied_weights_are_marked_with_a_footnote_naming_the_other_module(
    reports: dict[str, shapecheck.Report],
):
    text = reports["gpt2"].render(100)
    head = next(line for line in text.splitlines() if line.lstrip().startswith("head  "))
    assert head.endswith("38,597,376*")
    wte = next(line for line in text.splitlines() if line.lstrip().startswith("wte  "))
    assert wte.endswith("38,597,376")  # counted here, once
    assert len(wte) == len(head) - 1  # the digits stay aligned
    assert "* 'head' shares its 38,597,376 params with 'wte' (tied weights)" in text
    assert reports["gpt2"].tied == (("head", "wte", 38_597_376),)


def test_a_failing_big_model_shows_the_diagnosis_first_then_the_rows_around_the_failure(
    reports: dict[str, shapecheck.Report],
):
    text = reports["resnet50-broken"].render(100)
    lines = text.splitlines()
    assert lines[1].startswith("layer 'fc' (Linear(512→1000)) cannot take its input")
    table = lines.index(next(line for line in lines if line.startswith("layer    ")))
    assert table > lines.index(next(line for line in lines if line.startswith("fix (")))
    assert any(re.match(r"⋮ \d+ rows not shown here", line) for line in lines)
    assert "(root)  ResNet" in text  # the calls the failure ran in stay
    # small failing models keep the old order: table first
    seed = reports["seed"].render(100).splitlines()
    assert seed[1].startswith("layer ")
    assert "input" in seed[1]


def test_ascii_text_fits_the_same_widths_and_is_pure_ascii(reports: dict[str, shapecheck.Report]):
    for name, report in reports.items():
        for width in WIDTHS:
            text = report.render(width, ascii=True)
            text.encode("ascii")
            assert max(len(line) for line in text.splitlines()) <= width, (name, width)
    seed = reports["seed"].render(100, ascii=True)
    assert "Linear(512->32)" in seed
    assert "x raised" in seed


def test_width_comes_from_columns_then_the_terminal_then_100(
    reports: dict[str, shapecheck.Report], monkeypatch: pytest.MonkeyPatch
):
    report = reports["resnet50"]
    monkeypatch.setenv("COLUMNS", "70")
    assert max(map(len, str(report).splitlines())) <= 70
    monkeypatch.delenv("COLUMNS")
    assert str(report) == report.render(100)  # pytest's captured stdout is no terminal
    with pytest.raises(shapecheck.UsageError, match="width must be an int >= 40"):
        report.render(20)


def test_repr_is_one_short_line(reports: dict[str, shapecheck.Report]):
    assert repr(reports["seed"]) == (
        "<Report Sequential: failed at '6' Linear(512→32), missing-flatten (verified); "
        "18,090 params>"
    )
    for report in reports.values():
        assert "\n" not in repr(report)
        assert len(repr(report)) <= 200
    assert repr(reports["resnet50"]) == (
        "<Report ResNet: runs, (1, 3, 64, 64) → (1, 1000); 25,557,032 params>"
    )


def test_repr_pretty_gives_the_text_report(reports: dict[str, shapecheck.Report]):
    pretty = pytest.importorskip("IPython.lib.pretty")
    report = reports["seed"]
    assert pretty.pretty(report) == str(report)


def test_tied_weights_are_in_the_json_too(reports: dict[str, shapecheck.Report]):
    assert reports["gpt2"].to_dict()["tied"] == [
        {"path": "head", "shared_with": "wte", "params": 38_597_376}
    ]
