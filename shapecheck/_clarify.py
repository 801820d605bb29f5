"""``clarify()``: exceptions from module forwards come out with the explanation as a note."""

from __future__ import annotations

import sys
from contextlib import ContextDecorator
from typing import Any

from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils.hooks import RemovableHandle

from ._report import add_note

__all__ = ["clarify"]


class clarify(ContextDecorator):
    """Add shapecheck's explanation to exceptions raised inside module forwards.

    The exception keeps its type, message and traceback; the layer table, the failing layer
    and the verified fix are added as a note (``BaseException.add_note``). Works as a context
    manager and as a decorator.

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

    def _enter_module(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self._busy:
            self._depth += 1

    def _leave_module(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._busy:
            return
        self._depth -= 1
        error = sys.exc_info()[1] if output is None else None
        if self._depth == 0 and isinstance(error, Exception) and not _tracing():
            self._annotate(error, module, args)

    def _annotate(self, error: Exception, module: nn.Module, args: tuple[Any, ...]) -> None:
        from ._explain import explain

        self._busy = True
        try:
            report = explain(module, *args, dry_run=True)
            if report.failure is not None and type(report.failure.exception) is not type(error):
                report = explain(module, *args)  # fake tensors could not replay this op
        except Exception as inner:  # the note must never replace the user's own error
            add_note(error, f"shapecheck: could not explain this failure ({inner!r})")
            return
        finally:
            self._busy = False
        if report.failure is not None:
            add_note(error, "shapecheck: the forward pass, layer by layer\n" + str(report))


def _tracing() -> bool:
    """True inside a forward that explain() runs itself: its report holds that error."""
    from torch.overrides import _get_current_function_mode_stack

    from ._recorder import FunctionMode

    stack = _get_current_function_mode_stack()  # type: ignore[no-untyped-call]
    return any(isinstance(mode, FunctionMode) for mode in stack)
