"""Structured fixes and the non-destructive views of a model that try them.

Each fix yields, inside a ``with`` block, a model / inputs / call rewrites to re-run; the user's
model is never changed outside that block, and every swap is undone in ``finally``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ._inputs import is_compiled
from ._trace import Rewrite

__all__ = [
    "Applied",
    "ConvertModel",
    "ConvertTarget",
    "Fix",
    "InsertModule",
    "ReplaceModule",
    "RewriteCall",
    "SetAttribute",
    "Together",
    "TransformInput",
    "TransformOutput",
    "WrapModuleArgs",
    "WrapModuleInput",
    "batch_first_flipped",
    "swapped",
]  # fmt: skip


@dataclass
class Applied:
    """What a fix changes for one re-run."""

    model: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    rewrites: dict[tuple[str, str], Rewrite] = field(default_factory=dict)
    target: Any = None


@dataclass(frozen=True)
class Fix:
    """A change to try: ``summary`` says it in words, ``code`` shows it as code.

    ``changes`` says what it edits: ``"model"`` fixes can be kept in a copy of the model
    (``Diagnosis.apply``); the others edit the input, a line of ``forward``, the loss target or
    the output, or (this base class) nothing: a suggestion that no re-run can try.
    """

    summary: str
    code: str
    _edits: ClassVar[str] = "nothing: it is a suggestion"

    @property
    def changes(self) -> str:
        return self._edits

    @contextmanager
    def applied(self, base: Applied) -> Iterator[Applied]:
        """Yield the fixed view of ``base``; undo everything on exit."""
        yield base


@contextmanager
def swapped(model: nn.Module, path: str, new: nn.Module) -> Iterator[nn.Module]:
    """Put ``new`` at ``path`` for the block; yields the model to call (``new`` for the root)."""
    if not path:
        yield new
        return
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    if name == "_orig_mod" and is_compiled(parent):
        # torch.compile's wrapper calls the module it was built with: swap the wrapper itself
        with swapped(model, parent_path, new) as swapped_model:
            yield swapped_model
        return
    old = parent._modules[name]
    parent._modules[name] = new
    try:
        yield model
    finally:
        parent._modules[name] = old


@dataclass(frozen=True)
class InsertModule(Fix):
    """Insert a module into an ``nn.Sequential`` at ``index``: a new Sequential, same children."""

    _edits: ClassVar[str] = "model"
    sequential_path: str = ""
    index: int = 0
    make: Callable[[], nn.Module] = nn.Identity

    @contextmanager
    def applied(self, base: Applied) -> Iterator[Applied]:
        old = base.model.get_submodule(self.sequential_path)
        children = [child for child in old._modules.values() if child is not None]
        new = nn.Sequential(*children[: self.index], self.make(), *children[self.index :])
        with swapped(base.model, self.sequential_path, new) as model:
            yield Applied(model, base.args, base.kwargs, base.rewrites, base.target)


@dataclass(frozen=True)
class ReplaceModule(Fix):
    """Replace the module at ``path`` with a freshly built one (e.g. a Linear of the right size)."""

    _edits: ClassVar[str] = "model"
    path: str = ""
    make: Callable[[], nn.Module] = nn.Identity

    @contextmanager
    def applied(self, base: Applied) -> Iterator[Applied]:
        with swapped(base.model, self.path, self.make()) as model:
            yield Applied(model, base.args, base.kwargs, base.rewrites, base.target)


def batch_first_flipped(path: str, module: nn.RNNBase | nn.MultiheadAttention) -> ReplaceModule:
    """An RNN or attention layer that reads its input the other way round (a shallow copy:
    the same weights, ``batch_first`` flipped)."""
    flipped = copy.copy(module)
    flipped.batch_first = not module.batch_first
    return ReplaceModule(
        summary=f"set batch_first={flipped.batch_first}",
        code=f"nn.{type(module).__name__}(..., batch_first={flipped.batch_first})",
        path=path,
        make=lambda: flipped,
    )


@contextmanager
def _pre_hook(module: nn.Module, hook: Callable[..., Any], with_kwargs: bool) -> Iterator[None]:
    """``hook`` rewrites the module's arguments for the block. A hook, not a wrapper module:
    a kept copy (``Diagnosis.apply``) has the same layers and ``state_dict`` keys."""
    handle = module.register_forward_pre_hook(hook, with_kwargs=with_kwargs, prepend=True)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class WrapModuleInput(Fix):
    """Transform the first input of the module at ``path`` (e.g. flatten before a Linear)."""

    _edits: ClassVar[str] = "model"
    path: str = ""
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x

    @contextmanager
    def applied(self, base: Applied) -> Iterator[Applied]:
        transform = self.transform

        def first(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (transform(args[0]), *args[1:])

        with _pre_hook(base.model.get_submodule(self.path), first, with_kwargs=False):
            yield base


@dataclass(frozen=True)
class TransformInput(Fix):
    """Transform positional input ``position`` of the model (e.g. ``x.unsqueeze(0)``)."""

    _edits: ClassVar[str] = "the input"
    position: int = 0
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x

    @contextmanager
    def applied(self, base: Applied) -> Iterator[Applied]:
        args = list(base.args)
        args[self.position] = self.transform(args[self.position])
        yield Applied(base.model, tuple(args), base.kwargs, base.rewrites, base.target)


@dataclass(frozen=True)
class RewriteCall(Fix):
    """Replace one functional call, found by its source line and name, during the re-run."""

    _edits: ClassVar[str] = "a line of forward()"
    source: str = ""
    name: str = ""
    replacement: Rewrite = lambda args, kwargs: None

    @contextmanager
    def applied(self, base: Applied) -> Iterator[Applied]:
        rewrites = {**base.rewrites, (self.source, self.name): self.replacement}
        yield Applied(base.model, base.args, base.kwargs, rewrites, base.target)


@dataclass(frozen=True)
class ConvertTarget(Fix):
    """Convert the loss target (e.g. one-hot masks to class indices with ``argmax(1)``)."""

    _edits: ClassVar[str] = "the loss target"
    transform: Callable[[Any], Any] = lambda t: t

    @contextmanager
    def applied(self, base: Applied) -> Iterator[Applied]:
        target = self.transform(base.target)
        yield Applied(base.model, base.args, base.kwargs, base.rewrites, target)


_MISSING = object()


@dataclass(frozen=True)
class SetAttribute(Fix):
    """Set attribute ``name`` of the module at ``owner`` to ``make(old value)`` for the re-run.

    A module value is registered as a child (as ``self.name = nn.ModuleList(...)`` would), so it
    also reaches attributes that ``_modules`` does not hold, like a plain Python list of layers.
    """

    _edits: ClassVar[str] = "model"
    owner: str = ""
    name: str = ""
    make: Callable[[Any], Any] = lambda old: old

    @contextmanager
    def applied(self, base: Applied) -> Iterator[Applied]:
        module = base.model.get_submodule(self.owner)
        saved = (module._modules.get(self.name, _MISSING),
                 module.__dict__.get(self.name, _MISSING))  # fmt: skip
        old = getattr(module, self.name)
        try:
            module.__dict__.pop(self.name, None)
            module._modules.pop(self.name, None)
            setattr(module, self.name, self.make(old))
            yield Applied(base.model, base.args, base.kwargs, base.rewrites, base.target)
        finally:
            _restore_attribute(module, self.name, *saved)


def _restore_attribute(module: nn.Module, name: str, child: Any, plain: Any) -> None:
    module._modules.pop(name, None)
    module._parameters.pop(name, None)
    module.__dict__.pop(name, None)
    if child is not _MISSING:
        module._modules[name] = child
    if plain is not _MISSING:
        module.__dict__[name] = plain


@dataclass(frozen=True)
class WrapModuleArgs(Fix):
    """Rewrite every argument of the module at ``path``: ``(args, kwargs) -> (args, kwargs)``."""

    _edits: ClassVar[str] = "model"
    path: str = ""
    transform: Callable[[tuple[Any, ...], dict[str, Any]], tuple[Any, Any]] = lambda args, kwargs: (
        args,
        kwargs,
    )

    @contextmanager
    def applied(self, base: Applied) -> Iterator[Applied]:
        transform = self.transform

        def every(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
            return transform(args, kwargs)

        with _pre_hook(base.model.get_submodule(self.path), every, with_kwargs=True):
            yield base


class _After(nn.Module):
    """Calls the wrapped module, then transforms its output (only inside a fix's re-run)."""

    def __init__(self, inner: nn.Module, transform: Callable[[Any], Any]) -> None:
        super().__init__()
        self.inner = inner
        self.transform = transform

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.transform(self.inner(*args, **kwargs))


@dataclass(frozen=True)
class TransformOutput(Fix):
    """Transform the model's output before the loss sees it (``out.transpose(1, 2)``, say)."""

    _edits: ClassVar[str] = "the output the loss sees"
    transform: Callable[[Any], Any] = lambda out: out

    @contextmanager
    def applied(self, base: Applied) -> Iterator[Applied]:
        wrapped = _After(base.model, self.transform)
        yield Applied(wrapped, base.args, base.kwargs, base.rewrites, base.target)


@dataclass(frozen=True)
class ConvertModel(Fix):
    """Re-run a converted copy of the whole model (``model.double()``); the model stays as is."""

    _edits: ClassVar[str] = "model"
    convert: Callable[[nn.Module], nn.Module] = lambda model: model

    @contextmanager
    def applied(self, base: Applied) -> Iterator[Applied]:
        model = self.convert(copy.deepcopy(base.model))
        yield Applied(model, base.args, base.kwargs, base.rewrites, base.target)


@dataclass(frozen=True)
class Together(Fix):
    """Several fixes applied at once (one change in several places, like two lists to register)."""

    parts: tuple[Fix, ...] = ()

    @property
    def changes(self) -> str:
        return next((p.changes for p in self.parts if p.changes != "model"), "model")

    @contextmanager
    def applied(self, base: Applied) -> Iterator[Applied]:
        with ExitStack() as stack:
            for part in self.parts:
                base = stack.enter_context(part.applied(base))
            yield base
