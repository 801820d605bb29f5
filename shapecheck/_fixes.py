"""The one interpreter of fix records: each record becomes a change on the model it is handed.

``applied(fix, view)`` yields, inside a ``with`` block, the model / inputs / call rewrites /
target to run; every swap is undone on exit, so the user's model ends as it was. Re-runs and
``apply`` both go through here, and both build new modules from the model they are given (its
weights, dtype and device), never from the model a fix was first made for.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.nn import functional as F

from ._changes import (
    Build,
    CallRewrite,
    ConvertModel,
    EditInput,
    EditLayerInput,
    EditTarget,
    Fix,
    FixKind,
    InsertModule,
    Parallelize,
    ProjectOperand,
    RegisterModules,
    ReplaceModule,
    RewriteCall,
    RouteByRank,
    SetAttributes,
    TensorOp,
    Together,
)
from ._inputs import is_compiled
from ._lazy import copy_model
from ._recorder import Rewrite
from ._shapes import projection

__all__ = ["View", "applied", "build", "run_ops", "swapped"]


@dataclass
class View:
    """What one re-run runs: the model, its inputs, call rewrites and the loss target."""

    model: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    rewrites: dict[tuple[str, str], Rewrite] = field(default_factory=dict)
    target: Any = None
    #: the changes are kept (``apply``): new modules always get real, initialised weights
    kept: bool = False


Interpreter = Callable[[Any, View], AbstractContextManager[View]]
_INTERPRETERS: dict[FixKind, Interpreter] = {}


def _interprets(kind: FixKind) -> Callable[[Interpreter], Interpreter]:
    def register(function: Interpreter) -> Interpreter:
        _INTERPRETERS[kind] = function
        return function

    return register


def applied(fix: Fix, view: View) -> AbstractContextManager[View]:
    """The view with ``fix`` made; undone when the block ends."""
    return _INTERPRETERS[fix.kind](fix, view)


# -- tensors and modules from plain records ------------------------------------------------------
def run_ops(tensor: torch.Tensor, ops: tuple[TensorOp, ...]) -> torch.Tensor:
    """``tensor`` with each op applied in turn (``F.interpolate`` or a tensor method)."""
    for op in ops:
        args = tuple(_dtype_or(a) for a in op.args)
        kwargs = dict(op.kwargs)
        if op.name == "interpolate":
            tensor = F.interpolate(tensor, *args, **kwargs)
        else:
            tensor = getattr(tensor, op.name)(*args, **kwargs)
    return tensor


def _dtype_or(value: Any) -> Any:
    """A dtype written by name (``"float64"``) as the dtype; anything else as it is."""
    candidate = getattr(torch, value, None) if isinstance(value, str) else None
    return candidate if isinstance(candidate, torch.dtype) else value


#: A new module for a re-run larger than this is built on ``meta``: shapes only (a dry run of a
#: huge model must not allocate a layer of it for real just to try a fix).
_REAL_BUILD_BYTES = 2**30


def build(spec: Build, like: nn.Module | None = None, real: bool = True) -> nn.Module:
    """The module ``spec`` describes, with the floating dtype and device of ``like``'s weights;
    with ``real`` False, on ``meta`` when its weights would take more than 1 GiB."""
    if not real:
        with torch.device("meta"):
            probe = _constructed(spec)
        if sum(p.numel() * p.element_size() for p in probe.parameters()) > _REAL_BUILD_BYTES:
            return probe
    module = _constructed(spec)
    home = _home(like) if like is not None else None
    if home is not None:
        dtype, device = home
        module = module.to(device=device) if dtype is None else module.to(device, dtype)
    return module


def _constructed(spec: Build) -> nn.Module:
    args = tuple(_constructed(a) if isinstance(a, Build) else a for a in spec.args)
    module: nn.Module = getattr(nn, spec.cls)(*args, **dict(spec.kwargs))
    return module


def _home(module: nn.Module) -> tuple[torch.dtype | None, torch.device] | None:
    """(floating dtype, device) of a module's weights; None when it holds no tensor."""
    tensors = [*module.parameters(), *module.buffers()]
    floating = next((t for t in tensors if t.is_floating_point()), None)
    if floating is not None:
        return floating.dtype, floating.device
    return (None, tensors[0].device) if tensors else None


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


@contextmanager
def _pre_hook(module: nn.Module, hook: Callable[..., Any], with_kwargs: bool) -> Iterator[None]:
    """``hook`` rewrites the module's arguments for the block. A hook, not a wrapper module:
    a kept copy (``apply``) has the same layers and ``state_dict`` keys."""
    handle = module.register_forward_pre_hook(hook, with_kwargs=with_kwargs, prepend=True)
    try:
        yield
    finally:
        handle.remove()


