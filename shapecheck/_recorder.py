"""The recorder: module hooks and a TorchFunctionMode that turn one forward pass into rows.

Each module call and each functional op called from user code (not from inside torch.nn's own
layers) becomes a row with its input and output tensors; calls that raise are remembered so the
tracer can name the innermost one. Per call the work is O(1) in the size of the model.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.overrides import TorchFunctionMode

from ._describe import describe_arguments, describe_module
from ._inputs import tensors_in
from ._paths import ModuleFrame, PathIndex
from ._records import TensorInfo
from ._source import caller_source

if TYPE_CHECKING:
    from ._flops import FlopCounter

__all__ = ["FunctionMode", "Recorder", "Rewrite", "Row", "function_name", "hooks", "owned_counts"]

#: Replaces one functional call during a re-run: (the call, args, kwargs) -> result.
Rewrite = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]

# Calls that read metadata or only move bytes: never rows in the table.
_BOOKKEEPING = frozenset({
    "size", "dim", "numel", "stride", "__len__", "__bool__", "__format__", "__repr__",
    "__hash__", "item", "tolist", "is_floating_point", "is_contiguous", "data_ptr",
    "element_size", "contiguous", "detach", "requires_grad_", "__iter__", "__reduce_ex__",
    "__deepcopy__", "__setstate__", "_has_compatible_shallow_copy_type", "get_device",
    "grad", "data", "_base", "is_complex", "nelement", "ndimension", "has_names",
})  # fmt: skip
# Bookkeeping calls whose result stands for their input (same values): it keeps the provenance.
_SAME_VALUES = frozenset({"contiguous", "detach", "requires_grad_"})
_IN_PLACE_OPERATORS = frozenset({
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
    "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__",
    "__setitem__",
})  # fmt: skip


#: dtype -> its name as the records write it ("float32"), filled on first sight
_DTYPE_NAMES: dict[torch.dtype, str] = {}


def _dtype_name(dtype: torch.dtype) -> str:
    name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


def _ours() -> AbstractContextManager[None]:
    """Torch-function dispatch off: shapecheck's own tensor reads skip its function mode."""
    off: AbstractContextManager[None] = torch._C.DisableTorchFunction()
    return off


def writes_in_place(func: Callable[..., Any], kwargs: Mapping[str, Any]) -> bool:
    """``x.mul_(2)``, ``x += 1``, ``x[0] = 1``, ``F.relu(x, inplace=True)``,
    ``torch.add(a, b, out=x)``: it writes into its first argument (or ``out``)."""
    name = getattr(func, "__name__", "")
    in_place = name.endswith("_") and not name.endswith("__") and not name.startswith("_")
    return (in_place or name in _IN_PLACE_OPERATORS or "out" in kwargs
            or kwargs.get("inplace") is True)  # fmt: skip


def function_name(func: Callable[..., Any]) -> str:
    """``view`` for Tensor.view, ``max_pool2d`` for F.max_pool2d, ``T`` for the ``.T`` property."""
    name = getattr(func, "__name__", "") or type(func).__name__
    if name == "__get__":
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", name)
    if name.startswith("_") and not name.startswith("__"):
        name = name.lstrip("_")
    if name in {"fn", "boolean_dispatch"}:  # F.max_pool2d and friends wrap a dispatcher
        name = torch.overrides.resolve_name(func) or name
        name = name.rsplit(".", 1)[-1]
    return name


@dataclass
class Row:
    """A layer under construction."""

    path: str
    kind: str
    type: str
    depth: int
    inputs: tuple[TensorInfo, ...]
    params: int
    trainable: int
    summary: str
    parent: int | None
    source: str | None = None
    arguments: str = ""
    outputs: tuple[TensorInfo, ...] = ()
    failed: bool = False
    flops_start: int | None = None
    flops: int | None = None
    uncounted_start: int = 0
    flops_uncounted: int = 0


