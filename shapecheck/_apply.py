"""Keep a diagnosis's fix: a fixed copy of the user's model, exactly as the re-run verified it."""

from __future__ import annotations

import copy
from contextlib import ExitStack

from torch import nn

from ._errors import ShapecheckError, UsageError
from ._fixes import Applied, Fix
from ._inputs import unwrapped
from ._records import Diagnosis

__all__ = ["fingerprint", "fixed_copy"]


def fingerprint(model: nn.Module) -> int:
    """The model's layers, paths and types: what a fix's paths refer to (a lazy layer counts
    as the layer it becomes, as in the traced copy)."""
    return hash(tuple((path, (getattr(m, "cls_to_become", None) or type(m)).__qualname__)
                      for path, m in model.named_modules()))  # fmt: skip


def fixed_copy(diagnosis: Diagnosis, model: nn.Module) -> nn.Module:
    """``model`` with the diagnosis's fix and the rest of its plan, as a new model.

    The fixes are swapped into ``model`` only while it is copied, as during their re-run, so
    ``model`` itself ends as it was.
    """
    model = unwrapped(model)  # explain traced the module inside the wrapper too
    steps = _plan(diagnosis)
    _check_keepable(diagnosis, steps)
    if diagnosis.made_for is not None and diagnosis.made_for != fingerprint(model):
        raise UsageError(
            f"this '{diagnosis.rule}' fix was made for another model (its layers differ from "
            f"this {type(model).__name__}'s); pass the model that explain() was given."
        )
    with ExitStack() as stack:
        applied = Applied(model, (), {})
        for step in steps:
            fix: Fix = step.change
            try:
                applied = stack.enter_context(fix.applied(applied))
            except (AttributeError, KeyError, IndexError, TypeError) as error:
                raise UsageError(
                    f"the '{step.rule}' fix for layer '{step.path}' does not fit this "
                    f"{type(model).__name__} ({error}); pass the model that explain() was given."
                ) from error
        return copy.deepcopy(applied.model)


def _plan(diagnosis: Diagnosis) -> list[Diagnosis]:
    """The diagnosis, then each next step of its repair plan."""
    steps = [diagnosis]
    while steps[-1].then:
        steps.append(steps[-1].then[0])
    return steps


def _check_keepable(diagnosis: Diagnosis, steps: list[Diagnosis]) -> None:
    for step in steps:
        changes = step.change.changes if isinstance(step.change, Fix) else "nothing"
        if changes != "model":
            raise ShapecheckError(
                f"the '{step.rule}' fix changes {changes}, not the model's layers, so it cannot "
                f"be kept in a copy of the model; make it in your code:\n    {step.fix}"
            )
    if not steps[-1].verified:
        raise ShapecheckError(
            f"the '{diagnosis.rule}' fix was not verified: the model still failed when re-run "
            f"with it{' and its next steps' if len(steps) > 1 else ''}; it is shown as a hint "
            f"only:\n    {diagnosis.fix}"
        )
