"""What every rule reads (a traced forward pass as records, and the live modules behind its
rows) and what it returns: a Finding, its message and its fix as plain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from .._paths import ModelWalk
from .._records import Evidence, Failure, Layer, Step, TensorInfo

if TYPE_CHECKING:
    from .._changes import Fix

__all__ = ["Context", "Finding"]


@dataclass(frozen=True)
class Finding:
    """A candidate cause, before its fix is tried.

    ``headline`` names where; ``evidence`` are labelled lines; ``cause`` says why and
    ``arithmetic`` shows the working; ``score`` ranks findings of one failure. ``rule`` is
    filled in by the registry from the rule's id.
    """

    path: str
    headline: str
    evidence: tuple[Evidence, ...]
    cause: str
    fix: Fix
    arithmetic: tuple[str, ...] = ()
    score: float = 1.0
    rule: str = ""

    def step(self) -> Step:
        return Step(
            self.rule,
            self.path,
            self.headline,
            self.evidence,
            self.cause,
            self.fix,
            self.arithmetic,
        )


@dataclass
class Context:
    """One traced forward pass, as records, and the live modules behind its rows."""

    layers: list[Layer]
    failure: Failure | None
    inputs: tuple[TensorInfo, ...]
    module_at: dict[int, nn.Module]
    model: nn.Module
    dry_run: bool = False
    #: a dry run with a device ran every weight there (shown under this name); None otherwise
    weights_on: str | None = None
    loss: nn.Module | None = None  # the loss traced after the forward, if any
    #: samples in the model's first input: a tensor's leading dim, a list's length
    batch: int | None = None
    #: the model's output tensors, when the forward ran
    outputs: tuple[TensorInfo, ...] = ()
    #: ids of weights that functional calls were given directly (``F.linear(x, self.w)``)
    weights_read: frozenset[int] = frozenset()
    #: samples in the model's output, counted as for the input (a list: its length)
    output_batch: int | None = None
    #: the model's module tree, walked once (made on first use when not given)
    walk: ModelWalk | None = None

    def tree(self) -> ModelWalk:
        """The model's walk, shared by the rules (and with the tracer, when it made one)."""
        if self.walk is None or self.walk.root is not self.model:
            self.walk = ModelWalk(self.model)
        return self.walk

    def failed_layer(self) -> Layer | None:
        failure = self.failure
        if failure is None or failure.layer_index is None:
            return None
        return self.layers[failure.layer_index]

    def module(self, layer: Layer) -> nn.Module | None:
        return self.module_at.get(layer.index)

    def producer(self, info: TensorInfo) -> Layer | None:
        """The row whose call first returned this tensor (recorded while tracing)."""
        return self.layers[info.made_by] if info.made_by is not None else None

    def sequential_slot(self, path: str) -> tuple[str, int, nn.Sequential] | None:
        """(path of the enclosing nn.Sequential, index in it, the Sequential) for ``path``."""
        parent_path, _, name = path.rpartition(".")
        try:
            parent = self.model.get_submodule(parent_path)
        except AttributeError:
            return None
        if not isinstance(parent, nn.Sequential) or name not in parent._modules:
            return None
        return parent_path, list(parent._modules).index(name), parent
