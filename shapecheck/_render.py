"""The text of a Report (and the cells, rows and messages ``_html`` lays out as HTML): the
render layer is ``_fold`` (which rows), this module and ``_html``. No torch calls here.

Text fits the width it is given: the table keeps every type name, channel count and shape
whole. When the columns do not fit, names that are too long go on a line of their own (a few
first, then as many as needed), the input column goes (each row's input is the row above's
output), several shapes in a cell wrap between shapes, and messages fold at spaces, never inside
a shape. Rows come from ``_fold``: repeated blocks as one ``×N`` row. In ASCII every glyph gets
its stand-in before anything is measured, so the ASCII text fits the same width.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ._fold import Row, keep_of, visible_rows
from ._records import Diagnosis, Layer, Outcome, Shape, Step, TensorInfo, TrainingMemory
from ._text import count, nbytes, plural, shape, shapes, short, to_ascii

if TYPE_CHECKING:
    from ._ranks import RankReports
    from ._report import Report

__all__ = [
    "MIN_WIDTH",
    "SCREEN",
    "WIDTH",
    "Options",
    "flops_text",
    "plan_text",
    "render_ranks",
    "render_report",
    "render_table",
    "step_lines",
    "summary_line",
]

WIDTH = 100  # files, pipes, notebooks: the width when no terminal says otherwise
MIN_WIDTH = 40
SCREEN = 24  # rows: a failing report with a longer table shows its diagnosis first
_WINDOW = 12  # rows kept before the failing row in that case
_PREFERRED = (44, 20, 20, 10)  # the layout of old, kept wherever it fits
_PREFERRED_FLOPS = (40, 18, 18, 10, 7)
_FAILED = "✗ raised"


@dataclass(frozen=True)
class Options:
    """How to lay a report out: the width in columns, how rows fold, ASCII or not."""

    width: int = WIDTH
    depth: int | None = None
    fold: bool = True
    ascii: bool = False

    def text(self, value: str) -> str:
        return to_ascii(value) if self.ascii else value


# -- rows as cells ------------------------------------------------------------------------------


class _Cells(NamedTuple):
    name: str
    inputs: tuple[str, ...]  # one token per shape (repeats joined: "(1, 64, 768) ×3")
    outputs: tuple[str, ...]
    right: tuple[str, ...]  # params, and FLOPs when counted
    note: str = ""  # a line under the row: the warning it is about


def _tokens(many: Sequence[Shape]) -> tuple[str, ...]:
    """Shapes as tokens, equal neighbours counted: ``(1, 12, 64, 64) ×3``."""
    tokens: list[str] = []
    runs: list[int] = []
    for dims in many:
        text = shape(dims)
        if tokens and tokens[-1] == text:
            runs[-1] += 1
        else:
            tokens.append(text)
            runs.append(1)
    out = tuple(t if n == 1 else f"{t} ×{n}" for t, n in zip(tokens, runs, strict=True))
    return out or ("—",)


_SI = (("P", 10**15), ("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3))


def _si(n: int) -> str:
    """``950``, ``1.51M``, ``8.18G``: three digits, so the column stays narrow."""
    return next((f"{n / scale:.3g}{unit}" for unit, scale in _SI if n >= scale), str(n))


def flops_text(total: int, uncounted: Mapping[str, int]) -> str:
    """The total FLOPs as text; with ops left uncounted, a lower bound that names them.

    Example:
        >>> flops_text(10_485_760, {"mkldnn_rnn_layer": 2})
        '≥ 10.5 MFLOPs; not counted: mkldnn_rnn_layer (2 calls)'
        >>> flops_text(950, {})
        '950 FLOPs'
    """
    scaled = next((f"{total / s:.3g} {unit}" for unit, s in _SI if total >= s), f"{total} ")
    if not uncounted:
        return f"{scaled}FLOPs"
    ops = ", ".join(f"{name} ({calls} call{'' if calls == 1 else 's'})"
                    for name, calls in sorted(uncounted.items()))  # fmt: skip
    return f"≥ {scaled}FLOPs; not counted: {ops}"


def _name(row: Row) -> str:
    layer, indent = row.layer, "  " * row.depth
    if layer.kind == "function":
        return f"{indent}· {layer.summary}"
    label = row.label or "(root)"
    more = f" ×{row.repeat}" if row.repeat > 1 else ""
    if row.hidden and row.repeat == 1:
        more = f" [+{plural(row.hidden, 'row')}]"
    return f"{indent}{label}  {layer.summary}{more}"


def _params(row: Row, tied: set[str]) -> str:
    layer = row.layer
    held = row.params if layer.rank_params is None or row.hidden else layer.rank_params  # rank's
    text = count(held) if row.params else ("" if layer.kind == "function" else "—")
    if not tied or not text:
        return text
    inside = row.hidden and any(p.startswith(f"{layer.path}.") or not layer.path for p in tied)
    return text + ("*" if layer.path in tied or inside else " ")


def _flops(layer: Layer) -> str:
    if layer.flops is None or (layer.kind == "function" and not layer.flops):
        return ""
    return ("≥" if layer.flops_uncounted else "") + _si(layer.flops)


def _cells(report: Report, row: Row, marks: dict[int, str], options: Options) -> _Cells:
    layer, text = row.layer, options.text
    outputs = (_FAILED,) if layer.failed else _tokens(layer.output_shapes)
    right: tuple[str, ...] = (_params(row, {path for path, _, _ in report.tied}),)
    if report.total_flops is not None:
        right += (_flops(layer),)
    return _Cells(text(_name(row)), tuple(map(text, _tokens(layer.input_shapes))),
                  tuple(map(text, outputs)), tuple(map(text, right)),
                  marks.get(layer.index, ""))  # fmt: skip


def _sharded_text(info: TensorInfo) -> str:
    """A tensor's global shape and placements, ``(2, 8, 64) S(2)``; ``·`` for a plain one."""
    if info.global_shape is None or info.placements is None:
        return "·"
    return f"{shape(info.global_shape)} {','.join(info.placements)}"


