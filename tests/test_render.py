"""Rendered reports against golden files in tests/golden/render/.

Regenerate them, after checking the change is intended, with::

    SHAPECHECK_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_render.py

Without that variable a missing or different golden file is a failure, never rewritten.
"""

from __future__ import annotations

import pytest
import torch
from golden import check_golden
from torch import nn
from zoo import ZOO, BookNet, TinyResNet

import shapecheck
from shapecheck._render import render_table
from shapecheck.demo import seed_model, seed_model_fixed

WIDTH = 100


def _image(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _nested() -> nn.Module:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Sequential(nn.Conv2d(8, 8, 3, stride=2), nn.ReLU()), nn.MaxPool2d(2)),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 4),
    )


CASES = {
    "seed_broken": lambda: shapecheck.explain(seed_model(), _image(1, 3, 32, 32)),
    "seed_fixed": lambda: shapecheck.explain(seed_model_fixed(), _image(1, 3, 32, 32)),
    "seed_broken_dry": lambda: shapecheck.explain(seed_model(), _image(1, 3, 32, 32), dry_run=True),
    "book_net": lambda: shapecheck.explain(BookNet(), _image(1, 3, 32, 32)),
    "nested_depth1": lambda: shapecheck.explain(_nested(), _image(2, 3, 16, 16), depth=1),
    "nested_full": lambda: shapecheck.explain(_nested(), _image(2, 3, 16, 16)),
}


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str):
    check_golden("render", name, str(CASES[name]()))


def test_book_net_shows_every_functional_step():
    text = str(CASES["book_net"]())
    for step in ("· tanh", "· max_pool2d", "· view(-1, 512)"):
        assert step in text, step
    assert text.count("· max_pool2d") == 2
    assert text.count("· tanh") == 3
    lines = text.splitlines()
    view = next(line for line in lines if "· view(-1, 512)" in line)
    assert "(1, 8, 8, 8)" in view
    assert "(1, 512)" in view


def test_depth_folds_deeper_rows():
    full = CASES["nested_full"]()
    folded = CASES["nested_depth1"]()
    assert full.layers == folded.layers  # folding is only in the rendering
    text_full, text_folded = str(full), str(folded)
    assert "1.0.0" in text_full
    assert "1.0.0" not in text_folded
    assert "  1  " in text_folded  # the depth-1 row stays
    assert text_folded.count("\n") < text_full.count("\n")


def test_folded_rows_carry_the_parameters_of_the_rows_they_hide():
    folded = CASES["nested_depth1"]()
    counts = [int(line.split()[-1].replace(",", "")) for line in render_table(folded).splitlines()
              if line.split()[-1].replace(",", "").isdigit()]  # fmt: skip
    assert sum(counts) == folded.total_params  # no module is reused in this model
    assert "[+3 rows]" in str(folded)


def test_depth_keeps_the_failing_row():
    model = nn.Sequential(nn.Sequential(nn.Sequential(nn.Linear(3, 3), nn.Linear(4, 1))))
    text = str(shapecheck.explain(model, torch.randn(2, 3), depth=0))
    assert "0.0.1" in text
    assert "Linear(4→1)" in text


def _reports() -> list[shapecheck.Report]:
    reports = [case() for case in CASES.values()]
    for entry in ZOO:
        model, args, kwargs = entry.build()
        reports.append(shapecheck.explain(model, *args, **kwargs))
    deep = nn.Sequential(*[nn.Sequential(nn.Sequential(nn.Sequential(TinyResNet())))] * 1)
    reports.append(shapecheck.explain(deep, _image(1, 3, 16, 16)))
    long_names = nn.ModuleDict({"a_really_quite_long_module_name_" * 2: nn.Linear(3, 3)})
    long_names.forward = lambda x: long_names["a_really_quite_long_module_name_" * 2](x)  # type: ignore[method-assign]
    reports.append(shapecheck.explain(long_names, torch.randn(70000, 3)))
    return reports


def test_every_rendered_line_fits_100_columns():
    for report in _reports():
        text = str(report)
        too_wide = [line for line in text.splitlines() if len(line) > WIDTH]
        assert not too_wide, f"{report.model_type}: {too_wide}"


def test_html_has_a_row_per_visible_layer():
    report = CASES["seed_broken"]()
    html = report._repr_html_()
    table = html[html.index("<table class='sc-table'>") :]
    assert table[: table.index("</table>")].count("<tr") == 1 + len(report.layers)
    assert "64x8 and 512x32" in html
    assert "<script" not in html


class _BookNetNoView(nn.Module):
    """The book's Net with its flatten forgotten: the tensor is called ``out`` in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 16 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.max_pool2d(torch.tanh(self.conv(x)), 2)
        return self.fc1(out)  # type: ignore[no-any-return]


def test_fix_code_uses_the_variable_of_the_source_line():
    report = shapecheck.explain(_BookNetNoView(), _image(1, 3, 32, 32))
    assert report.diagnoses[0].fix.startswith(
        "out = torch.flatten(out, 1)   # before test_render.py:"
    )
    assert report.diagnoses[0].fix.endswith(": return self.fc1(out)  # type: ignore[no-any-return]")


def test_one_sample_the_root_and_the_op_a_warning_is_about():
    text = shapecheck.explain(BookNet(), _image(1, 3, 64, 64)).render(100)
    assert "changed the batch: 1 sample in, 4\n    rows out" in text
    assert "1 samples" not in text
    assert "''" not in text
    lines = text.splitlines()
    view = next(i for i, line in enumerate(lines) if "· view(-1, 512)" in line)
    assert lines[view + 1].strip() == "↑ warning (view-batch), below"
