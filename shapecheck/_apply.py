"""Keep a diagnosis's plan: a fixed copy of the user's model, exactly as the re-run verified it."""

from __future__ import annotations

from contextlib import ExitStack

import torch
from torch import nn

from ._changes import edits_of
from ._errors import ShapecheckError, UsageError
from ._fixes import View, applied
from ._inputs import require_module, unwrapped
from ._lazy import copy_model
from ._records import Diagnosis

__all__ = ["apply_fix", "fingerprint"]


def fingerprint(model: nn.Module) -> int:
    """The model's layers, paths and types: what a fix's paths refer to (a lazy layer counts
    as the layer it becomes, as in the traced copy)."""
    return hash(
        tuple(
            (path, (getattr(m, "cls_to_become", None) or type(m)).__qualname__)
            for path, m in model.named_modules()
        )
    )


def apply_fix(diagnosis: Diagnosis, model: nn.Module) -> nn.Module:
    """``model`` with every step of ``diagnosis``'s plan, as a new model.

    The fixes are made on ``model`` only while it is copied, as during their re-run, so
    ``model`` itself ends as it was; new layers are built from ``model``'s own (its dtype and
    device), and every other weight is ``model``'s. The global RNG (new layers draw their
    initial weights) is left as it was. A change to a layer's input (flatten before ``fc``) is
    kept as a forward pre-hook on that layer, so names and ``state_dict`` keys stay the same.

    Raises:
        ShapecheckError: a step edits the input, a line of ``forward`` or the loss target
            rather than the layers (make it in your code: the message shows it), or the plan
            was not verified.
        UsageError: ``model`` is not a module, or lacks the layers the plan names.

    Example:
        >>> import torch, shapecheck
        >>> from shapecheck.demo import seed_model
        >>> report = shapecheck.explain(seed_model(), torch.randn(1, 3, 32, 32))
        >>> fixed = shapecheck.apply_fix(report.diagnoses[0], seed_model())
        >>> fixed(torch.randn(4, 3, 32, 32)).shape
        torch.Size([4, 2])
    """
    if not isinstance(diagnosis, Diagnosis):
        raise UsageError(
            f"apply_fix takes a Diagnosis from a Report, got {type(diagnosis).__name__}."
        )
    model = unwrapped(require_module(model))  # explain traced the module inside the wrapper
    _check_keepable(diagnosis)
    if diagnosis.made_for is not None and diagnosis.made_for != fingerprint(model):
        raise UsageError(
            f"this '{diagnosis.rule}' fix was made for another model (its layers differ from "
            f"this {type(model).__name__}'s); pass the model that explain() was given, or "
            "another instance of its class."
        )
    with torch.random.fork_rng(devices=[]), ExitStack() as stack:
        view = View(model, (), {}, kept=True)
        for step in diagnosis.plan:
            try:
                view = stack.enter_context(applied(step.change, view))
            except (AttributeError, KeyError, IndexError, TypeError) as error:
                raise UsageError(
                    f"the '{step.rule}' fix for layer '{step.path}' does not fit this "
                    f"{type(model).__name__} ({error}); pass the model that explain() was given."
                ) from error
        return copy_model(view.model)


def _check_keepable(diagnosis: Diagnosis) -> None:
    for step in diagnosis.plan:
        changes = edits_of(step.change)
        if changes != "model":
            raise ShapecheckError(
                f"the '{step.rule}' fix changes {changes}, not the model's layers, so it cannot "
                f"be kept in a copy of the model; make it in your code:\n    {step.change.code}"
            )
    if not diagnosis.verified:
        steps = len(diagnosis.plan)
        raise ShapecheckError(
            f"the '{diagnosis.rule}' fix was not verified: the model still failed when re-run "
            f"with it{' and its next steps' if steps > 1 else ''}; it is shown as a hint "
            f"only:\n    {diagnosis.fix}"
        )
