"""The only code that turns a Report into text or HTML. No torch calls here."""

from __future__ import annotations

import html
import re
import textwrap
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from ._records import Layer, Outcome, Step, TensorInfo, TrainingMemory
from ._text import count, nbytes, shape, shapes, short

if TYPE_CHECKING:
    from ._ranks import RankReports
    from ._report import Report

__all__ = [
    "flops_text", "plan_text", "render_html", "render_ranks", "render_report", "render_table",
    "step_lines",
]  # fmt: skip

WIDTH = 100
_COLUMNS = (("layer", 44), ("input", 20), ("output", 20), ("params", 10))
# with FLOPs counted, the other columns give up 10 characters so the table still fits WIDTH
_FLOPS_COLUMNS = (("layer", 40), ("input", 18), ("output", 18), ("params", 10), ("FLOPs", 7))
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
    held = layer.params if layer.rank_params is None else layer.rank_params  # this rank's
    params = count(held) if layer.params else ("" if layer.kind == "function" else "—")
    return _name(layer), shapes(layer.input_shapes), output, params


def _sharded_text(info: TensorInfo) -> str:
    """A tensor's global shape and placements, ``(2, 8, 64) S(2)``; ``·`` for a plain one."""
    if info.global_shape is None or info.placements is None:
        return "·"
    return f"{shape(info.global_shape)} {','.join(info.placements)}"


def _sharded_cells(layer: Layer, flops: bool) -> tuple[str, ...] | None:
    """The line under a row of a sharded layer: global shapes and placements of its tensors,
    its parameters' placements and bytes on this rank, and their global count."""
    tensors = (*layer.inputs, *layer.outputs)
    if not layer.param_placements and all(t.global_shape is None for t in tensors):
        return None
    by_placement: dict[str, list[str]] = {}  # "weight,bias S(0)": one placement, said once
    for param, placements in layer.param_placements:
        by_placement.setdefault(",".join(placements), []).append(param)
    held = [f"{','.join(names)} {p}" for p, names in by_placement.items()]
    if layer.rank_param_bytes:
        held.append(nbytes(layer.rank_param_bytes))
    name = "  " * layer.depth + "  ↳ " + (" · ".join(held) or "global")
    outputs = "" if layer.failed else " ".join(_sharded_text(t) for t in layer.outputs)
    params = f"of {count(layer.params)}" if layer.param_placements else ""
    cells = (name, " ".join(_sharded_text(t) for t in layer.inputs), outputs, params)
    return (*cells, "") if flops else cells


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


def _row_cells(layer: Layer, flops: bool) -> tuple[str, ...]:
    if not flops:
        return _cells(layer)
    counted = "" if layer.flops is None or (layer.kind == "function" and not layer.flops) \
        else ("≥" if layer.flops_uncounted else "") + _si(layer.flops)  # fmt: skip
    return (*_cells(layer), counted)


def _columns(report: Report) -> tuple[tuple[str, int], ...]:
    return _COLUMNS if report.total_flops is None else _FLOPS_COLUMNS


def _visible(report: Report) -> list[Layer]:
    """The rows to print; with ``depth``, deeper calls fold into their nearest shown ancestor,
    which then shows their parameters and how many rows it holds."""
    if report.depth is None:
        return report.layers
    shown = {x.index for x in report.layers if x.depth <= report.depth or x.failed}
    folded: dict[int, list[Layer]] = {}
    for layer in report.layers:
        if layer.index not in shown:
            folded.setdefault(_shown_ancestor(report.layers, layer, shown), []).append(layer)
    return [_with_folded(x, folded.get(x.index, [])) for x in report.layers if x.index in shown]


def _shown_ancestor(layers: list[Layer], layer: Layer, shown: set[int]) -> int:
    parent = layer.parent
    while parent is not None and parent not in shown:
        parent = layers[parent].parent
    return -1 if parent is None else parent


def _with_folded(layer: Layer, inside: list[Layer]) -> Layer:
    if not inside:
        return layer
    return replace(layer, params=layer.params + sum(x.params for x in inside),
                   summary=f"{layer.summary} [+{len(inside)} rows]")  # fmt: skip


def render_table(report: Report) -> str:
    """The layer table: path and type, input and output shapes, parameters owned directly."""
    columns = _columns(report)

    def row(*cells: str) -> str:
        left = [f"{_fit(c, w):<{w}}" for c, (_, w) in zip(cells[:3], columns[:3], strict=True)]
        right = [f"{c:>{w}}" for c, (_, w) in zip(cells[3:], columns[3:], strict=True)]
        return " ".join(left + right).rstrip()

    lines = [row(*(h for h, _ in columns)), "─" * (sum(w for _, w in columns) + len(columns) - 1)]
    flops = report.total_flops is not None
    for layer in _visible(report):
        lines.append(row(*_row_cells(layer, flops)))
        sharded = _sharded_cells(layer, flops)
        if sharded is not None:
            lines.append(row(*sharded))
    return "\n".join(lines)


