"""The exceptions shapecheck raises.

Hierarchy::

    ShapecheckError            base of everything shapecheck raises itself
    ├── UsageError (ValueError)     a bad argument: what was wrong and what is accepted
    └── ShapeError (RuntimeError)   a shape contract broken (raised by ``raise_for_failure``
                                     only when the original exception cannot be re-raised)

Errors raised by the user's model are never wrapped: ``Report.raise_for_failure()`` and
``clarify()`` re-raise the original exception object with the explanation added as a note.
"""

from __future__ import annotations

__all__ = ["ShapeError", "ShapecheckError", "UsageError"]


class ShapecheckError(Exception):
    """Base class of the errors shapecheck raises itself."""


class UsageError(ShapecheckError, ValueError):
    """A bad argument: the message names the value and lists what is accepted."""


class ShapeError(ShapecheckError, RuntimeError):
    """A shape contract that does not hold."""
