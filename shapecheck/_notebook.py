"""Explanations where learners work: ``%load_ext shapecheck`` in IPython and Jupyter,
``shapecheck.enable()`` in plain Python and scripts, and the ``%shapecheck model x`` magic.

Nothing is hooked into the model and nothing runs while cells succeed. When a cell (or a
script) ends with an exception raised inside an ``nn.Module`` call, the traceback it carries
still holds that call's frame: the module and the positional and keyword arguments it was
called with. The outermost such call is replayed through ``explain`` (as ``clarify()`` does)
and, when the replay raises the same error, the explanation follows the traceback: rich output
in IPython (HTML in Jupyter, text in a terminal), a note on the exception elsewhere.

IPython stays optional: this module imports it only inside functions IPython itself calls.
"""

from __future__ import annotations

import ast
import re
import sys
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["disable", "enable", "load_ipython_extension", "unload_ipython_extension"]

_NOTE_MARK = "shapecheck: "
_NOT_REPLAYED = (
    "shapecheck: replaying the failing call {call} did not raise this error again (it may "
    "depend on state the first call changed); call shapecheck.explain(model, *args) on it"
)


class _State:
    """What ``enable`` changed, so that ``disable`` can put it back."""

    shell: Any = None
    excepthook: Callable[..., Any] | None = None


_STATE = _State()


def enable(shell: Any = None) -> None:
    """Explain every exception raised inside an ``nn.Module`` call from now on.

    In IPython or Jupyter (the running shell, or ``shell``) each failing cell gets the
    explanation after its traceback, and ``%shapecheck`` is defined; elsewhere (a script, the
    plain Python prompt) an uncaught exception gets it as a note, shown after the traceback.
    Nothing runs while the code works. Calling it again changes nothing; ``disable()`` undoes it.

    Example:
        >>> import shapecheck
        >>> shapecheck.enable()   # at the top of a training script
        >>> shapecheck.disable()
    """
    shell = shell if shell is not None else _running_shell()
    if shell is not None:
        _enable_in(shell)
    elif _STATE.excepthook is None:
        _STATE.excepthook = sys.excepthook
        sys.excepthook = _excepthook


def disable() -> None:
    """Stop what :func:`enable` (or ``%load_ext shapecheck``) started."""
    if _STATE.shell is not None:
        _STATE.shell.events.unregister("post_run_cell", _after_cell)
        _STATE.shell = None
    if _STATE.excepthook is not None:
        if sys.excepthook is _excepthook:
            sys.excepthook = _STATE.excepthook
        _STATE.excepthook = None


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext shapecheck``: explain failing cells, and define ``%shapecheck``."""
    _enable_in(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext shapecheck``."""
    disable()
    ipython.magics_manager.magics["line"].pop("shapecheck", None)


def _running_shell() -> Any:
    ipython = sys.modules.get("IPython")  # only a shell that is already running
    return ipython.get_ipython() if ipython is not None else None


def _enable_in(shell: Any) -> None:
    if _STATE.shell is shell:
        return
    if _STATE.shell is not None:
        disable()
    shell.events.register("post_run_cell", _after_cell)
    shell.register_magic_function(_magic, magic_kind="line", magic_name="shapecheck")
    _STATE.shell = shell


# -- after a failure ----------------------------------------------------------------------------


def failing_call(tb: TracebackType | None) -> tuple[Any, tuple[Any, ...], dict[str, Any]] | None:
    """The outermost ``nn.Module`` call in a traceback: (module, args, kwargs), or None.

    ``Module.__call__`` keeps its arguments untouched in its frame (forward pre-hooks may
    replace them further in), so they are what the module was called with.
    """
    torch = sys.modules.get("torch")
    if torch is None or tb is None:  # no module can have raised
        return None
    module_type = torch.nn.Module
    calls = {getattr(module_type, name).__code__ for name in ("_wrapped_call_impl", "_call_impl")
             if hasattr(module_type, name)}  # fmt: skip
    for frame, _ in traceback.walk_tb(tb):
        if frame.f_code in calls:
            local = frame.f_locals
            module, args, kwargs = local.get("self"), local.get("args"), local.get("kwargs")
            if isinstance(module, torch.nn.Module) and isinstance(args, tuple):
                return module, args, dict(kwargs or {})
    return None


