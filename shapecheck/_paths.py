"""Which dotted path a module call belongs to, in O(1) per call.

A module instance can sit at several paths (``nn.Sequential(*(3 * [block]))``); the k-th call of
such a child inside one call of its parent is given the k-th of its names there.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ModelWalk", "ModuleFrame", "PathIndex", "walk_of"]


class ModelWalk:
    """A model's module tree, walked once per explain: the tracer, the totals and the warning
    rules read it instead of walking the model again (a walk costs ~1 µs per module, and an
    explain of a small model used to make ten).

    Parameters and buffers are read from the modules when first asked, and again once a
    forward has run (:meth:`ran`: a lazy module makes its parameters during the forward).
    """

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        #: each module once, at its first path: ``root.named_modules()``
        self.named = list(root.named_modules())
        self._modules = [module for _, module in self.named]
        self._parameters: list[nn.Parameter] | None = None
        self._buffers: list[torch.Tensor] | None = None

    def ran(self) -> None:
        """A forward of the model has run: its parameters and buffers are read again."""
        self._parameters = self._buffers = None

    @functools.cached_property
    def every(self) -> list[tuple[str, nn.Module]]:
        """Every path of every module, in ``named_modules`` order: a module registered at two
        places is here twice (walked when first asked: only the totals and a rule need it)."""
        return list(self.root.named_modules(remove_duplicate=False))

    def modules(self) -> list[nn.Module]:
        """Each module once: ``root.modules()``."""
        return self._modules

    def parameters(self) -> list[nn.Parameter]:
        """Each parameter once, in ``root.parameters()`` order (tied weights counted once)."""
        if self._parameters is None:
            self._parameters = _unique(p for m in self._modules for p in m._parameters.values())
        return self._parameters

    def buffers(self) -> list[torch.Tensor]:
        """Each buffer once, in ``root.buffers()`` order."""
        if self._buffers is None:
            self._buffers = _unique(b for m in self._modules for b in m._buffers.values())
        return self._buffers


def walk_of(model: nn.Module | ModelWalk) -> ModelWalk:
    """``model``'s walk: the one given, or a new one."""
    return model if isinstance(model, ModelWalk) else ModelWalk(model)


def _unique(tensors: Iterable[torch.Tensor | None]) -> list[Any]:
    seen: set[int] = set()
    found = []
    for t in tensors:
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            found.append(t)
    return found


@dataclass(slots=True)
class ModuleFrame:
    """One module call that is still running."""

    module: nn.Module
    path: str
    row: int
    records_functions: bool
    child_calls: dict[int, int] = field(default_factory=dict)


class PathIndex:
    """Paths of every module under a root, precomputed once per trace."""

    def __init__(
        self, root: nn.Module | ModelWalk, extra: dict[str, nn.Module] | None = None
    ) -> None:
        #: every module once, with its first path
        self.named = walk_of(root).named
        self.canonical: dict[int, str] = {}
        self.children: dict[int, dict[int, list[str]]] = {}
        for path, module in self.named:
            self.canonical.setdefault(id(module), path)
            names: dict[int, list[str]] = {}
            for name, child in module._modules.items():
                if child is not None:
                    names.setdefault(id(child), []).append(name)
            self.children[id(module)] = names
        for path, module in (extra or {}).items():
            self.canonical.setdefault(id(module), path)
        #: how deeply modules nest (1 for a model without children)
        self.depth = 1 + max((p.count(".") + 1 for p in self.canonical.values() if p), default=0)

    def path_of(self, module: nn.Module, parent: ModuleFrame | None) -> str:
        """The path of this call of ``module`` made while ``parent`` is running."""
        if parent is not None:
            names = self.children.get(id(parent.module), {}).get(id(module))
            if names:
                nth = parent.child_calls.get(id(module), 0)
                parent.child_calls[id(module)] = nth + 1
                name = names[nth % len(names)]
                return f"{parent.path}.{name}" if parent.path else name
        return self.canonical.get(id(module), f"<{type(module).__name__}>")