class _Routed(nn.Module):
    """``new`` for inputs of one rank (and ``channels`` at dim 1, when given), the old module
    for the rest: what two attributes would do when one name was assigned twice, or one layer
    used at two places."""

    def __init__(self, new: nn.Module, old: nn.Module, rank: int, channels: int = 0) -> None:
        super().__init__()
        self.new, self.old, self.rank, self.channels = new, old, rank, channels

    def forward(self, x: torch.Tensor) -> Any:
        mine = x.dim() == self.rank and (not self.channels or x.shape[1] == self.channels)
        return self.new(x) if mine else self.old(x)


# -- one interpreter per kind --------------------------------------------------------------------
@_interprets(FixKind.SUGGESTION)
@contextmanager
def _suggestion(fix: Fix, view: View) -> Iterator[View]:
    yield view  # advice only: nothing to change


@_interprets(FixKind.INSERT_MODULE)
@contextmanager
def _insert(fix: InsertModule, view: View) -> Iterator[View]:
    old = view.model.get_submodule(fix.sequential)
    children = [child for child in old._modules.values() if child is not None]
    # the new module takes the dtype and device of the layer it feeds, else the one before
    neighbours = children[fix.index : fix.index + 1] + children[max(fix.index - 1, 0) : fix.index]
    like = next((m for m in neighbours if _home(m) is not None), None)
    new = nn.Sequential(
        *children[: fix.index], build(fix.build, like, view.kept), *children[fix.index :]
    )
    with swapped(view.model, fix.sequential, new) as model:
        yield replace(view, model=model)


@_interprets(FixKind.REPLACE_MODULE)
@contextmanager
def _replace(fix: ReplaceModule, view: View) -> Iterator[View]:
    new = build(fix.build, view.model.get_submodule(fix.path), view.kept)
    with swapped(view.model, fix.path, new) as model:
        yield replace(view, model=model)


@_interprets(FixKind.SET_ATTRIBUTES)
@contextmanager
def _set_attributes(fix: SetAttributes, view: View) -> Iterator[View]:
    changed = copy.copy(view.model.get_submodule(fix.path))  # the same weights
    for name, value in fix.values:
        setattr(changed, name, value)
    with swapped(view.model, fix.path, changed) as model:
        yield replace(view, model=model)


@_interprets(FixKind.ROUTE_BY_RANK)
@contextmanager
def _route(fix: RouteByRank, view: View) -> Iterator[View]:
    old = view.model.get_submodule(fix.path)
    routed = _Routed(build(fix.build, old, view.kept), old, fix.rank, fix.channels)
    with swapped(view.model, fix.path, routed) as model:
        yield replace(view, model=model)


