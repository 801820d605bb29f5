"""A Report as HTML, for notebooks: the same rows, cells and messages as the text, laid out
with a style of its own. No torch calls here.

One <style> scoped to ``.shapecheck``: monospace for every shape and message, colours as
translucent fills and borders that read on light and dark backgrounds alike, and text colours
switched by the notebook's theme (JupyterLab, VS Code, Colab) or else the browser's scheme. No
script: nbconvert exports and untrusted notebooks show the same thing.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from ._fold import Row, visible_rows
from ._records import Diagnosis, Step
from ._render import (
    SCREEN,
    Options,
    _cells,
    _failed_at,
    _failure_lines,
    _footnotes,
    _gap_text,
    _header,
    _marked,
    _sharded,
    _status,
    _window,
    _words,
    render_totals,
)
from ._text import shapes

if TYPE_CHECKING:
    from ._report import Report

__all__ = ["render_html"]

_CSS = """
.shapecheck{--sc-red:#b42318;--sc-amber:#93370d;--sc-green:#067647;--sc-line:rgba(128,128,128,.35);
font-family:var(--jp-content-font-family,system-ui,-apple-system,"Segoe UI",sans-serif);
line-height:1.45;max-width:100%;overflow-x:auto;color:inherit}
@media (prefers-color-scheme:dark){
.shapecheck{--sc-red:#ff9c8f;--sc-amber:#fdb022;--sc-green:#75e0a7}}
[data-jp-theme-light=true] .shapecheck,body.vscode-light .shapecheck,html[theme=light] .shapecheck
{--sc-red:#b42318;--sc-amber:#93370d;--sc-green:#067647}
[data-jp-theme-light=false] .shapecheck,body.vscode-dark .shapecheck,html[theme=dark] .shapecheck
{--sc-red:#ff9c8f;--sc-amber:#fdb022;--sc-green:#75e0a7}
.shapecheck code,.shapecheck pre,.shapecheck .sc-table td,.shapecheck .sc-ev td{
font-family:var(--jp-code-font-family,ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",
"Liberation Mono",monospace);font-size:var(--jp-code-font-size,13px)}
.shapecheck pre{margin:.3em 0;padding:0;background:none;border:0;white-space:pre-wrap;
color:inherit;line-height:1.45}
.shapecheck table{table-layout:auto;border:0;margin-left:0}
.shapecheck .sc-title{font-size:1.05em;margin:.2em 0 .5em}
.shapecheck .sc-bad{color:var(--sc-red);font-weight:600}
.shapecheck .sc-ok{color:var(--sc-green);font-weight:600}
.shapecheck .sc-box{border-left:4px solid var(--sc-red);background:rgba(220,38,38,.07);
padding:.45em .8em;margin:.5em 0}
.shapecheck .sc-warnbox{border-left-color:#d97706;background:rgba(217,119,6,.08)}
.shapecheck .sc-head{font-weight:600}
.shapecheck .sc-ev{border-collapse:collapse;margin:.25em 0}
.shapecheck .sc-ev th{text-align:left;font-weight:normal;opacity:.75;padding:0 1em 0 0;
vertical-align:top;white-space:nowrap}
.shapecheck .sc-ev td{padding:0;white-space:pre-wrap;text-align:left}
.shapecheck .sc-cause{margin:.35em 0}
.shapecheck .sc-fix{margin:.35em 0;padding:.3em .6em;border:1px solid var(--sc-line);
border-left:4px solid #16a34a;background:rgba(22,163,74,.08)}
.shapecheck .sc-fix pre{font-weight:600}
.shapecheck .sc-label{font-weight:700;text-transform:uppercase;font-size:.8em;letter-spacing:.04em;
margin-right:.5em}
.shapecheck .sc-table{border-collapse:collapse;margin:.3em 0}
.shapecheck .sc-table th{text-align:left;font-weight:600;border-bottom:1px solid var(--sc-line);
padding:.15em .9em .15em 0}
.shapecheck .sc-table td{text-align:left;padding:.1em .9em .1em 0;vertical-align:top;
border:0;background:none}
.shapecheck table.sc-table tbody tr,.shapecheck table.sc-ev tbody tr{background:none}
.shapecheck .sc-table td.sc-n{text-align:right;white-space:nowrap}
.shapecheck .sc-table .sc-name{white-space:pre}
.shapecheck .sc-table .sc-shape{white-space:nowrap}
.shapecheck .sc-table tr.sc-failed td{background:rgba(220,38,38,.16);font-weight:600}
.shapecheck .sc-table tr.sc-failed td:first-child{box-shadow:inset 4px 0 0 #dc2626}
.shapecheck .sc-table tr.sc-warned td{background:rgba(217,119,6,.16)}
.shapecheck .sc-inner{font-size:.95em;margin:.1em 0 .3em}
.shapecheck .sc-name summary{opacity:1}
.shapecheck details>summary{cursor:pointer;opacity:.85}
.shapecheck .sc-gap td{opacity:.7;font-style:italic}
"""


def _e(text: str) -> str:
    return html.escape(text, quote=False)


def _shape_cells(tokens: tuple[str, ...]) -> str:
    return " ".join(f'<span class="sc-shape">{_e(t)}</span>' for t in tokens)


def _html_row(report: Report, row: Row, marks: dict[int, str], options: Options) -> str:
    """One table row; a folded row's name opens (<details>) onto every call it stands for."""
    flat = Row(row.layer, row.label, row.params, row.repeat, row.hidden, 0, row.end)
    cells = _cells(report, flat, marks, options)  # indented by padding, not spaces
    failing = report.failure is not None and row.layer.index == report.failure.layer_index
    kind = " class='sc-failed'" if failing else " class='sc-warned'" if cells.note else ""
    title = f" title='{html.escape(f'warning: {cells.note}', quote=True)}'" if cells.note else ""
    name = _e(cells.name)
    if row.end > row.layer.index:
        name = f"<details><summary>{name}</summary>{_inside(report, row, options)}</details>"
    pad = f" style='padding-left:{1.2 * row.depth:.1f}em'" if row.depth else ""
    body = f"<td>{_shape_cells(cells.inputs)}</td><td>{_shape_cells(cells.outputs)}</td>"
    right = "".join(f"<td class='sc-n'>{_e(c)}</td>" for c in cells.right)
    line = f"<tr{kind}{title}><td class='sc-name'{pad}>{name}</td>{body}{right}</tr>"
    sharded = _sharded(report, flat, options)  # global shapes and placements, under the row
    if sharded is not None:
        line += (
            f"<tr><td class='sc-name'{pad}>{_e(sharded.name)}</td>"
            f"<td>{_shape_cells(sharded.inputs)}</td><td>{_shape_cells(sharded.outputs)}</td>"
            + "".join(f"<td class='sc-n'>{_e(c)}</td>" for c in sharded.right)
            + "</tr>"
        )
    return line


def _inside(report: Report, row: Row, options: Options) -> str:
    """Every call a folded row stands for, as a table of their own."""
    inside = report.layers[row.layer.index + 1 : row.end + 1]
    rows = [Row(x, x.path, x.params, depth=x.depth - row.depth) for x in inside]
    body = "".join(_html_row(report, r, {}, options) for r in rows)
    return f"<table class='sc-table sc-inner'>{body}</table>"


def _html_table(report: Report, rows: list[Row], options: Options, gap: tuple[int, int]) -> str:
    marks = _marked(report)
    header = _header(report.total_flops is not None)
    head = "".join(f"<th>{_e(h)}</th>" for h in ("layer", "input", "output", *header.right))
    body = []
    for index, row in enumerate(rows):
        if index == gap[0] and gap[1]:
            body.append(f"<tr class='sc-gap'><td colspan='{3 + len(header.right)}'>"
                        f"{_e(options.text(_gap_text(gap[1])))}</td></tr>")  # fmt: skip
        body.append(_html_row(report, row, marks, options))
    notes = "".join(f"<div>{_e(n)}</div>" for n in _footnotes(report, options))
    return f"<table class='sc-table'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}" \
        f"</tbody></table>{notes}"  # fmt: skip


def _html_step(step: Step) -> str:
    evidence = "".join(
        f"<tr><th>{_e(label)}</th><td>{_e(text if label == 'PyTorch' else _words(text))}</td></tr>"
        for label, text in step.evidence
    )
    arithmetic = f"<pre>{_e(chr(10).join(step.arithmetic))}</pre>" if step.arithmetic else ""
    return (
        f"<div class='sc-head'>{_e(_words(step.headline))}</div>"
        f"<table class='sc-ev'>{evidence}</table>"
        f"<div class='sc-cause'><span class='sc-label'>cause</span>{_e(_words(step.cause))}"
        f"{arithmetic}</div>"
        f"<div class='sc-fix'><span class='sc-label'>fix</span>{_e(_words(step.change.summary))}"
        f" <span style='opacity:.8'>({_e(_status(step))})</span>"
        f"<pre>{_e(step.change.code)}</pre></div>"
    )


def _html_plan(diagnosis: Diagnosis, warning: bool = False) -> str:
    parts = [_html_step(diagnosis.plan[0])]
    for number, step in enumerate(diagnosis.plan[1:], start=2):
        parts.append(f"<div class='sc-label' style='margin-top:.6em'>then, step {number}</div>"
                     + _html_step(step))  # fmt: skip
    kind = " sc-warnbox" if warning else ""
    label = f"<div class='sc-label'>warning ({_e(diagnosis.rule)})</div>" if warning else ""
    return f"<div class='sc-box{kind}'>{label}{''.join(parts)}</div>"


def _html_failure(report: Report) -> str:
    if report.failure is None:
        return ""
    if not report.diagnoses:
        return f"<div class='sc-box'><pre>{_e(chr(10).join(_failure_lines(report)))}</pre></div>"
    first, *others = report.diagnoses
    also = "".join(f"<div>also possible ({_e(d.rule)}): <code>{_e(d.fix.splitlines()[0])}</code>"
                   "</div>" for d in others)  # fmt: skip
    return _html_plan(first) + also


def _html_title(report: Report) -> str:
    name = f"<b>shapecheck</b>: {_e(report.model_type)} "
    if report.failure is None:
        return name + f"<span class='sc-ok'>runs</span> {_e(shapes(report.input_shapes))} → " \
            f"{_e(shapes(report.output_shapes))}"  # fmt: skip
    return name + f"<span class='sc-bad'>✗ fails at {_e(_failed_at(report))}</span>"


def render_html(report: Report) -> str:
    """A notebook view: the diagnosis as a box (headline, evidence, cause, the fix and its
    code), the table with the failing row marked and folded blocks expandable, the totals.

    A long table (more than a screen) sits in a <details>; a failing report with a long
    table shows the diagnosis first, then the rows around the failure."""
    options = Options(fold=report.fold, depth=report.depth)
    rows = visible_rows(report.layers, depth=options.depth, fold=options.fold)
    failure = _html_failure(report)
    if failure and len(rows) > SCREEN:
        shown, gap = _window(rows, report.layers)
        table = _html_table(report, shown, options, gap) + _details(
            f"all {len(rows)} rows", _html_table(report, rows, options, (-1, 0)), False
        )
        sections = [failure, table]
    else:
        table = _html_table(report, rows, options, (-1, 0))
        sections = [_details(f"{len(rows)} rows", table, True) if len(rows) > SCREEN else table,
                    failure]  # fmt: skip
    sections.append(f"<pre>{_e(render_totals(report, options))}</pre>")
    sections += [_html_plan(w, warning=True) for w in report.warnings]
    return (f"<div class='shapecheck'><style>{_CSS}</style><div class='sc-title'>"
            f"{_html_title(report)}</div>{''.join(sections)}</div>")  # fmt: skip


def _details(summary: str, body: str, open_: bool) -> str:
    return f"<details{' open' if open_ else ''}><summary>{_e(summary)}</summary>{body}</details>"