def _sharded(report: Report, row: Row, options: Options) -> _Cells | None:
    """The line under a row of a sharded layer: the global shapes and placements of its tensors,
    its parameters' placements and bytes on this rank, and their global count."""
    layer, text = row.layer, options.text
    tensors = (*layer.inputs, *layer.outputs)
    if not layer.param_placements and all(t.global_shape is None for t in tensors):
        return None
    by_placement: dict[str, list[str]] = {}  # "weight,bias S(0)": one placement, said once
    for param, placements in layer.param_placements:
        by_placement.setdefault(",".join(placements), []).append(param)
    held = [f"{','.join(names)} {p}" for p, names in by_placement.items()]
    if layer.rank_param_bytes:
        held.append(nbytes(layer.rank_param_bytes))
    name = "  " * row.depth + "  ↳ " + (" · ".join(held) or "global")
    outputs = () if layer.failed else tuple(_sharded_text(t) for t in layer.outputs)
    right: tuple[str, ...] = (f"of {count(layer.params)}" if layer.param_placements else "",)
    if report.total_flops is not None:
        right += ("",)
    return _Cells(text(name), tuple(text(_sharded_text(t)) for t in layer.inputs) or ("·",),
                  tuple(map(text, outputs)) or ("·",), tuple(map(text, right)))  # fmt: skip


def _marked(report: Report) -> dict[int, str]:
    """Rows a warning is about (the op it names, else the module at its path): its rule."""
    marks: dict[int, str] = {}
    for warning in report.warnings:
        step = warning.plan[0]
        calls = [x for x in report.layers if x.kind == "function" and x.parent is not None
                 and report.layers[x.parent].path == step.path
                 and f"'{x.type}({x.arguments})'" in step.headline]  # fmt: skip
        modules = [x for x in report.layers if x.kind == "module" and x.path == step.path][:1]
        for layer in calls or (modules if step.path else []):
            marks.setdefault(layer.index, warning.rule)
    return marks


# -- column widths ------------------------------------------------------------------------------