def explain_error(error: BaseException) -> Any:
    """The Report for ``error`` when it was raised in a module call that raises it again, a
    line of text saying why there is none, or None when there is nothing to explain."""
    if not isinstance(error, Exception) or _explained(error):
        return None
    found = failing_call(error.__traceback__)
    if found is None:
        return None
    from ._clarify import could_not_explain, replay

    module, args, kwargs = found
    try:
        report = replay(module, args, kwargs, error) if _passable(kwargs) else None
    except Exception as inner:  # shapecheck's own failure must never hide the user's error
        return could_not_explain(inner)
    if report is None:
        return _NOT_REPLAYED.format(call=f"{type(module).__name__}(...)")
    return report


def _explained(error: BaseException) -> bool:
    """Already explained: by ``clarify()``, ``raise_for_failure()``, or an earlier hook."""
    return any(str(note).startswith(_NOTE_MARK) for note in getattr(error, "__notes__", []))


def _passable(kwargs: dict[str, Any]) -> bool:
    """Keyword arguments ``explain`` can pass on (none of them is one of its own names)."""
    from ._arguments import explain_keywords

    return not set(explain_keywords()) & set(kwargs)


def _after_cell(result: Any) -> None:
    """IPython's ``post_run_cell``: after a failing cell, show what shapecheck makes of it."""
    error = getattr(result, "error_in_exec", None)
    if error is None:
        return
    found = explain_error(error)
    if found is None:
        return
    if isinstance(found, str):
        print(found, file=sys.stderr)
        return
    from IPython.display import display

    display(found)  # type: ignore[no-untyped-call]


def _excepthook(etype: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    """``sys.excepthook`` outside IPython: the explanation as a note, then the usual traceback."""
    previous = _STATE.excepthook or sys.__excepthook__
    found = None
    try:
        found = explain_error(value)
        if found is not None:
            from ._clarify import explanation_note
            from ._report import add_note

            add_note(value, found if isinstance(found, str) else explanation_note(found, value))
    finally:
        previous(etype, value, tb)
    if found is not None and sys.version_info < (3, 11):  # notes are not printed before 3.11
        print("\n".join(str(n) for n in getattr(value, "__notes__", [])), file=sys.stderr)


# -- %shapecheck --------------------------------------------------------------------------------


def _magic(line: str) -> Any:
    """``%shapecheck model x [name=value ...]``: ``shapecheck.explain(model, x, ...)``.

    Arguments are Python expressions in the notebook's namespace, separated by spaces or
    commas; ``name=value`` ones are explain's keywords (``dry_run=True``, ``depth=1``, …).
    """
    from IPython.core.error import UsageError as IPythonUsageError

    from ._errors import UsageError
    from ._explain import explain

    shell = _STATE.shell or _running_shell()
    try:
        args, kwargs = parse_magic(line, shell.user_ns if shell is not None else {})
        if not args:
            raise UsageError("write %shapecheck model x (the model, then its example inputs).")
        return explain(*args, **kwargs)
    except UsageError as error:  # shown as IPython shows usage errors: one line, no traceback
        raise IPythonUsageError(str(error)) from None


_SPACES = re.compile(r"\s+")


def parse_magic(line: str, namespace: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The arguments of ``%shapecheck``, evaluated in ``namespace``.

    >>> parse_magic("m x dry_run=True", {"m": 1, "x": 2})
    ([1, 2], {'dry_run': True})
    >>> parse_magic("m, (1, 2)", {"m": 1})
    ([1, (1, 2)], {})
    """
    from ._errors import UsageError

    try:
        call = _as_call(line)
    except SyntaxError as error:
        raise UsageError(f"%shapecheck {line.strip()}: {error.msg}; write %shapecheck model x "
                         "(Python expressions, then name=value keywords).") from None  # fmt: skip
    scope = dict(namespace)

    def value(node: ast.expr) -> Any:
        return eval(compile(ast.Expression(node), "<%shapecheck>", "eval"), scope)

    args = [value(a) for a in call.args]
    kwargs = {k.arg: value(k.value) for k in call.keywords if k.arg is not None}
    return args, kwargs


def _as_call(line: str) -> ast.Call:
    """``line`` as the arguments of a call: with commas, or with spaces between arguments."""
    text = line.strip()
    try:
        node = ast.parse(f"_({text})", mode="eval").body
    except SyntaxError:
        node = ast.parse(f"_({', '.join(_split(text))})", mode="eval").body
    assert isinstance(node, ast.Call)
    return node


def _split(text: str) -> list[str]:
    """Split at spaces outside brackets and strings: ``m torch.randn(1, 3)`` is two parts."""
    parts, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char.isspace() and depth == 0:
            if text[start:index].strip():
                parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip() and not _SPACES.fullmatch(p)]
