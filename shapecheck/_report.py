"""The Report: everything one ``explain`` found, with ways to read, raise and serialise it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import IO, Any

from ._errors import UsageError
from ._records import Diagnosis, Failure, Layer, Shape, TensorInfo, TrainingMemory

__all__ = ["Report", "add_note", "output_width", "stream_encodes"]

_NOTE_MARK = "shapecheck: "


@dataclass(eq=False)
class Report:
    """The result of :func:`shapecheck.explain`.

    Example:
        >>> import torch, shapecheck
        >>> report = shapecheck.explain(torch.nn.Linear(4, 2), torch.randn(3, 4))
        >>> report.ok, report.output_shapes, report.total_params
        (True, [(3, 2)], 10)
    """

    model_type: str
    layers: list[Layer]
    failure: Failure | None
    diagnoses: list[Diagnosis]
    warnings: list[Diagnosis]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    total_params: int
    trainable_params: int
    param_bytes_by_dtype: dict[str, int]
    buffer_count: int
    buffer_bytes: int
    dry_run: bool
    depth: int | None = None
    total_flops: int | None = None
    #: ops that do work but have no FLOPs formula (name -> calls): ``total_flops`` is a floor
    flops_uncounted: dict[str, int] | None = None
    #: one training step's memory by part, when ``explain(..., optimizer=...)`` asked for it
    training_memory: TrainingMemory | None = None
    #: why a dry run went on for real (fake tensors could not run it), else None
    fallback: str | None = None
    #: a dry run failed and no real run confirmed it (a meta model, a simulated device, or
    #: larger than the real-run budget): fake kernels may be stricter than real ones
    unconfirmed: bool = False
    #: how many re-runs the repair search made (each a forward of the model with fixes)
    reruns: int = 0
    #: fold repeated blocks into one ``×N`` row when printing (``explain(..., fold=False)``)
    fold: bool = True
    #: parameters shared between modules: (path, the path that owns them first, how many)
    tied: tuple[tuple[str, str, int], ...] = ()
    #: a sharded model (DTensor parameters, FSDP2): this process's rank, the world size, the
    #: mesh shape its parameters live on, and the bytes of this rank's parameter shards
    #: (``param_bytes`` and ``total_params`` stay global); None for a plain model
    rank: int | None = None
    world_size: int | None = None
    mesh_shape: tuple[int, ...] | None = None
    rank_param_bytes: int | None = None

    @property
    def ok(self) -> bool:
        """True when the forward pass ran to the end."""
        return self.failure is None

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def param_bytes(self) -> int:
        return sum(self.param_bytes_by_dtype.values())

    @property
    def input_shapes(self) -> list[Shape]:
        return [t.shape for t in self.inputs]

    @property
    def output_shapes(self) -> list[Shape]:
        """Shapes of the tensors in the model's output, nested structures flattened in order."""
        return [t.shape for t in self.outputs]

    def layer(self, path: str) -> Layer:
        """The first call recorded at ``path``; KeyError naming the known paths otherwise."""
        for layer in self.layers:
            if layer.path == path and layer.kind == "module":
                return layer
        known = ", ".join(repr(p) for p in dict.fromkeys(x.path for x in self.layers))
        raise KeyError(f"no layer at path {path!r}; recorded paths: {known}")

    def raise_for_failure(self) -> Report:
        """Re-raise the model's own exception, with this explanation added as a note.

        Returns the report itself when the forward ran, so calls can be chained.
        """
        if self.failure is None:
            return self
        error = self.failure.exception
        notes = getattr(error, "__notes__", [])
        if not any(str(n).startswith(_NOTE_MARK) for n in notes):
            add_note(error, _NOTE_MARK + "the forward pass, layer by layer\n" + str(self))
        raise error

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view of the report."""
        from ._serialize import report_to_dict

        return report_to_dict(self)

    def render(
        self,
        width: int | None = None,
        *,
        depth: int | None = None,
        fold: bool | None = None,
        ascii: bool | None = None,
    ) -> str:
        """The report as text, ``width`` columns wide at most.

        Args:
            width: columns; by default ``COLUMNS``, else the terminal's width, else 100 (files,
                pipes, notebooks). At least 40.
            depth: fold calls deeper than this into their caller (default: the ``depth`` given
                to ``explain``).
            fold: fold repeated blocks into one ``×N`` row and show each class's inside once
                (default: the ``fold`` given to ``explain``, True); False shows every call.
            ascii: only ASCII characters (``->`` for ``→``); by default, when standard output
                cannot encode the glyphs.

        Example:
            >>> import torch, shapecheck
            >>> report = shapecheck.explain(torch.nn.Linear(4, 2), torch.randn(3, 4))
            >>> print(report.render(60, ascii=True).splitlines()[3])
            (root)  Linear(4->2)  (3, 4)  (3, 2)      10
        """
        from ._render import Options, render_report

        options = Options(
            width=_width(width),
            depth=self.depth if depth is None else _depth(depth),
            fold=self.fold if fold is None else _flag(fold, "fold"),
            ascii=not stream_encodes(sys.stdout) if ascii is None else _flag(ascii, "ascii"),
        )
        return render_report(self, options)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        from ._render import summary_line

        return f"<Report {summary_line(self)}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython's pretty printer (a REPL, Spyder, a notebook's text/plain): the text report."""
        printer.text(repr(self) if cycle else self.render())

    def _repr_html_(self) -> str:
        from ._html import render_html

        return render_html(self)


def output_width(stream: IO[str] | None = None) -> int:
    """Where text goes, how wide: ``COLUMNS``, else the terminal's width, else 100."""
    from ._render import MIN_WIDTH, WIDTH

    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return max(MIN_WIDTH, int(columns))
    stream = sys.stdout if stream is None else stream
    try:
        if stream.isatty():
            return max(MIN_WIDTH, os.get_terminal_size(stream.fileno()).columns)
    except (AttributeError, OSError, ValueError):  # no terminal behind it, or a closed stream
        pass
    return WIDTH


def stream_encodes(stream: IO[str] | None) -> bool:
    """True when ``stream`` can take the glyphs shapecheck draws."""
    from ._text import can_encode

    return can_encode(getattr(stream, "encoding", None) or "utf-8")


def _width(width: object) -> int:
    from ._render import MIN_WIDTH

    if width is None:
        return output_width()
    if not isinstance(width, int) or isinstance(width, bool) or width < MIN_WIDTH:
        raise UsageError(f"width must be an int >= {MIN_WIDTH} (columns), got {width!r}.")
    return width


def _depth(depth: object) -> int:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise UsageError(f"depth must be None or an int >= 0, got {depth!r}.")
    return depth


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{name} must be True or False, got {value!r}.")
    return value


def add_note(error: BaseException, note: str) -> None:
    """``BaseException.add_note`` where Python has it (3.11+), the same attribute otherwise."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:  # Python 3.10: store it where 3.11 would; tracebacks there will not show it
        error.__notes__ = [*getattr(error, "__notes__", []), note]