class Recorder:
    """Collects rows from module hooks and the function mode, and where each tensor came from."""

    def __init__(
        self,
        paths: PathIndex,
        owned: Mapping[int, tuple[int, int]],
        device_alias: Mapping[str, str],
        rewrites: Mapping[tuple[str, str], Rewrite],
    ) -> None:
        self.paths = paths
        self.owned = owned
        self.device_alias = device_alias
        self.rewrites = rewrites
        self.rows: list[Row] = []
        self.module_at: dict[int, nn.Module] = {}
        self.stack: list[ModuleFrame] = []
        self.events: list[tuple[BaseException, int]] = []
        self.value_ranges: dict[int, tuple[int, int]] = {}  # row -> ids it failed on
        self.read: set[int] = set()  # ids of the tensors functional calls were given
        self.counter: FlopCounter | None = None
        # provenance: id(tensor) -> (weak reference, key); key -> the row that made it, or
        # the model's positional argument it is. A weak reference tells a live tensor from a
        # dead one whose id was reused, and holds no memory.
        self._keys: dict[int, tuple[weakref.ref[torch.Tensor], int]] = {}
        self._made_by: dict[int, int] = {}
        self._position: dict[int, int] = {}
        self._next_key = 0
        # the caller's input tensors, by storage, on a real run; a copy of each one the forward
        # writes into in place, to put back after the run
        self._input_storages: dict[int, torch.Tensor] = {}
        self._saved_inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _flops_now(self) -> int | None:
        # one running total, read at the start and end of each call: O(1) per call
        return None if self.counter is None else self.counter.total

    def _flops_end(self, row: Row) -> None:
        if self.counter is not None and row.flops_start is not None:
            row.flops = self.counter.total - row.flops_start
            row.flops_uncounted = self.counter.uncounted_calls - row.uncounted_start

    def _key(self, tensor: torch.Tensor) -> int:
        known = self._keys.get(id(tensor))
        if known is not None and known[0]() is tensor:
            return known[1]
        key = self._next_key
        self._next_key += 1
        self._keys[id(tensor)] = (weakref.ref(tensor), key)
        return key

    def infos(self, obj: object, made_by: int | None = None) -> tuple[TensorInfo, ...]:
        """The tensors in ``obj``; ``made_by``: the row that returned them (first maker wins).

        Our own reads of ``.shape``/``.dtype`` must not go through the function mode (a hot
        spot: ~10 such reads per module call), so torch-function dispatch is off meanwhile.
        """
        return self.infos_of(tensors_in(obj), made_by)

    def infos_of(
        self, tensors: list[torch.Tensor], made_by: int | None = None
    ) -> tuple[TensorInfo, ...]:
        with _ours():
            return tuple([self._info(t, made_by) for t in tensors])

    def _info(self, t: torch.Tensor, made_by: int | None) -> TensorInfo:
        key = self._key(t)
        if made_by is not None:
            self._made_by.setdefault(key, made_by)
        device = str(t.device)
        return TensorInfo(tuple(t.shape), _DTYPE_NAMES.get(t.dtype) or _dtype_name(t.dtype),
                          self.device_alias.get(device, device), t.requires_grad, key,
                          self._made_by.get(key), self._position.get(key))  # fmt: skip

    def model_inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[TensorInfo, ...]:
        """The model's inputs, each positional tensor argument remembered as such, and (on
        real tensors) their storages, so an in-place write into one can be undone."""
        with _ours():
            for position, arg in enumerate(args):
                if isinstance(arg, torch.Tensor):
                    self._position.setdefault(self._key(arg), position)
            for t in tensors_in((args, kwargs)):
                if not isinstance(t, FakeTensor) and not t.is_meta and t.layout == torch.strided:
                    self._input_storages.setdefault(_storage_key(t), t)
        return self.infos((args, kwargs))

    def _guard_input(self, func: Callable[..., Any], args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> None:  # fmt: skip
        """Before an in-place write into a caller's input (or a view of one), keep a copy."""
        target = kwargs.get("out", args[0] if args else None)
        if not isinstance(target, torch.Tensor) or not writes_in_place(func, kwargs):
            return
        with _ours():
            key = _storage_key(target)
            original = self._input_storages.get(key)
            if original is not None and key not in self._saved_inputs:
                self._saved_inputs[key] = (original, original.detach().clone())

    def restore_inputs(self) -> None:
        """Put back every caller's input that the forward wrote into."""
        with _ours(), torch.no_grad():
            for original, copy in self._saved_inputs.values():
                original.copy_(copy)

    def _same_values(self, result: Any, source: Any) -> None:
        """``result`` of ``x.contiguous()`` or ``x.detach()`` stands for ``x``."""
        if not isinstance(result, torch.Tensor) or not isinstance(source, torch.Tensor):
            return
        with _ours():
            key, origin = self._key(result), self._key(source)
            if origin in self._made_by:
                self._made_by.setdefault(key, self._made_by[origin])
            if origin in self._position:
                self._position.setdefault(key, self._position[origin])

    def _remember_values(self, row: int, args: Any) -> None:
        """The id range of a failing call's first integer input, on real tensors only."""
        with _ours():
            ints = [
                t
                for t in tensors_in(args)
                if not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool
            ]
            first = ints[0] if ints else None
            if (
                first is not None
                and not isinstance(first, FakeTensor)
                and not first.is_meta
                and 0 < first.numel() <= 10**8
            ):
                self.value_ranges[row] = (int(first.min()), int(first.max()))

    def _add(self, row: Row) -> int:
        self.rows.append(row)
        return len(self.rows) - 1

    # -- module hooks -------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        parent = self.stack[-1] if self.stack else None
        owned = self.owned.get(id(module))  # None for a lazy module: count it now, made
        params, trainable = owned or owned_counts([module]).get(id(module), (0, 0))
        row = self._add(Row(
            path=self.paths.path_of(module, parent), kind="module",
            type=type(module).__name__, depth=len(self.stack),
            inputs=self.infos((args, kwargs)), params=params, trainable=trainable,
            summary=describe_module(module), parent=parent.row if parent else None,
            flops_start=self._flops_now(),
            uncounted_start=self.counter.uncounted_calls if self.counter is not None else 0,
        ))  # fmt: skip
        self.module_at[row] = module
        records = not type(module).__module__.startswith("torch.")
        self.stack.append(ModuleFrame(module, self.rows[row].path, row, records))

    def post_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        position = self._frame_of(module)
        if position is None:
            return
        frame = self.stack[position]
        del self.stack[position:]
        row = self.rows[frame.row]
        self._flops_end(row)
        error = sys.exc_info()[1] if output is None else None
        if error is not None:
            row.failed = True
            self.events.append((error, frame.row))
            self._remember_values(frame.row, args)
        else:
            row.outputs = self.infos(output, made_by=frame.row)

    def _frame_of(self, module: nn.Module) -> int | None:
        for position in range(len(self.stack) - 1, -1, -1):
            if self.stack[position].module is module:
                return position
        return None

    # -- functional ops -------------------------------------------------------------------------
    def call(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._input_storages:
            self._guard_input(func, args, kwargs)
        frame = self.stack[-1] if self.stack else None
        if frame is None or not frame.records_functions:
            return func(*args, **kwargs)
        name = function_name(func)
        if name in _BOOKKEEPING:
            result = func(*args, **kwargs)
            if name in _SAME_VALUES and args:
                self._same_values(result, args[0])
            return result
        source = caller_source(skip=3)
        arguments = describe_arguments(args, kwargs, func)
        rewrite = self.rewrites.get((source or "", name))
        tensors = tensors_in((args, kwargs))
        given = self.infos_of(tensors)
        with _ours():  # weights read directly, F.linear(x, self.w): require grad or are Parameters
            self.read.update(
                id(t) for t in tensors if t.requires_grad or isinstance(t, nn.Parameter)
            )
        row = Row(
            path=frame.path, kind="function", type=name, depth=len(self.stack),
            inputs=given, params=0, trainable=0,
            summary=f"{name}({arguments})", parent=frame.row, source=source, arguments=arguments,
            flops_start=self._flops_now(),
            uncounted_start=self.counter.uncounted_calls if self.counter is not None else 0,
        )  # fmt: skip
        try:
            result = rewrite(func, args, kwargs) if rewrite else func(*args, **kwargs)
        except Exception as error:
            row.failed = True
            self._flops_end(row)
            index = self._add(row)
            self.events.append((error, index))
            self._remember_values(index, (args, kwargs))
            raise
        self._flops_end(row)
        row.outputs = self.infos(result, made_by=len(self.rows))  # the index it is added at
        if row.outputs:
            self._add(row)
        return result


class FunctionMode(TorchFunctionMode):
    """Sends every torch function call through the recorder."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return self.recorder.call(func, args, kwargs or {})


@contextmanager
def hooks(modules: list[nn.Module], recorder: Recorder) -> Iterator[None]:
    """Both hooks on every module; a TorchScript submodule cannot take hooks (its calls then
    show as the ops of the module that calls it)."""
    handles = []
    try:
        for module in modules:
            if isinstance(module, torch.jit.ScriptModule):
                continue
            handles.append(module.register_forward_pre_hook(recorder.pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(
                recorder.post_hook, with_kwargs=True, always_call=True))  # fmt: skip
        yield
    finally:
        for handle in handles:
            handle.remove()


def _storage_key(tensor: torch.Tensor) -> int:
    """The address of the memory behind ``tensor``: shared by every view of it."""
    return int(tensor.untyped_storage()._cdata)


def owned_counts(modules: list[nn.Module]) -> dict[int, tuple[int, int]]:
    """Parameters each module owns directly: (all, trainable); lazy ones are left out."""
    counts = {}
    for module in modules:
        total = trainable = 0
        for p in module._parameters.values():
            if isinstance(p, nn.parameter.UninitializedParameter):
                break
            if p is None:
                continue
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
        else:
            counts[id(module)] = (total, trainable)
    return counts
