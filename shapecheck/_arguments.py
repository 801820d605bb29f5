"""The checks on ``explain``'s own arguments that need the model: the input is there, the
keywords meant for ``forward`` are ones it takes, flags are flags, loss and target come together.

Keywords that are not ``explain``'s own go to the model's ``forward``. A name ``forward`` does
not take is a ``UsageError`` before anything runs: one close to an ``explain`` keyword
(``input_sizes=``) is taken for a typo and the right name suggested; any other lists what
``forward`` takes. A ``forward(**kwargs)`` takes any name, so only a near-typo is stopped there.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from ._errors import UsageError

__all__ = ["check_arguments", "explain_keywords"]


@functools.cache
def explain_keywords() -> tuple[str, ...]:
    """explain's own keyword names, read from its signature (so they never drift apart)."""
    from ._explain import explain

    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = inspect.signature(explain).parameters.items()
    return tuple(n for n, p in params if p.kind in kinds and n != "model")


def check_arguments(
    model: nn.Module,
    inputs: tuple[Any, ...],
    forward_kwargs: dict[str, Any],
    *,
    input_size: Any,
    flags: Mapping[str, object],
    loss_fn: Any,
    target: Any,
) -> None:
    """Raise a UsageError, saying what to do, for arguments that cannot be meant."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise UsageError(f"{name} must be True or False, got {value!r}.")
    _check_loss(loss_fn, target)
    if not forward_kwargs and (inputs or input_size is not None):
        return  # nothing to check against forward's signature (reading it costs ~0.1 ms)
    signature = _forward_signature(model)
    _check_keywords(type(model).__name__, signature, forward_kwargs)
    if not inputs and input_size is None:
        _check_needs_no_input(type(model).__name__, signature, forward_kwargs)


def _check_loss(loss_fn: Any, target: Any) -> None:
    if loss_fn is None and target is not None:
        raise UsageError(
            "target= is only used with loss_fn=: pass loss_fn=nn.CrossEntropyLoss() (or your "
            "loss) to trace the loss on the model's output and this target."
        )
    if loss_fn is not None and target is None:
        raise UsageError(
            "loss_fn= needs target=: the labels (or values) the loss compares the output "
            "with, e.g. explain(model, imgs, loss_fn=nn.CrossEntropyLoss(), target=labels)."
        )


def _forward_signature(model: nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(model.forward)
    except (TypeError, ValueError):  # a builtin or a wrapped forward without one
        return None


def _check_keywords(
    name: str, signature: inspect.Signature | None, forward_kwargs: dict[str, Any]
) -> None:
    if signature is None:
        return
    params = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    for key in forward_kwargs:
        if key in named:
            continue
        close = difflib.get_close_matches(key, explain_keywords(), n=1, cutoff=0.7)
        if close:
            raise UsageError(
                f"explain() has no keyword {key}=; did you mean {close[0]}=? (keywords that "
                f"are not explain's own go to {name}.forward{signature}, and it takes no "
                f"{key!r}.)"
            )
        if not takes_any:
            raise UsageError(
                f"{name}.forward{signature} takes no keyword {key!r}; explain's own keywords "
                f"are {', '.join(explain_keywords())}."
            )


def _check_needs_no_input(
    name: str, signature: inspect.Signature | None, forward_kwargs: dict[str, Any]
) -> None:
    if signature is None:
        return
    needed = [
        n for n, p in signature.parameters.items()
        if p.default is inspect.Parameter.empty and n not in forward_kwargs
        and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]  # fmt: skip
    if needed:
        raise UsageError(
            f"no input given, and {name}.forward{signature} needs {', '.join(needed)}: pass an "
            "example batch, explain(model, x), or its shape, "
            "explain(model, input_size=(1, 3, 32, 32))."
        )
