"""Locate the user's line of code: the call site of a functional op, the line that raised."""

from __future__ import annotations

import linecache
import os
import sys
from types import CodeType, FrameType, TracebackType

import torch

__all__ = ["caller_source", "code_line", "traceback_source"]

_LIBRARY_DIRS = (
    os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(os.__file__)) + os.sep,  # the stdlib (sysconfig: +3 ms)
)


#: Bounds the per-process caches below (a notebook makes a code object per cell run).
_KEPT = 4096
#: filename -> whether it is the user's: asked for every frame of every recorded call
_USER_FILES: dict[str, bool] = {}
#: (id of a code object, offset of its current instruction) -> (the code, ``file:line``).
#: The code is kept so that its id is not reused while cached; finding a line number walks the
#: code's line table (long in a model's forward), so each call site finds it once.
_SITES: dict[tuple[int, int], tuple[CodeType, str]] = {}


def _is_user_file(filename: str) -> bool:
    found = _USER_FILES.get(filename)
    if found is None:
        found = _user_file(filename)
        if len(_USER_FILES) < _KEPT:
            _USER_FILES[filename] = found
    return found


def _user_file(filename: str) -> bool:
    if filename.startswith("<") and not filename.startswith("<ipython"):
        return False  # frozen importlib and friends; notebook cells stay
    return not os.path.abspath(filename).startswith(_LIBRARY_DIRS)


def _where(frame: FrameType, lineno: int | None = None) -> str:
    return f"{frame.f_code.co_filename}:{lineno or frame.f_lineno}"


def caller_source(skip: int = 2) -> str | None:
    """``file:line`` of the nearest calling frame that is the user's code, not torch's."""
    frame: FrameType | None = sys._getframe(skip)
    known = _USER_FILES  # looked up inline: this runs for every frame of every recorded call
    for _ in range(40):  # bounded: the user's frame is a few levels up at most
        if frame is None:
            return None
        code = frame.f_code
        mine = known.get(code.co_filename)
        if mine or (mine is None and _is_user_file(code.co_filename)):
            return _site(frame, code)
        frame = frame.f_back
    return None


def _site(frame: FrameType, code: CodeType) -> str:
    at = (id(code), frame.f_lasti)
    known = _SITES.get(at)
    if known is not None and known[0] is code:
        return known[1]
    where = _where(frame)
    if len(_SITES) < _KEPT:
        _SITES[at] = (code, where)
    return where


def traceback_source(tb: TracebackType | None) -> str | None:
    """``file:line`` of the innermost user frame in a traceback."""
    found = None
    while tb is not None:
        if _is_user_file(tb.tb_frame.f_code.co_filename):
            found = _where(tb.tb_frame, tb.tb_lineno)
        tb = tb.tb_next
    return found


def code_line(source: str | None) -> str:
    """The stripped text of the line a ``file:line`` points at, or ``""``."""
    if not source or ":" not in source:
        return ""
    filename, _, lineno = source.rpartition(":")
    if not lineno.isdigit():
        return ""
    return linecache.getline(filename, int(lineno)).strip()
