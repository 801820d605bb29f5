"""The loss as part of the trace: a loss module, or a plain loss function wrapped as one.

A failure inside the loss then has ``failure.path == "loss"`` either way, and the rules can read
the loss's module attributes (``ignore_index``, ``weight``…) like any layer's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ._errors import UsageError

__all__ = ["LOSS_PATH", "LossFunction", "loss_hooks", "loss_module"]

#: The path under which the loss appears in the trace and the report.
LOSS_PATH = "loss"


class LossFunction(nn.Module):
    """A plain loss function (``F.cross_entropy``) as a module, so that hooks can see it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, output: Any, target: Any) -> Any:
        return self.fn(output, target)


def loss_module(loss_fn: object) -> nn.Module | None:
    """``loss_fn`` itself when it is a module; a :class:`LossFunction` named after a function.

    Example:
        >>> import torch.nn.functional as F
        >>> type(loss_module(F.cross_entropy)).__name__
        'cross_entropy'
    """
    if loss_fn is None or isinstance(loss_fn, nn.Module):
        return loss_fn
    if isinstance(loss_fn, type) and issubclass(loss_fn, nn.Module):
        name = loss_fn.__name__
        raise UsageError(f"loss_fn is the class {name}; pass an instance: loss_fn=nn.{name}().")
    if not callable(loss_fn):
        raise UsageError(
            f"loss_fn must be an nn.Module or a function (output, target) -> loss, "
            f"got {type(loss_fn).__name__}."
        )
    name = getattr(loss_fn, "__name__", "") or "loss_function"
    named = type(name, (LossFunction,), {"__module__": __name__})  # the table shows its name
    module: nn.Module = named(loss_fn)
    return module


def loss_hooks(loss: nn.Module | None, target: Any) -> dict[str, Any]:
    """Keyword arguments for ``run_trace`` that also call ``loss(output, target)``."""
    if loss is None:
        return {}
    return {"extra": {LOSS_PATH: loss}, "call": lambda output: loss(output, target)}
