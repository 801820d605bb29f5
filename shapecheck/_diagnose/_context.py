"""What every rule reads: the trace, the modules behind its rows, and shared look-ups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .._fixes import Fix
from .._records import Failure, Layer
from .._trace import Trace

__all__ = ["Context", "Finding"]


@dataclass(frozen=True)
class Finding:
    """A candidate cause, before its fix is verified.

    ``body`` is the message up to the fix line (headline, evidence, cause); ``score`` ranks
    findings when several rules fit the same failure.
    """

    rule: str
    path: str
    body: str
    fix: Fix
    score: float = 1.0


@dataclass
class Context:
    """A traced forward pass and the live objects behind it, for rules to read."""

    trace: Trace
    model: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    loss: nn.Module | None = None  # the loss traced after the forward, if any
    target: Any = None  # what the loss was given as its target

    @property
    def failure(self) -> Failure | None:
        return self.trace.failure

    @property
    def layers(self) -> list[Layer]:
        return self.trace.layers

    def failed_layer(self) -> Layer | None:
        failure = self.trace.failure
        if failure is None or failure.layer_index is None:
            return None
        return self.trace.layers[failure.layer_index]

    def module(self, layer: Layer) -> nn.Module | None:
        return self.trace.module_at.get(layer.index)

    def producer(self, layer: Layer) -> Layer | None:
        """The latest earlier call whose output has the shape of ``layer``'s first input."""
        if not layer.inputs:
            return None
        wanted = layer.inputs[0].shape
        for earlier in reversed(self.trace.layers[: layer.index]):
            if earlier.kind != "module" or not earlier.path or earlier.index == layer.parent:
                continue
            if wanted in earlier.output_shapes:
                return earlier
        return None

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