def render_totals(report: Report) -> str:
    """Parameter totals, sizes by dtype, buffers, and the model's inputs and outputs."""
    by_dtype = ", ".join(f"{nbytes(b)} {d}" for d, b in sorted(report.param_bytes_by_dtype.items()))
    lines = [
        f"params     {count(report.total_params)} total · {count(report.trainable_params)} "
        f"trainable · {count(report.non_trainable_params)} frozen"
        + (f" · {by_dtype}" if by_dtype else ""),
    ]
    if report.rank_param_bytes is not None:
        lines.append(_rank_line(report))
    if report.buffer_count:
        lines.append(f"buffers    {count(report.buffer_count)} values · "
                     f"{nbytes(report.buffer_bytes)}")  # fmt: skip
    if report.total_flops is not None:
        uncounted = report.flops_uncounted or {}
        exact = f"{count(report.total_flops)} forward" if not uncounted else ""
        lines.append(f"flops      {exact or flops_text(report.total_flops, uncounted)}")
    if report.training_memory is not None:
        on = "" if report.rank is None else f" on rank {report.rank}"
        lines += _memory_lines(report.training_memory, on)
    mode = "dry run (fake tensors)" if report.dry_run else "real forward"
    if report.fallback is not None:
        mode = "real forward: fake tensors could not run it"
    elif report.unconfirmed:
        mode += "; not confirmed by a real run"
    output = shapes(report.output_shapes) if report.ok else "— (the forward raised)"
    kinds = " ".join(dict.fromkeys(f"{t.dtype} {t.device}" for t in report.inputs))
    lines.append(f"input      {shapes(report.input_shapes)} {kinds} → output {output}   [{mode}]")
    return "\n".join(lines)


def _rank_line(report: Report) -> str:
    """``rank       0 of 4 (mesh (4,)) holds 1.4 MiB of the parameters``."""
    mesh = f" (mesh {shape(report.mesh_shape)})" if report.mesh_shape else ""
    held = nbytes(report.rank_param_bytes or 0)
    return f"rank       {report.rank} of {report.world_size}{mesh} holds {held} of the parameters"


def _memory_lines(memory: TrainingMemory, on: str = "") -> list[str]:
    parts = [f"params {nbytes(memory.params)}", f"grads {nbytes(memory.grads)}",
             f"optimizer state {nbytes(memory.optimizer_state)}",
             f"saved for backward {nbytes(memory.saved)}"]  # fmt: skip
    if memory.buffers:
        parts.append(f"buffers {nbytes(memory.buffers)}")
    glued = [p.replace(" ", "\u00a0") for p in parts]  # wrap between parts, never inside one
    head = f"training   ≈ {nbytes(memory.total)} per step{on} with {memory.optimizer}: "
    text = head + " + ".join(glued) + " (allocator overhead and workspaces not included)"
    lines = textwrap.wrap(text, WIDTH, subsequent_indent=" " * 11)
    return [line.replace("\u00a0", " ") for line in lines]


def step_lines(step: Step) -> list[str]:
    """One diagnosis as lines: headline, labelled evidence, the cause and its arithmetic, the
    fix with how it was checked."""
    lines = [step.headline, *(f"  {label:<9} {text}" for label, text in step.evidence)]
    lines += [f"cause: {step.cause}", *step.arithmetic]
    lines += [f"fix ({_status(step)}): {step.change.summary}", f"    {step.change.code}"]
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


def _where_next(step: Step, outcome: Outcome) -> str:
    """Where the model fails once this fix is made: another layer, another call of the same
    layer, or the same call on the input the fix gave it."""
    where = f"'{outcome.failed_path}' ({outcome.failed_type}"
    if outcome.failed_path != step.path:
        return f"the model then fails at {where})"
    if outcome.failed_call:
        return f"the model then fails at {where}, its call {outcome.failed_call + 1})"
    return f"{where}) then fails on its new input {shapes(list(outcome.failed_inputs))}"


def _ran(outcome: Outcome) -> str:
    output = shapes(list(outcome.output_shapes))
    if outcome.keeps_batch is False:
        return (
            f"the model then runs ({outcome.by}), but its output {output} does not start "
            f"with the input's batch of {outcome.samples}: samples are no longer kept apart"
        )
    how = "by a real run" if outcome.by == "real run" else "by a dry run, shapes only"
    if outcome.real_samples:
        how += f" of {outcome.real_samples} sample"
    return f"verified {how}: the model then runs, output {output}"


