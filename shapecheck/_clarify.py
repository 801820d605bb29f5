"""``clarify()``: exceptions from module forwards come out with the explanation as a note."""

from __future__ import annotations

import dataclasses
import sys
from contextlib import ContextDecorator
from typing import Any

from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils.hooks import RemovableHandle

from ._records import Step
from ._report import Report, add_note, output_width, stream_encodes

__all__ = ["clarify", "could_not_explain", "explanation_note", "replay"]


class clarify(ContextDecorator):
    """Add shapecheck's explanation to exceptions raised inside module forwards.

    The exception keeps its type, message and traceback; the layer table, the failing layer
    and the verified fix are added as a note (``BaseException.add_note``). Works as a context
    manager and as a decorator. Global module hooks see positional arguments only, so a call
    that needs keyword arguments is explained at the outermost module inside it that raises the
    error again; when none does, the note says so instead of explaining another failure.

    Example:
        >>> import torch, shapecheck
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8 * 30 * 30, 2))
        >>> try:
        ...     with shapecheck.clarify():
        ...         model(torch.randn(1, 3, 32, 32))
        ... except RuntimeError as error:
        ...     print(error.__notes__[0].splitlines()[0])
        shapecheck: the forward pass, layer by layer
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        self._depth = 0
        self._busy = False
        self._error: BaseException | None = None  # the error now leaving modules, and
        self._left: list[tuple[nn.Module, tuple[Any, ...]]] = []  # the calls it left, inner first

    def __enter__(self) -> clarify:
        self._handles = [
            register_module_forward_pre_hook(self._enter_module),
            register_module_forward_hook(self._leave_module, always_call=True),
        ]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._depth = 0
        self._error, self._left = None, []

    def _enter_module(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self._busy:
            self._depth += 1

    def _leave_module(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._busy:
            return
        error = sys.exc_info()[1] if output is None else None
        try:
            self._left_with(module, args, error)
        except Exception as inner:  # torch would swallow it (always_call hooks): say it instead
            if isinstance(error, Exception):
                add_note(error, could_not_explain(inner))

    def _left_with(self, module: nn.Module, args: tuple[Any, ...], error: Any) -> None:
        self._depth -= 1
        if isinstance(error, Exception):
            if error is not self._error:  # a new error (an earlier one was caught inside)
                self._error, self._left = error, []
            self._left.append((module, args))
        if self._depth > 0:
            return
        calls = self._left[::-1] if error is self._error else []
        self._error, self._left = None, []
        if isinstance(error, Exception) and not _tracing():
            self._annotate(error, calls)

    def _annotate(self, error: Exception, calls: list[tuple[nn.Module, tuple[Any, ...]]]) -> None:
        """Explain the outermost call that raises the error again when replayed from its
        positional arguments; say so plainly when none does."""
        self._busy = True
        try:
            for module, args in _unique(calls):
                report = replay(module, args, {}, error)
                if report is not None:
                    add_note(error, explanation_note(report, error))
                    return
        except Exception as inner:  # the note must never replace the user's own error
            add_note(error, could_not_explain(inner))
            return
        finally:
            self._busy = False
        add_note(error, _NOT_REPLAYED)


def could_not_explain(inner: BaseException) -> str:
    """The one-line note for the user's error when shapecheck itself failed to explain it."""
    return f"shapecheck could not explain this: {inner!r}; please report it"


_NOT_REPLAYED = (
    "shapecheck: replaying this forward from its positional arguments did not raise this error "
    "again (clarify() cannot see keyword arguments); call shapecheck.explain(model, *args, "
    "**kwargs) to explain it"
)


def _unique(
    calls: list[tuple[nn.Module, tuple[Any, ...]]],
) -> list[tuple[nn.Module, tuple[Any, ...]]]:
    """Each module once (its outermost call), in the given order."""
    first: dict[int, tuple[nn.Module, tuple[Any, ...]]] = {}
    for module, args in calls:
        first.setdefault(id(module), (module, args))
    return list(first.values())


def replay(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], error: BaseException
) -> Report | None:
    """The report of ``module(*args, **kwargs)`` if that raises ``error`` again, else None.

    It runs for real first: the user's own tensors, so the report quotes the message they got
    and says "real forward". When a real replay raises something else (out of memory with the
    failed forward still held, say), fake tensors replay the shapes, and the report is put in
    the user's words: their exception and PyTorch's message for it.
    """
    from ._explain import explain

    report = explain(module, *args, **kwargs)
    failure = report.failure
    if failure is not None and type(failure.exception) is type(error):
        if report.dry_run:  # a meta model or meta inputs: fake tensors were all there was
            return in_users_words(report, error)
        return report if str(failure.exception) == str(error) else None
    dry = explain(module, *args, dry_run=True, **kwargs)
    if dry.failure is None or type(dry.failure.exception) is not type(error):
        return None
    return in_users_words(dry, error)


def in_users_words(report: Report, error: BaseException) -> Report:
    """``report`` with the user's own exception, and its message wherever PyTorch is quoted."""
    assert report.failure is not None
    theirs = dataclasses.replace(report.failure, exception=error)
    said, says = report.failure.message, theirs.message

    def step(item: Step) -> Step:
        evidence = tuple((label, says if label == "PyTorch" and text == said else text)
                         for label, text in item.evidence)  # fmt: skip
        return dataclasses.replace(item, evidence=evidence)

    diagnoses = [dataclasses.replace(d, plan=tuple(step(s) for s in d.plan))
                 for d in report.diagnoses]  # fmt: skip
    return dataclasses.replace(report, failure=theirs, diagnoses=diagnoses)


def explanation_note(report: Report, error: BaseException) -> str:
    """The note added to the user's exception: the report, as wide as standard error."""
    how = "" if not report.dry_run else " (replayed on fake tensors: shapes only)"
    text = report.render(output_width(sys.stderr), ascii=not stream_encodes(sys.stderr))
    return f"shapecheck: the forward pass, layer by layer{how}\n{text}"


def _tracing() -> bool:
    """True inside a forward that explain() runs itself: its report holds that error."""
    from torch.overrides import _get_current_function_mode_stack

    from ._recorder import Recorder

    stack = _get_current_function_mode_stack()  # type: ignore[no-untyped-call]
    return any(isinstance(mode, Recorder) for mode in stack)