@_interprets(FixKind.EDIT_LAYER_INPUT)
@contextmanager
def _edit_layer_input(fix: EditLayerInput, view: View) -> Iterator[View]:
    def edit(t: Any) -> Any:
        return run_ops(t, fix.ops)

    def first(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (edit(args[0]), *args[1:])

    def every(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        def one(t: Any) -> Any:
            like = (
                isinstance(t, torch.Tensor)
                and t.is_floating_point()
                and tuple(t.shape) == fix.every_like
            )
            return edit(t) if like else t

        return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}

    module = view.model.get_submodule(fix.path)
    hook, with_kwargs = (first, False) if fix.every_like is None else (every, True)
    with _pre_hook(module, hook, with_kwargs):
        yield view


@_interprets(FixKind.EDIT_INPUT)
@contextmanager
def _edit_input(fix: EditInput, view: View) -> Iterator[View]:
    args = list(view.args)
    args[fix.position] = run_ops(args[fix.position], fix.ops)
    yield replace(view, args=tuple(args))


def _flatten_per_sample(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return torch.flatten(args[0], 1)


def _resized_to_first(name: str) -> Rewrite:
    """The same join after resizing every tensor's spatial dims to the first one's."""

    def join(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        tensors = list(args[0])
        spatial = tuple(tensors[0].shape[2:])
        fixed = [
            t if tuple(t.shape[2:]) == spatial else F.interpolate(t, size=spatial) for t in tensors
        ]
        return getattr(torch, name)(fixed, *args[1:], **kwargs)

    return join


def _resized_call(name: str, asked: tuple[int, ...], sizes: tuple[int, ...]) -> Rewrite:
    """The same ``view``/``reshape`` of the same tensor, to ``sizes`` where it asked ``asked``."""

    def resize(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        given = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        new = sizes if tuple(given) == asked else tuple(given)
        return getattr(args[0], name)(*new, **kwargs)

    return resize


def _reshaped(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0].reshape(*args[1:], **kwargs)


@_interprets(FixKind.REWRITE_CALL)
@contextmanager
def _rewrite_call(fix: RewriteCall, view: View) -> Iterator[View]:
    rewrites: dict[CallRewrite, Rewrite] = {
        CallRewrite.FLATTEN_PER_SAMPLE: _flatten_per_sample,
        CallRewrite.RESIZE_TO_FIRST: _resized_to_first(fix.name),
        CallRewrite.RESHAPE: _reshaped,
        CallRewrite.SIZES: _resized_call(fix.name, fix.asked, fix.sizes),
    }
    rewrite = rewrites[fix.rewrite]
    yield replace(view, rewrites={**view.rewrites, (fix.source, fix.name): rewrite})


@_interprets(FixKind.PROJECT_OPERAND)
@contextmanager
def _project_operand(fix: ProjectOperand, view: View) -> Iterator[View]:
    """The call with its shortcut operand projected where the shapes differ; one projection
    per pair of shapes for the whole re-run, with the operand's dtype and device."""
    made: dict[tuple[tuple[int, ...], tuple[int, ...]], nn.Module] = {}

    def projected(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        operand, other = args[fix.operand], args[1 - fix.operand]
        shapes = (tuple(other.shape), tuple(operand.shape))
        spec = projection(*shapes) if shapes[0] != shapes[1] else None
        if spec is None:
            return func(*args, **kwargs)
        if shapes not in made:
            with unset_fake_temporarily():  # real weights, even inside a dry run's fake mode
                made[shapes] = build(spec).to(operand.device, operand.dtype)
        changed = list(args)
        changed[fix.operand] = made[shapes](operand)
        return func(*changed, **kwargs)

    yield replace(view, rewrites={**view.rewrites, (fix.source, fix.name): projected})


@_interprets(FixKind.EDIT_TARGET)
@contextmanager
def _edit_target(fix: EditTarget, view: View) -> Iterator[View]:
    yield replace(view, target=run_ops(view.target, fix.ops))


@_interprets(FixKind.CONVERT_MODEL)
@contextmanager
def _convert(fix: ConvertModel, view: View) -> Iterator[View]:
    model = copy_model(view.model)  # the model itself stays as it is
    if fix.device is not None:
        model = _moved(model, torch.device(fix.device))
    if fix.dtype is not None:
        model = model.to(getattr(torch, fix.dtype))
    yield replace(view, model=model)


def _moved(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``; weights on meta get empty storage there (nothing to copy)."""
    on_meta = any(p.is_meta for p in model.parameters())
    return model.to_empty(device=device) if on_meta and device.type != "meta" else model.to(device)


_MISSING = object()


@_interprets(FixKind.REGISTER_MODULES)
@contextmanager
def _register(fix: RegisterModules, view: View) -> Iterator[View]:
    """Register the plain list or dict (as ``self.name = nn.ModuleList(...)`` would), its
    modules copied to the device; it reaches attributes that ``_modules`` does not hold."""
    owner = view.model.get_submodule(fix.owner)
    saved = (owner._modules.get(fix.name, _MISSING), owner.__dict__.get(fix.name, _MISSING))
    old = getattr(owner, fix.name)
    device = torch.device(fix.device)
    try:
        owner.__dict__.pop(fix.name, None)
        owner._modules.pop(fix.name, None)
        if isinstance(old, dict):
            new: nn.Module = nn.ModuleDict(
                {k: _moved(copy_model(m), device) for k, m in old.items()}
            )
        else:
            new = nn.ModuleList([_moved(copy_model(m), device) for m in old])
        setattr(owner, fix.name, new)
        yield view
    finally:
        _restore_attribute(owner, fix.name, *saved)


def _restore_attribute(module: nn.Module, name: str, child: Any, plain: Any) -> None:
    module._modules.pop(name, None)
    module._parameters.pop(name, None)
    module.__dict__.pop(name, None)
    if child is not _MISSING:
        module._modules[name] = child
    if plain is not _MISSING:
        module.__dict__[name] = plain


@_interprets(FixKind.PARALLELIZE)
@contextmanager
def _parallelize(fix: Parallelize, view: View) -> Iterator[View]:
    from ._sharding import parallelized  # torch.distributed.tensor: only for sharded models

    old = view.model.get_submodule(fix.path)
    new = parallelized(build(fix.build, old, view.kept), old, fix.style)
    with swapped(view.model, fix.path, new) as model:
        yield replace(view, model=model)


@_interprets(FixKind.TOGETHER)
@contextmanager
def _together(fix: Together, view: View) -> Iterator[View]:
    with ExitStack() as stack:
        for part in fix.parts:
            view = stack.enter_context(applied(part, view))
        yield view