def plan_text(plan: tuple[Step, ...]) -> str:
    """A whole repair plan as text: the first diagnosis, then each next step."""
    lines = step_lines(plan[0])
    for number, step in enumerate(plan[1:], start=2):
        lines += ["", f"then, step {number}:", *step_lines(step)]
    return "\n".join(lines)


def render_failure(report: Report) -> str:
    """The failure and its diagnoses; a plain account when no rule matched."""
    failure = report.failure
    if failure is None:
        return ""
    if report.diagnoses:
        first, *others = report.diagnoses
        lines = _wrapped(plan_text(first.plan))
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


_GLUE = "\u00a0"  # textwrap splits on ASCII whitespace only
_TUPLE = re.compile(r"\((?:-?\d+|\*)(?:, (?:-?\d+|\*))+,?\)")


def _wrapped(message: str) -> list[str]:
    """Message lines folded to the width; continuation lines indented under their label."""
    lines = []
    for line in message.splitlines():
        indent = " " * (len(line) - len(line.lstrip()) + (10 if line.startswith("  ") else 4))
        glued = _TUPLE.sub(lambda m: m.group(0).replace(" ", _GLUE), line)  # keep shapes whole
        folded = textwrap.wrap(glued, WIDTH, subsequent_indent=indent, break_long_words=False,
                               break_on_hyphens=False) or [""]  # fmt: skip
        lines += [part.replace(_GLUE, " ") for part in folded]
    return lines


def render_warnings(report: Report) -> str:
    lines = []
    for warning in report.warnings:  # folded like failures: 100 columns
        first, *rest = plan_text(warning.plan).splitlines()
        lines += _wrapped("\n".join([f"warning ({warning.rule}): {first}", *rest]))
    return "\n".join(lines)


def render_report(report: Report) -> str:
    """Table, totals, then the failure and its diagnoses, in at most 100 columns."""
    totals = "\n".join(_wrapped(render_totals(report)))  # many inputs make a long input line
    parts = [f"shapecheck: {report.model_type}", render_table(report), "", totals]
    for section in (render_failure(report), render_warnings(report)):
        if section:
            parts += ["", section]
    return "\n".join(parts)


def render_html(report: Report) -> str:
    """A notebook view: the table as HTML, the rest as preformatted text."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in _columns(report))
    body = []
    for layer in _visible(report):
        name, *rest = (html.escape(c) for c in _row_cells(layer, report.total_flops is not None))
        style = ' style="color:#b00"' if layer.failed else ""
        body.append(f"<tr{style}><td style='text-align:left;white-space:pre'>{name}</td>"
                    + "".join(f"<td>{c}</td>" for c in rest) + "</tr>")  # fmt: skip
        sharded = _sharded_cells(layer, report.total_flops is not None)
        if sharded is not None:  # global shapes and placements, under the row
            body.append("<tr>" + "".join(f"<td style='white-space:pre'>{html.escape(c)}</td>"
                                         for c in sharded) + "</tr>")  # fmt: skip
    tail = "\n\n".join(p for p in (render_totals(report), render_failure(report),
                                   render_warnings(report)) if p)  # fmt: skip
    return (f"<div><b>shapecheck: {html.escape(report.model_type)}</b><table><thead><tr>{head}"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<pre>{html.escape(tail)}</pre></div>")  # fmt: skip


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
        f"{shape(ranks.mesh_shape)}: {groups} group{'s' if groups != 1 else ''} of ranks with "
        "the same shards, one traced each",
        f"{'ranks':<8} {'params here':<24} {'output':<20} result",
    ]
    for group in ranks.groups:
        report = group.report
        held = f"{count(group.params)} · {nbytes(ranks.rank_param_bytes[group.rank])}"
        output = shapes(report.output_shapes) if report.ok else _FAILED
        result = "runs" if report.ok else _failed_at(report)
        lines.append(f"{_rank_list(group.ranks):<8} {held:<24} {_fit(output, 20):<20} "
                     f"{result}")  # fmt: skip
    for group in ranks.groups:
        if not group.report.ok:
            lines += ["", f"ranks {_rank_list(group.ranks)} (traced on rank {group.rank}):",
                      render_failure(group.report)]  # fmt: skip
    return "\n".join(lines)


def _failed_at(report: Report) -> str:
    failure = report.failure
    assert failure is not None
    where = f"'{failure.path}' ({failure.type})" if failure.path else f"forward ({failure.type})"
    rule = f": {report.diagnoses[0].rule}" if report.diagnoses else ""
    return f"fails at {where}{rule}"