class _Layout(NamedTuple):
    widths: tuple[int, ...]  # name, [input], output, right columns...
    inputs: bool
    width: int = WIDTH  # of the whole text: a name longer than that wraps after a comma


def _need(cells: Sequence[_Cells], least: bool) -> tuple[int, int]:
    """Widths of the input and output columns: whole cells, or the longest single shape."""

    def width(parts: tuple[str, ...]) -> int:
        return max(len(p) for p in parts) if least else len(" ".join(parts))

    return (max(width(c.inputs) for c in cells) + 1, max(width(c.outputs) for c in cells) + 1)


def _fits(widths: Sequence[int], width: int) -> bool:
    return sum(widths) + len(widths) - 1 <= width


def _layout(cells: Sequence[_Cells], width: int, flops: bool) -> _Layout:
    """The first layout that fits: the old one (widened where a cell needs it), cells at their
    own widths, then a few names on lines of their own, then without the input column, then
    shapes wrapped in their cells and as many names on their own lines as it takes."""
    preferred = _PREFERRED_FLOPS if flops else _PREFERRED
    right = tuple(max(len(c.right[i]) for c in cells) for i in range(len(cells[0].right)))
    names = sorted(len(c.name) + 1 for c in cells)
    most = names[-1 - min(len(names) - 1, max(1, len(names) // 10))]
    inputs, outputs = _need(cells, least=False)
    classic = tuple(max(p, n) for p, n in zip(preferred, (names[-1], inputs, outputs, *right),
                                              strict=False))  # fmt: skip
    tries: list[_Layout] = (
        [_Layout((*classic, *right[1:]), True)] if flops else [_Layout(classic, True)]
    )
    for show in (True, False):
        middle = (inputs, outputs) if show else (outputs,)
        tries += [
            _Layout((names[-1], *middle, *right), show),
            _Layout((most, *middle, *right), show),
        ]
    for attempt in tries:
        if _fits(attempt.widths, width):
            return attempt._replace(width=width)
    _, least_out = _need(cells, least=True)
    rest = width - least_out - sum(right) - 1 - len(right)
    return _Layout((max(rest, 12), least_out, *right), False, width)


def _wrap_tokens(tokens: tuple[str, ...], width: int) -> list[str]:
    lines: list[str] = []
    for token in tokens:
        if lines and len(lines[-1]) + 1 + len(token) <= width:
            lines[-1] += " " + token
        else:
            lines.append(token)
    return lines


def _long_name(name: str, width: int) -> list[str]:
    """A name wider than the text, folded after its commas, never inside a word."""
    if len(name) <= width:
        return [name]
    indent = " " * (len(name) - len(name.lstrip()) + 4)
    return textwrap.wrap(name, width, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False, drop_whitespace=True) or [name]  # fmt: skip


def _nth(parts: list[str], k: int) -> str:
    """Line ``k`` of a wrapped cell; "" past its end."""
    return parts[k] if k < len(parts) else ""


def _row_lines(cells: _Cells, layout: _Layout, options: Options) -> list[str]:
    name_w, *rest = layout.widths
    columns = [cells.inputs, cells.outputs] if layout.inputs else [cells.outputs]
    shape_ws = rest[: len(columns)]
    right_ws = rest[len(columns) :]
    lines = []
    name = cells.name
    if len(name) >= name_w:  # too long for its column: on a line (or lines) of its own
        lines += _long_name(name, layout.width)
        name = ""
    wrapped = [_wrap_tokens(col, w - 1) for col, w in zip(columns, shape_ws, strict=True)]
    for k in range(max(len(w) for w in wrapped)):
        parts = [f"{name if k == 0 else '':<{name_w}}"]
        parts += [f"{_nth(w, k):<{cw}}" for w, cw in zip(wrapped, shape_ws, strict=True)]
        right = cells.right if k == 0 else ("",) * len(right_ws)
        parts += [f"{c:>{cw}}" for c, cw in zip(right, right_ws, strict=True)]
        lines.append(" ".join(parts).rstrip())
    if cells.note:
        indent = len(cells.name) - len(cells.name.lstrip()) + 2
        lines.append(options.text(f"{' ' * indent}↑ warning ({cells.note}), below"))
    return lines


def _header(flops: bool) -> _Cells:
    return _Cells("layer", ("input",), ("output",), ("params", "FLOPs") if flops else ("params",))


def _table(
    report: Report,
    rows: list[Row],
    options: Options,
    gap: tuple[int, int] = (-1, 0),
    warnings: bool = True,
) -> list[str]:
    """Header, rule and rows; ``gap`` (position, rows left out) says where rows were left out,
    ``warnings`` whether the rows warnings are about get a line saying so."""
    marks = _marked(report) if warnings else {}
    cells = [_cells(report, row, marks, options) for row in rows]
    under = [_sharded(report, row, options) for row in rows]  # sharded layers: global shapes
    header = _header(report.total_flops is not None)
    layout = _layout([header, *cells, *(c for c in under if c is not None)], options.width,
                     report.total_flops is not None)  # fmt: skip
    lines = [*_row_lines(header, layout, options)]
    lines.append(options.text("─") * (sum(layout.widths) + len(layout.widths) - 1))
    for index, (cell, sharded) in enumerate(zip(cells, under, strict=True)):
        if index == gap[0] and gap[1]:
            lines.append(options.text(_gap_text(gap[1])))
        lines += _row_lines(cell, layout, options)
        if sharded is not None:
            lines += _row_lines(sharded, layout, options)
    return lines


def _gap_text(skipped: int) -> str:
    return f"⋮ {plural(skipped, 'row')} not shown here: render(fold=False) shows every row"


def _window(rows: list[Row], layers: list[Layer]) -> tuple[list[Row], tuple[int, int]]:
    """The rows around the failure: the calls it ran in, and the last rows before it; and
    where the rows left out were (position in the rows shown, how many)."""
    keep = keep_of(layers)
    failing = max((i for i, r in enumerate(rows) if r.layer.failed), default=len(rows) - 1)
    start = max(0, failing - _WINDOW)
    before = [r for r in rows[:start] if r.layer.index in keep]
    return before + rows[start:], (len(before), start - len(before))


def render_table(report: Report, options: Options | None = None) -> str:
    """The layer table: path and type, input and output shapes, parameters owned directly.

    Without options: every call, 100 columns, no warning marks: the model's structure, what
    ``shape_snapshot`` stores."""
    snapshot = options is None
    options = options or Options(fold=False)
    rows = visible_rows(report.layers, depth=options.depth, fold=options.fold)
    table = _table(report, rows, options, warnings=not snapshot)
    return "\n".join(table + _footnotes(report, options))


def _footnotes(report: Report, options: Options) -> list[str]:
    notes = [f"* '{path}' shares its {count(n)} params with '{owner}' (tied weights): the total "
             "counts them once" for path, owner, n in report.tied[:5]]  # fmt: skip
    if len(report.tied) > 5:
        notes.append(f"* and {len(report.tied) - 5} more shared parameter tensors")
    return _fold_lines([options.text(n) for n in notes], options.width, 2)


# -- totals, messages ---------------------------------------------------------------------------


def render_totals(report: Report, options: Options | None = None) -> str:
    """Parameter totals, sizes by dtype, buffers, and the model's inputs and outputs."""
    options = options or Options()
    parts = [f"{count(report.total_params)} total", f"{count(report.trainable_params)} trainable",
             f"{count(report.non_trainable_params)} frozen"]  # fmt: skip
    parts += [f"{nbytes(b)} {d}" for d, b in sorted(report.param_bytes_by_dtype.items())]
    lines = [f"params     {_glued(parts)}"]
    if report.rank_param_bytes is not None:
        lines.append(_rank_line(report))
    if report.buffer_count:
        buffers = [f"{count(report.buffer_count)} values", nbytes(report.buffer_bytes)]
        lines.append(f"buffers    {_glued(buffers)}")
    if report.total_flops is not None:
        uncounted = report.flops_uncounted or {}
        exact = f"{count(report.total_flops)} forward" if not uncounted else ""
        lines.append(f"flops      {exact or flops_text(report.total_flops, uncounted)}")
    if report.training_memory is not None:
        on = "" if report.rank is None else f" on rank {report.rank}"
        lines.append(_memory_line(report.training_memory, on))
    output = shapes(report.output_shapes) if report.ok else "— (the forward raised)"
    kinds = " ".join(dict.fromkeys(f"{t.dtype} {t.device}" for t in report.inputs))
    mode = _mode(report).replace(" ", _GLUE) if len(_mode(report)) < 30 else _mode(report)
    lines.append(f"input      {shapes(report.input_shapes)} {_glued([kinds])} → "
                 f"{_glued([f'output {output}'])}   [{mode}]")  # fmt: skip
    return "\n".join(_fold_lines([options.text(x) for x in lines], options.width, 11))


def _glued(parts: list[str]) -> str:
    """Parts joined by `` · ``; lines wrap between parts, never inside one."""
    return " · ".join(p.replace(" ", _GLUE) for p in parts)


def _mode(report: Report) -> str:
    mode = "dry run (fake tensors)" if report.dry_run else "real forward"
    if report.fallback is not None:
        return "real forward: fake tensors could not run it"
    if report.unconfirmed:
        mode += "; not confirmed by a real run"
    return mode


def _rank_line(report: Report) -> str:
    """``rank       0 of 4 (mesh (4,)) holds 1.4 MiB of the parameters``."""
    mesh = f" (mesh {shape(report.mesh_shape)})" if report.mesh_shape else ""
    held = nbytes(report.rank_param_bytes or 0)
    return f"rank       {report.rank} of {report.world_size}{mesh} holds {held} of the parameters"


def _memory_line(memory: TrainingMemory, on: str = "") -> str:
    parts = [f"params {nbytes(memory.params)}", f"grads {nbytes(memory.grads)}",
             f"optimizer state {nbytes(memory.optimizer_state)}",
             f"saved for backward {nbytes(memory.saved)}"]  # fmt: skip
    if memory.buffers:
        parts.append(f"buffers {nbytes(memory.buffers)}")
    glued = [p.replace(" ", _GLUE) for p in parts]  # wrap between parts, never inside one
    head = f"training   ≈ {nbytes(memory.total)} per step{on} with {memory.optimizer}: "
    return head + " + ".join(glued) + " (allocator overhead and workspaces not included)"


_ROOT = re.compile(r"(?<![\w'])''(?![\w'])")
_ONE = re.compile(r"(?<![\d,.])1 (sample|row|value|place|step|dim)s\b")


def _words(text: str) -> str:
    """The root module as ``(root)``, not ``''``; ``1 sample``, not ``1 samples``."""
    return _ONE.sub(r"1 \1", _ROOT.sub("(root)", text))


def step_lines(step: Step) -> list[str]:
    """One diagnosis as lines: headline, labelled evidence, the cause and its arithmetic, the
    fix with how it was checked. PyTorch's words are quoted as they are."""
    evidence = [f"  {label:<9} {text if label == 'PyTorch' else _words(text)}"
                for label, text in step.evidence]  # fmt: skip
    lines = [_words(step.headline), *evidence, f"cause: {_words(step.cause)}", *step.arithmetic]
    lines += [f"fix ({_status(step)}): {_words(step.change.summary)}", f"    {step.change.code}"]
    return lines


def _status(step: Step) -> str:
    """How the fix was checked, in words: what "verified" means, said every time."""
    outcome = step.outcome
    if outcome is None:
        return "suggested"
    if outcome.runs:
        return _ran(outcome)
    if outcome.failed_path is not None and not outcome.same:
        return f"not enough alone: {_where_next(step, outcome)}"
    return "not verified: a re-run with it still fails here"


def _quoted(path: str) -> str:
    return f"'{path}'" if path else "(root)"


def _where_next(step: Step, outcome: Outcome) -> str:
    """Where the model fails once this fix is made: another layer, another call of the same
    layer, or the same call on the input the fix gave it."""
    where = f"{_quoted(outcome.failed_path or '')} ({outcome.failed_type}"
    if outcome.failed_path != step.path:
        return f"the model then fails at {where})"
    if outcome.failed_call:
        return f"the model then fails at {where}, its call {outcome.failed_call + 1})"
    return f"{where}) then fails on its new input {shapes(list(outcome.failed_inputs))}"


def _ran(outcome: Outcome) -> str:
    output = shapes(list(outcome.output_shapes))
    if outcome.keeps_batch is False:
        batch = "" if outcome.samples is None else f" of {outcome.samples}"
        return (
            f"the model then runs ({outcome.by}), but its output {output} does not start "
            f"with the input's batch{batch}: samples are no longer kept apart"
        )
    how = "by a real run" if outcome.by == "real run" else "by a dry run, shapes only"
    if outcome.real_samples:
        how += f" of {plural(outcome.real_samples, 'sample')}"
    return f"verified {how}: the model then runs, output {output}"


def plan_text(plan: tuple[Step, ...]) -> str:
    """A whole repair plan as text: the first diagnosis, then each next step."""
    lines = step_lines(plan[0])
    for number, step in enumerate(plan[1:], start=2):
        lines += ["", f"then, step {number}:", *step_lines(step)]
    return "\n".join(lines)


def _failure_lines(report: Report) -> list[str]:
    failure = report.failure
    if failure is None:
        return []
    if report.diagnoses:
        first, *others = report.diagnoses
        lines = plan_text(first.plan).splitlines()
        return lines + [f"also possible ({d.rule}): {d.fix.splitlines()[0]}" for d in others]
    where = f"layer '{failure.path}' ({failure.type})" if failure.path \
        else f"the model's forward ({failure.type})"  # fmt: skip
    lines = [
        f"{where} raised {type(failure.exception).__name__}",
        f"  got       {shapes(failure.input_shapes)}",
        f"  PyTorch   {failure.message}",
    ]
    if failure.source:
        lines.append(f"  at        {short(failure.source)}")
    return [*lines, "no rule matched this failure; the table shows the last shapes that worked."]


def render_failure(report: Report, options: Options | None = None) -> str:
    """The failure and its diagnoses; a plain account when no rule matched."""
    options = options or Options()
    return "\n".join(
        _message_lines([options.text(x) for x in _failure_lines(report)], options.width)
    )


def _warning_lines(report: Report) -> list[str]:
    lines = []
    for warning in report.warnings:
        first, *rest = plan_text(warning.plan).splitlines()
        lines += [f"warning ({warning.rule}): {first}", *rest]
    return lines


def render_warnings(report: Report, options: Options | None = None) -> str:
    options = options or Options()
    return "\n".join(
        _message_lines([options.text(x) for x in _warning_lines(report)], options.width)
    )


_GLUE = "\u00a0"  # textwrap splits on ASCII whitespace only
_TUPLE = re.compile(r"\((?:-?\d+|\*)(?:, (?:-?\d+|\*))+,?\)")


def _fold_lines(lines: list[str], width: int, indent: int) -> list[str]:
    """Lines folded at spaces to ``width``, continuations indented; shapes kept whole."""
    out: list[str] = []
    for line in lines:
        glued = _TUPLE.sub(lambda m: m.group(0).replace(" ", _GLUE), line)
        folded = textwrap.wrap(glued, width, subsequent_indent=" " * indent,
                               break_long_words=False, break_on_hyphens=False) or [""]  # fmt: skip
        out += [part.replace(_GLUE, " ") for part in folded]
    return out


def _message_lines(lines: list[str], width: int) -> list[str]:
    """Message lines folded to the width; continuation lines indented under their label."""
    out: list[str] = []
    for line in lines:
        lead = len(line) - len(line.lstrip())
        indent = lead + (10 if lead == 2 else 4)  # under an evidence label, or a code block
        out += _fold_lines([line], width, min(indent, width // 3))
    return out


# -- the whole report ---------------------------------------------------------------------------


def render_report(report: Report, options: Options | None = None) -> str:
    """The title, the table, the totals, then the failure and its diagnoses and the warnings.

    A failing report whose table is longer than a screen starts with the diagnosis, and its
    table shows the rows around the failure."""
    options = options or Options()
    rows = visible_rows(report.layers, depth=options.depth, fold=options.fold)
    failure = render_failure(report, options)
    totals, warnings = render_totals(report, options), render_warnings(report, options)
    if failure and options.fold and len(rows) > SCREEN:
        shown, gap = _window(rows, report.layers)
        table = "\n".join(_table(report, shown, options, gap) + _footnotes(report, options))
        sections = [failure, table, totals, warnings]
    else:
        table = "\n".join(_table(report, rows, options) + _footnotes(report, options))
        sections = [table, totals, failure, warnings]
    title = options.text(f"shapecheck: {report.model_type}")
    return title + "\n" + "\n\n".join(s for s in sections if s)


def summary_line(report: Report) -> str:
    """One line: the model, whether it runs (or where it failed and the first diagnosis),
    its parameters. What ``repr(report)`` shows."""
    if report.failure is None:
        what = f"runs, {shapes(report.input_shapes)} → {shapes(report.output_shapes)}"
        if report.warnings:
            rules = ", ".join(dict.fromkeys(w.rule for w in report.warnings))
            what += f", {plural(len(report.warnings), 'warning')} ({rules})"
    else:
        what = f"failed at {_failed_at(report)}, {_first(report.diagnoses)}"
    return f"{report.model_type}: {_clip(what, 150)}; {count(report.total_params)} params"


def _failed_at(report: Report) -> str:
    failure = report.failure
    assert failure is not None
    layer = report.layers[failure.layer_index] if failure.layer_index is not None else None
    kind = layer.summary if layer is not None and layer.kind == "module" else failure.type
    return f"{_quoted(failure.path)} {kind}"


def _first(diagnoses: list[Diagnosis]) -> str:
    if not diagnoses:
        return "no rule matched"
    first = diagnoses[0]
    return f"{first.rule} ({'verified' if first.verified else 'not verified'})"


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


# -- sharded models: one line per group of ranks ------------------------------------------------


def _rank_list(ranks: tuple[int, ...]) -> str:
    """``0-2, 5``: runs of consecutive ranks."""
    runs: list[list[int]] = []
    for rank in ranks:
        if runs and rank == runs[-1][-1] + 1:
            runs[-1].append(rank)
        else:
            runs.append([rank])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def render_ranks(ranks: RankReports) -> str:
    """One line per group of ranks that hold the same shards (what each rank holds, its output,
    whether it ran), then the failure and diagnosis of each group that failed."""
    groups = len(ranks.groups)
    lines = [
        f"shapecheck: {ranks.model_type} on {ranks.world_size} ranks, mesh "
        f"{shape(ranks.mesh_shape)}: {plural(groups, 'group')} of ranks with the same shards, "
        "one traced each",
        f"{'ranks':<8} {'params here':<24} {'output':<20} result",
    ]
    for group in ranks.groups:
        report = group.report
        held = f"{count(group.params)} · {nbytes(ranks.rank_param_bytes[group.rank])}"
        output = shapes(report.output_shapes) if report.ok else _FAILED
        result = "runs" if report.ok else _rank_result(report)
        lines.append(f"{_rank_list(group.ranks):<8} {held:<24} {_clip(output, 20):<20} "
                     f"{result}")  # fmt: skip
    for group in ranks.groups:
        if not group.report.ok:
            lines += ["", f"ranks {_rank_list(group.ranks)} (traced on rank {group.rank}):",
                      render_failure(group.report)]  # fmt: skip
    return "\n".join(lines)


def _rank_result(report: Report) -> str:
    failure = report.failure
    assert failure is not None
    where = f"'{failure.path}' ({failure.type})" if failure.path else f"forward ({failure.type})"
    rule = f": {report.diagnoses[0].rule}" if report.diagnoses else ""
    return f"fails at {where}{rule}"
