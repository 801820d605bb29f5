"""The only code that turns a Report into text or HTML. No torch calls here."""

from __future__ import annotations

import html
import textwrap
from typing import TYPE_CHECKING

from ._records import Layer
from ._source import short
from ._text import count, nbytes, shapes

if TYPE_CHECKING:
    from ._report import Report

__all__ = ["render_html", "render_report", "render_table"]

WIDTH = 100
_COLUMNS = (("layer", 44), ("input", 20), ("output", 20), ("params", 10))
_FAILED = "✗ raised"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _name(layer: Layer) -> str:
    indent = "  " * layer.depth
    if layer.kind == "function":
        return f"{indent}· {layer.summary}"
    label = layer.path or "(root)"
    return f"{indent}{label}  {layer.summary}"


def _cells(layer: Layer) -> tuple[str, str, str, str]:
    output = _FAILED if layer.failed else shapes(layer.output_shapes)
    params = count(layer.params) if layer.params else ("" if layer.kind == "function" else "—")
    return _name(layer), shapes(layer.input_shapes), output, params


def _visible(report: Report) -> list[Layer]:
    if report.depth is None:
        return report.layers
    return [x for x in report.layers if x.depth <= report.depth or x.failed]


def render_table(report: Report) -> str:
    """The layer table: path and type, input and output shapes, parameters owned directly."""
    (h_name, w_name), (h_in, w_in), (h_out, w_out), (h_par, w_par) = _COLUMNS

    def row(name: str, inp: str, out: str, par: str) -> str:
        line = f"{_fit(name, w_name):<{w_name}} {_fit(inp, w_in):<{w_in}} " \
               f"{_fit(out, w_out):<{w_out}} {par:>{w_par}}"  # fmt: skip
        return line.rstrip()

    lines = [row(h_name, h_in, h_out, h_par), "─" * (w_name + w_in + w_out + w_par + 3)]
    lines += [row(*_cells(layer)) for layer in _visible(report)]
    return "\n".join(lines)


def render_totals(report: Report) -> str:
    """Parameter totals, sizes by dtype, buffers, and the model's inputs and outputs."""
    by_dtype = ", ".join(f"{nbytes(b)} {d}" for d, b in sorted(report.param_bytes_by_dtype.items()))
    lines = [
        f"params     {count(report.total_params)} total · {count(report.trainable_params)} "
        f"trainable · {count(report.non_trainable_params)} frozen"
        + (f" · {by_dtype}" if by_dtype else ""),
    ]
    if report.buffer_count:
        lines.append(f"buffers    {count(report.buffer_count)} values · "
                     f"{nbytes(report.buffer_bytes)}")  # fmt: skip
    if report.total_flops is not None:
        lines.append(f"flops      {count(report.total_flops)} forward")
    mode = "dry run (fake tensors)" if report.dry_run else "real forward"
    output = shapes(report.output_shapes) if report.ok else "— (the forward raised)"
    kinds = " ".join(dict.fromkeys(f"{t.dtype} {t.device}" for t in report.inputs))
    lines.append(f"input      {shapes(report.input_shapes)} {kinds} → output {output}   [{mode}]")
    return "\n".join(lines)


def render_failure(report: Report) -> str:
    """The failure and its diagnoses; a plain account when no rule matched."""
    failure = report.failure
    if failure is None:
        return ""
    if report.diagnoses:
        first, *others = report.diagnoses
        lines = _wrapped(first.message)
        step, number = first, 2
        while step.then:
            step = step.then[0]
            lines += ["", f"then, step {number}:", *_wrapped(step.message)]
            number += 1
        lines += [f"also possible ({d.rule}): {d.fix.splitlines()[0]}" for d in others]
        return "\n".join(lines)
    where = (
        f"layer '{failure.path}' ({failure.type})"
        if failure.path
        else f"the model's forward ({failure.type})"
    )
    lines = [
        f"{where} raised {type(failure.exception).__name__}",
        f"  got       {shapes(failure.input_shapes)}",
        f"  PyTorch   {failure.message}",
    ]
    if failure.source:
        lines.append(f"  at        {short(failure.source)}")
    lines.append("no rule matched this failure; the table shows the last shapes that worked.")
    return "\n".join(lines)


def _wrapped(message: str) -> list[str]:
    """Message lines folded to the width; continuation lines indented under their label."""
    lines = []
    for line in message.splitlines():
        indent = " " * (len(line) - len(line.lstrip()) + (10 if line.startswith("  ") else 4))
        lines += textwrap.wrap(line, WIDTH, subsequent_indent=indent, break_long_words=False,
                               break_on_hyphens=False) or [""]  # fmt: skip
    return lines


def render_warnings(report: Report) -> str:
    return "\n".join(f"warning ({w.rule}): {w.message}" for w in report.warnings)


def render_report(report: Report) -> str:
    """Table, totals, then the failure and its diagnoses, in at most 100 columns."""
    parts = [f"shapecheck: {report.model_type}", render_table(report), "", render_totals(report)]
    for section in (render_failure(report), render_warnings(report)):
        if section:
            parts += ["", section]
    return "\n".join(parts)


def render_html(report: Report) -> str:
    """A notebook view: the table as HTML, the rest as preformatted text."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in _COLUMNS)
    body = []
    for layer in _visible(report):
        name, inp, out, par = (html.escape(c) for c in _cells(layer))
        style = ' style="color:#b00"' if layer.failed else ""
        body.append(f"<tr{style}><td style='text-align:left;white-space:pre'>{name}</td>"
                    f"<td>{inp}</td><td>{out}</td><td>{par}</td></tr>")  # fmt: skip
    tail = "\n\n".join(p for p in (render_totals(report), render_failure(report),
                                   render_warnings(report)) if p)  # fmt: skip
    return (f"<div><b>shapecheck: {html.escape(report.model_type)}</b><table><thead><tr>{head}"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<pre>{html.escape(tail)}</pre></div>")  # fmt: skip
