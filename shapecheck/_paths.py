"""Which dotted path a module call belongs to, in O(1) per call.

A module instance can sit at several paths (``nn.Sequential(*(3 * [block]))``); the k-th call of
such a child inside one call of its parent is given the k-th of its names there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

__all__ = ["ModuleFrame", "PathIndex"]


@dataclass
class ModuleFrame:
    """One module call that is still running."""

    module: nn.Module
    path: str
    row: int
    records_functions: bool
    child_calls: dict[int, int] = field(default_factory=dict)


class PathIndex:
    """Paths of every module under a root, precomputed once per trace."""

    def __init__(self, root: nn.Module, extra: dict[str, nn.Module] | None = None) -> None:
        #: every module once, with its first path: the one walk of the model a trace makes
        self.named = list(root.named_modules())
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
