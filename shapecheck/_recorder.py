"""The recorder: module hooks and a TorchFunctionMode that turn one forward pass into rows.

Each module call and each functional op called from user code (not from inside torch.nn's own
layers) becomes a row with its input and output tensors; calls that raise are remembered so the
tracer can name the innermost one. Per call the work is O(1) in the size of the model.
"""

from __future__ import annotations

import bisect
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import GetSetDescriptorType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.overrides import TorchFunctionMode

from ._describe import call_arguments, describe_module
from ._inputs import PLAIN_TENSORS, call_tensors, tensors_in
from ._lazy import is_uninitialized
from ._paths import ModuleFrame, PathIndex
from ._records import Layer, Shape, TensorInfo, record_of
from ._sharding import ModuleShard, dtensor_type, sharded_view
from ._source import caller_source

if TYPE_CHECKING:
    from ._flops import FlopCounter

__all__ = ["Recorder", "Rewrite", "function_name", "hooks", "owned_counts"]

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


#: What the recorder keeps of a tensor while the forward runs: TensorInfo's fields in its
#: order, the dtype and device still torch's objects; made a record once the forward is over
#: (:meth:`Recorder.records`). A DTensor's is amended with how it is sharded.
Seen = tuple[Any, ...]
_SHAPE, _SEEN_KEY, _GLOBAL_SHAPE, _PLACEMENTS, _MESH_SHAPE = 0, 4, 7, 8, 9

#: dtype -> its name as the records write it ("float32"), filled on first sight
_DTYPE_NAMES: dict[torch.dtype, str] = {}


def _dtype_name(dtype: torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


#: ``with _ours():`` torch-function dispatch off: shapecheck's own tensor reads skip its
#: function mode (the class itself: a wrapper function would cost a call on the hot path)
_ours: Callable[[], AbstractContextManager[None]] = torch._C.DisableTorchFunction


def _writes_by_keyword(kwargs: Mapping[str, Any]) -> bool:
    """``torch.add(a, b, out=x)``, ``F.relu(x, inplace=True)``: the call writes into ``out`` or
    its first argument whatever its name says (``x.mul_(2)``, ``x += 1``: see :func:`_named`)."""
    return bool(kwargs) and ("out" in kwargs or kwargs.get("inplace") is True)


#: func -> (its name as a row shows it, whether that name says it writes in place); every call
#: the recorder sees asks, and the distinct functions of a process are few
_NAMES: dict[Any, tuple[str, bool]] = {}


def _named(func: Callable[..., Any]) -> tuple[str, bool]:
    try:
        return _NAMES[func]
    except KeyError:
        pass
    except TypeError:  # an unhashable callable
        return function_name(func), _in_place_name(getattr(func, "__name__", ""))
    found = function_name(func), _in_place_name(getattr(func, "__name__", ""))
    if len(_NAMES) < 4096:  # bounded, should a program make functions without end
        _NAMES[func] = found
    return found


def _in_place_name(name: str) -> bool:
    trailing = name.endswith("_") and not name.endswith("__") and not name.startswith("_")
    return trailing or name in _IN_PLACE_OPERATORS or name == "__set__"  # a property set


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


#: What the trace knows of one tensor object: ``[a weak reference to it, its key, the row that
#: made it, the model's positional argument it is]``. The weak reference tells a live tensor
#: from a dead one whose id was reused, and holds no memory; the key tells tensor objects apart.
_Entry = list[Any]
_KEY, _MADE_BY, _POSITION = 1, 2, 3

#: A row while the forward runs: plain data, made into its :class:`Layer` record once the
#: forward is over (:meth:`Recorder.layers`), so the hooks between a model's kernels do only
#: what cannot wait. Its fields, in this order (the tensors as :data:`Seen`):
#: ``[module (None for a function), type, path, depth, parent, inputs, outputs, failed,
#: flops, flops_uncounted, source, call]``; a module row's outputs, failed flag and FLOPs are
#: filled in when its call returns.
Pending = list[Any]
_OUTPUTS, _FAILED, _FLOPS, _UNCOUNTED = 6, 7, 8, 9


class Recorder(TorchFunctionMode):
    """Collects rows from module hooks and, as a TorchFunctionMode, from functional calls; and
    where each tensor came from."""

    def __init__(
        self,
        paths: PathIndex,
        owned: Mapping[int, tuple[int, int]],
        device_alias: Mapping[str, str],
        rewrites: Mapping[tuple[str, str], Rewrite],
        shards: Mapping[int, ModuleShard] | None = None,
    ) -> None:
        super().__init__()
        self.paths = paths
        self.owned = owned
        self.device_alias = device_alias
        self._devices: dict[torch.device, str] = {}  # torch.device -> its name in the records
        #: key -> a tensor's last sight and its record: equal sights of it, one record
        self._records: dict[int, tuple[Seen, TensorInfo]] = {}
        self.rewrites = rewrites
        self.shards = shards or {}
        # None unless torch.distributed.tensor is imported: then no tensor can be a DTensor,
        # and plain models pay nothing for the check
        self.dtensor = dtensor_type()
        # sharded models: the arguments before the ParallelStyle hooks made DTensors of them,
        # and the outputs before they were made local again (early_pre_hook, early_post_hook)
        self._raw: tuple[torch.Tensor, ...] | None = None
        self._sharded_out: dict[int, tuple[Seen, ...]] = {}
        self.quiet = False  # inside the hooks of ParallelStyles and FSDP: their ops are no rows
        #: the rows in call order, a module's from when its call begins
        self.rows: list[Pending] = []
        #: module rows whose call has not returned, with the FLOP counter's totals when it began
        self._open: dict[int, tuple[int, int] | None] = {}
        self.module_at: dict[int, nn.Module] = {}
        self.stack: list[ModuleFrame] = []
        #: leaf modules of torch's own whose call is running (no call inside one is a row):
        #: module -> its arguments, or the FLOP counter's totals when it began if counting.
        #: Its ``__setitem__`` is their pre-hook: a C-level call, no Python frame.
        self.leaves: dict[nn.Module, Any] = {}
        self.events: list[tuple[BaseException, int]] = []
        self.value_ranges: dict[int, tuple[int, int]] = {}  # row -> ids it failed on
        self.read: set[int] = set()  # ids of the tensors functional calls were given
        self.counter: FlopCounter | None = None
        # provenance: id(tensor) -> what the trace knows of it (_Entry)
        self._keys: dict[int, _Entry] = {}
        self._next_key = 0
        # the caller's input tensors and the model's parameters, by storage, on a real run; a
        # copy of each one the forward writes into in place, to put back after the run
        self._guarded: dict[int, torch.Tensor] = {}
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        #: the memory of the guarded storages, sorted: (where it begins, where it ends, its
        #: key); an in-place write looks its target up here by address, without making a
        #: storage object for it (the write into an activation, ``ReLU(inplace=True)``, is
        #: the common case)
        self._spans: list[tuple[int, int, int]] = []
        #: ids of the guarded tensors; each one the forward gave other memory (``.data =``)
        #: with another tensor on the memory it had
        self._ids: set[int] = set()
        self._moved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _flops_now(self) -> tuple[int, int] | None:
        counter = self.counter
        return None if counter is None else (counter.total, counter.uncounted_calls)

    def _flops_since(self, start: tuple[int, int] | None) -> tuple[int | None, int]:
        """FLOPs counted, and calls left uncounted, since the counter's totals were ``start``."""
        counter = self.counter
        if counter is None or start is None:
            return None, 0
        return counter.total - start[0], counter.uncounted_calls - start[1]

    def _entry(self, tensor: torch.Tensor) -> _Entry:
        """What the trace knows of this tensor object; one seen for the first time (its id may
        be a dead one's) gets a new key."""
        entry = self._keys.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            entry = self._keys[id(tensor)] = [weakref.ref(tensor), self._next_key, None, None]
            self._next_key += 1
        return entry

    def infos(self, obj: object, made_by: int | None = None) -> tuple[TensorInfo, ...]:
        """The records of the tensors in ``obj``, as they are now; ``made_by`` as for
        :meth:`seen`."""
        return self.records(self.seen_in(obj, made_by))

    def seen_in(
        self, obj: object, made_by: int | None = None, raw: Sequence[torch.Tensor] | None = None
    ) -> tuple[Seen, ...]:
        """:meth:`seen` of the tensors in ``obj``."""
        with _ours():
            if type(obj) in PLAIN_TENSORS:  # most calls return one plain tensor (never a DTensor)
                return (self._seen(obj, made_by),)  # type: ignore[arg-type]
            return self.seen(tensors_in(obj), made_by, raw)

    def seen(
        self,
        tensors: list[torch.Tensor],
        made_by: int | None = None,
        raw: Sequence[torch.Tensor] | None = None,
    ) -> tuple[Seen, ...]:
        """What to keep of ``tensors`` as they are now; ``made_by``: the row that returned them
        (first maker wins). ``raw``: the same arguments before ParallelStyle hooks wrapped them
        as DTensors.

        Call with torch-function dispatch off (:func:`_ours`): the hooks run under the function
        mode, and reading ``.shape``/``.dtype`` through it is a hot spot.
        """
        if self.dtensor is None:
            return tuple([self._seen(t, made_by) for t in tensors])
        # torch.distributed.tensor is imported (transformers does): only a subclass can be a
        # DTensor, whose record says how it is sharded
        sharded, plain = self._sharded_seen, PLAIN_TENSORS
        return tuple([self._seen(t, made_by) if type(t) in plain else sharded(t, made_by, raw, i)
                      for i, t in enumerate(tensors)])  # fmt: skip

    def _sharded_seen(
        self, t: torch.Tensor, made_by: int | None, raw: Sequence[torch.Tensor] | None, at: int
    ) -> Seen:
        """A DTensor's local shape, as the tensor that flows on, with its global shape and
        placements; any other tensor as :meth:`_seen` has it."""
        if self.dtensor is None or not isinstance(t, self.dtensor):
            return self._seen(t, made_by)
        shard, whole, placements, mesh = sharded_view(t)
        return (*self._seen(_unwrapped(shard, raw, at), made_by)[:7], whole, placements, mesh)

    def _seen(self, t: torch.Tensor, made_by: int | None) -> Seen:
        entry = self._keys.get(id(t))  # _entry inline: this runs for every tensor of every row
        if entry is None or entry[0]() is not t:
            entry = self._keys[id(t)] = [weakref.ref(t), self._next_key, made_by, None]
            self._next_key += 1
        elif made_by is not None and entry[_MADE_BY] is None:  # the first maker wins
            entry[_MADE_BY] = made_by
        # a fake's device read without the Python property in front of it; the shape kept as
        # torch.Size (a tuple, equal and hashing alike): made a plain tuple once per record
        # (_new_record), not once per sight
        device = t.fake_device if type(t) is FakeTensor else t.device
        return (t.shape, t.dtype, device, t.requires_grad, entry[_KEY], entry[_MADE_BY],
                entry[_POSITION], None, None, None)  # fmt: skip

    def records(self, seen: tuple[Seen, ...]) -> tuple[TensorInfo, ...]:
        """TensorInfo records of what :meth:`seen` kept; a tensor seen again unchanged (the
        output of one call is the input of the next) gives the same record."""
        return tuple([self._record(s) for s in seen])

    def _record(self, seen: Seen) -> TensorInfo:
        last = self._records.get(seen[_SEEN_KEY])  # the tensor's last record, and its sight
        if last is not None:
            try:
                if last[0] == seen:
                    return last[1]
            except Exception:  # an unbacked SymInt's comparison asks for a value fakes lack
                pass
        record = self._new_record(*seen)
        self._records[seen[_SEEN_KEY]] = (seen, record)
        return record

    def _new_record(
        self,
        shape: torch.Size,
        dtype: torch.dtype,
        device: torch.device,
        requires_grad: bool,
        key: int,
        made_by: int | None,
        model_input: int | None,
        whole: Shape | None = None,
        placements: tuple[str, ...] | None = None,
        mesh: Shape | None = None,
    ) -> TensorInfo:
        """The record of a tensor as seen (the fields of :data:`Seen`, in its order)."""
        return record_of(TensorInfo, {
            "shape": tuple(shape), "dtype": _DTYPE_NAMES.get(dtype) or _dtype_name(dtype),
            "device": self._devices.get(device) or self._device_name(device),
            "requires_grad": requires_grad, "key": key, "made_by": made_by,
            "model_input": model_input, "global_shape": whole, "placements": placements,
            "mesh_shape": mesh,
        })  # fmt: skip

    def _device_name(self, device: torch.device) -> str:
        name = str(device)
        found = self._devices[device] = self.device_alias.get(name, name)
        return found

    def model_inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[TensorInfo, ...]:
        """The model's inputs, each positional tensor argument remembered as such, and (on
        real tensors) their storages, so an in-place write into one can be undone."""
        with _ours():
            for position, arg in enumerate(args):
                if isinstance(arg, torch.Tensor):
                    entry = self._entry(arg)
                    if entry[_POSITION] is None:
                        entry[_POSITION] = position
        self.guard(tensors_in((args, kwargs)))
        return self.infos((args, kwargs))

    def guard(self, tensors: Iterable[torch.Tensor]) -> None:
        """Guard these real tensors (the caller's inputs, the model's parameters): a copy of
        one is kept when the forward first writes into it in place, and put back after it."""
        dtensor, guarded, spans = self.dtensor, self._guarded, self._spans
        with _ours():
            for t in tensors:
                if isinstance(t, FakeTensor) or t.is_meta or t.layout != torch.strided \
                        or is_uninitialized(t):  # fmt: skip
                    continue
                if dtensor is not None and isinstance(t, dtensor):  # a DTensor has no storage
                    continue
                self._ids.add(id(t))
                storage = t.untyped_storage()
                key, nbytes = int(storage._cdata), storage.nbytes()
                if nbytes and key not in guarded:
                    guarded[key] = t
                    start = storage.data_ptr()
                    spans.append((start, start + nbytes, key))
        spans.sort()

    def _guard_write(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Before an in-place write into a guarded tensor (or a view of one), keep a copy;
        before ``.data =`` on one, another tensor on the memory it has."""
        target = kwargs.get("out", args[0] if args else None)
        if not isinstance(target, torch.Tensor):
            return
        setter = getattr(func, "__self__", None)
        if setter is _DATA:
            if id(target) in self._ids:
                with _ours():
                    self._moved.append((target, target.detach()))
            return
        if isinstance(setter, GetSetDescriptorType):  # another property set: no write
            return
        with _ours():
            try:
                address = target.data_ptr()
            except RuntimeError:  # no storage (a sparse tensor): nothing guarded in it
                return
        # the last span that begins at or before the address (no end reaches _PAST)
        at = bisect.bisect_right(self._spans, (address, _PAST)) - 1
        if at < 0 or address >= self._spans[at][1]:
            return
        key = self._spans[at][2]
        if key not in self._saved:
            original = self._guarded[key]
            with _ours():
                self._saved[key] = (original, original.detach().clone())

    def restore_written(self) -> None:
        """Put back every guarded tensor the forward gave other memory, then every one it
        wrote into."""
        if not (self._moved or self._saved):
            return
        with _ours(), torch.no_grad():
            for tensor, alias in reversed(self._moved):  # the first memory it had, last
                tensor.data = alias
            for original, copy in self._saved.values():
                original.copy_(copy)

    def _same_values(self, result: Any, source: Any) -> None:
        """``result`` of ``x.contiguous()`` or ``x.detach()`` stands for ``x``."""
        if not isinstance(result, torch.Tensor) or not isinstance(source, torch.Tensor):
            return
        with _ours():
            entry, origin = self._entry(result), self._entry(source)
            for field in (_MADE_BY, _POSITION):
                if entry[field] is None:
                    entry[field] = origin[field]

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

    def layers(self) -> list[Layer]:
        """The rows as records, in call order (a module whose call never returned, as it was
        when it began); made once, after the forward, from the rows as they were recorded."""
        for index in list(self._open):
            self._close(index, ())
        described: dict[int, str] = {}  # a module called many times is described once
        return [self._layer(index, row, described) for index, row in enumerate(self.rows)]

    def _layer(self, index: int, row: Pending, described: dict[int, str]) -> Layer:
        module, type_name, path, depth, parent, inputs, outputs, failed, flops, uncounted, \
            source, call = row  # fmt: skip
        record = self._record
        params = trainable = 0
        description, shard = "", None
        if module is not None:
            owned = self.owned.get(id(module))  # None for a lazy module: count it now, made
            params, trainable = owned or owned_counts([module]).get(id(module), (0, 0))
            known = described.get(id(module))
            if known is None:
                known = described[id(module)] = describe_module(module)
            description = known
            shard = self.shards.get(id(module)) if self.shards else None
        return record_of(Layer, {
            "index": index, "path": path, "kind": "function" if module is None else "module",
            "type": type_name, "depth": depth, "inputs": tuple([record(s) for s in inputs]),
            "outputs": tuple([record(s) for s in outputs]), "params": params,
            "trainable": trainable, "description": description, "parent": parent,
            "failed": failed, "source": source, "call": call, "flops": flops,
            "flops_uncounted": uncounted, "rank_params": shard.params if shard else None,
            "rank_param_bytes": shard.nbytes if shard else None,
            "param_placements": shard.placements if shard else (),
        })  # fmt: skip

    def _close(self, index: int, outputs: tuple[Seen, ...], failed: bool = False) -> None:
        """A module call returned (or raised, or never returned): its row gets its outputs."""
        row = self.rows[index]
        row[_OUTPUTS], row[_FAILED] = outputs, failed
        row[_FLOPS], row[_UNCOUNTED] = self._flops_since(self._open.pop(index))

    # -- module hooks -------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        raw, self._raw, self.quiet = self._raw, None, False
        stack = self.stack
        parent = stack[-1] if stack else None
        with _ours():
            inputs = self.seen(call_tensors(args, kwargs), raw=raw)
        path = self.paths.path_of(module, parent)
        row = len(self.rows)
        self.rows.append([module, type(module).__name__, path, len(stack),
                          parent.row if parent else None, inputs, (), False, None, 0, None,
                          None])  # fmt: skip
        self._open[row] = self._flops_now()
        self.module_at[row] = module
        stack.append(ModuleFrame(module, path, row, _records_functions(type(module))))

    def post_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        self.quiet = False
        frame = self._returned(module)
        if frame is None:
            return
        row = frame.row
        error = sys.exc_info()[1] if output is None else None
        if error is not None:
            self._close(row, (), failed=True)
            self.events.append((error, row))
            self._remember_values(row, args)
            return
        outputs = self.seen_in(output, made_by=row)
        sharded = self._sharded_out.pop(row, None) if self._sharded_out else None
        self._close(row, outputs if sharded is None else _with_global(outputs, sharded))

    def _returned(self, module: nn.Module) -> ModuleFrame | None:
        """Take ``module``'s call off the stack, and the calls above it, which never returned
        (a call inside raised past their hooks): their rows stay as they began. Its frame is
        the top one but for that; None when it is not on the stack."""
        stack = self.stack
        position = len(stack) - 1 if stack and stack[-1].module is module \
            else self._frame_of(module)  # fmt: skip
        if position is None:
            return None
        frame = stack[position]
        for inner in stack[position + 1 :]:
            self._close(inner.row, ())
        del stack[position:]
        return frame

    # -- leaf modules of torch itself: one row each, made when the call returns ----------------
    def leaf_pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """Marks the call as running, with the FLOP counter's totals (when not counting, the
        pre-hook is ``leaves.__setitem__`` itself)."""
        self.leaves[module] = self._flops_now()

    def leaf_post_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        """The row of a leaf module's call: no call inside it was a row, so its index is in
        call order, and its inputs are read now (no module of torch's own changes what its
        arguments are: their shape, dtype and device are as they were when it began)."""
        start = self.leaves.pop(module, _NOT_RUNNING)
        if start is _NOT_RUNNING:
            return
        stack = self.stack
        parent = stack[-1] if stack else None
        row = len(self.rows)
        error = sys.exc_info()[1] if output is None else None
        with _ours():
            inputs = self.seen(call_tensors(args, kwargs))
        outputs = self.seen_in(output, made_by=row) if error is None else ()
        flops, uncounted = self._flops_since(start)
        self.rows.append([module, type(module).__name__, self.paths.path_of(module, parent),
                          len(stack), parent.row if parent else None, inputs, outputs,
                          error is not None, flops, uncounted, None, None])  # fmt: skip
        self.module_at[row] = module
        if error is not None:
            self.events.append((error, row))
            self._remember_values(row, args)

    # -- sharded models: what the ParallelStyle and FSDP hooks change -------------------------
    def early_pre_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Runs before every other pre-hook: the arguments as the caller passed them (their
        provenance), and the hooks' own ops (``DTensor.from_local``, FSDP's all-gather) kept
        out of the table."""
        self._raw, self.quiet = tuple(tensors_in((args, kwargs))), True

    def early_post_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        """Runs before every other forward hook: outputs still DTensors, global shape and
        placements as DTensor has them, before a ParallelStyle makes them local."""
        if output is None:
            return
        position = self._frame_of(module)
        if position is not None:
            self._sharded_out[self.stack[position].row] = self.seen_in(output)
            self.quiet = True

    def _frame_of(self, module: nn.Module) -> int | None:
        for position in range(len(self.stack) - 1, -1, -1):
            if self.stack[position].module is module:
                return position
        return None

    # -- functional ops -------------------------------------------------------------------------
    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Every torch function call while the mode is on; those from user code are rows."""
        kwargs = kwargs or {}
        name, in_place = _named(func)
        if self._guarded and (in_place or _writes_by_keyword(kwargs)):
            self._guard_write(func, args, kwargs)
        stack = self.stack
        if self.leaves or self.quiet or not stack or not stack[-1].records_functions:
            return func(*args, **kwargs)
        frame = stack[-1]
        if name in _BOOKKEEPING:
            result = func(*args, **kwargs)
            if name in _SAME_VALUES and args:
                self._same_values(result, args[0])
            return result
        source = caller_source(skip=2)
        rewrites = self.rewrites
        rewrite = (rewrites.get((source or "", name)) or rewrites.get(("*", name))) if rewrites \
            else None  # fmt: skip
        with _ours():
            tensors = call_tensors(args, kwargs)
            given = self.seen(tensors)
            # weights read directly, F.linear(x, self.w): require grad or are Parameters
            # (type() is: Parameter's own isinstance check is slow)
            self.read.update([id(t) for t in tensors
                              if t.requires_grad or type(t) is nn.Parameter])  # fmt: skip
        counting = self.counter is not None
        start = self._flops_now() if counting else None
        row = [None, name, frame.path, len(stack), frame.row, given, (), False, None, 0, source,
               call_arguments(args, kwargs, func)]  # fmt: skip
        try:
            result = rewrite(func, args, kwargs) if rewrite else func(*args, **kwargs)
        except Exception as error:
            index = len(self.rows)  # rows made inside the call come first
            row[_FAILED] = True
            row[_FLOPS], row[_UNCOUNTED] = self._flops_since(start)
            self.rows.append(row)
            self.events.append((error, index))
            self._remember_values(index, (args, kwargs))
            raise
        outputs = self.seen_in(result, made_by=len(self.rows))  # the index it is added at
        if outputs:
            row[_OUTPUTS] = outputs
            if counting:
                row[_FLOPS], row[_UNCOUNTED] = self._flops_since(start)
            self.rows.append(row)
        return result


_NOT_RUNNING = object()
_PAST = float("inf")


#: the ``data`` property of tensors: the function mode sees ``tensor.data = other`` as a call
#: of its setter (``__self__`` is the property)
_DATA = torch.Tensor.data


def _records_functions(cls: type) -> bool:
    """Functional calls inside this class's forward are rows: not inside torch's own layers."""
    return not cls.__module__.startswith("torch.")


def _unwrapped(shard: torch.Tensor, raw: Sequence[torch.Tensor] | None, at: int) -> torch.Tensor:
    """The tensor a DTensor argument was made from (``from_local`` wraps a view of it), when
    the raw argument at the same position is a plain tensor of the shard's shape."""
    if raw is None or at >= len(raw) or raw[at].shape != shard.shape:
        return shard
    return raw[at]


def _with_global(outputs: tuple[Seen, ...], sharded: tuple[Seen, ...]) -> tuple[Seen, ...]:
    """Local outputs with the global shape of the DTensors they were made from, and the
    placements they have after the ParallelStyle's output hook (see :func:`_flowing`)."""
    if len(outputs) != len(sharded):
        return outputs
    found = []
    for out, d in zip(outputs, sharded, strict=True):
        placements, whole = None, d[_GLOBAL_SHAPE]
        if out[_GLOBAL_SHAPE] is None and whole is not None and d[_PLACEMENTS] is not None:
            placements = _flowing(d[_PLACEMENTS], whole, d[_SHAPE], out[_SHAPE])
        if placements is not None:
            out = (*out[:_GLOBAL_SHAPE], whole, placements, d[_MESH_SHAPE])
        found.append(out)
    return tuple(found)


def _flowing(
    placements: tuple[str, ...],
    whole: tuple[int, ...],
    before: tuple[int, ...],
    after: tuple[int, ...],
) -> tuple[str, ...] | None:
    """Placements of a module's DTensor output once a ParallelStyle redistributed it and made
    it local: a Rowwise layer's partial sums ``P(sum)`` are all-reduced (``R``: the local
    shape is the global one) or reduce-scattered (``S(d)``: only dim d is split); a shard
    made local as it is keeps its placements. None when the shapes do not tell (a 2-D mesh)."""
    if after == before and not any(p.startswith("P") for p in placements):
        return placements
    if after == whole:
        return ("R",) * len(placements)
    if len(placements) != 1 or len(after) != len(whole):
        return None
    split = [d for d, (a, w) in enumerate(zip(after, whole, strict=True)) if a != w]
    return (f"S({split[0]})",) if len(split) == 1 else None


@contextmanager
def hooks(modules: list[nn.Module], recorder: Recorder, sharded: bool = False) -> Iterator[None]:
    """Both hooks on every module (a leaf module of torch's own, its cheaper ``leaf_*`` pair);
    a TorchScript submodule cannot take hooks (its calls then show as the ops of the module
    that calls it). On a sharded model also ``early_*`` hooks that run before the
    ParallelStyle and FSDP hooks (registered first, they would run after)."""
    handles = []
    # the FLOP counter's totals when a leaf's call begins, when counting; else only a mark
    leaf_pre = recorder.leaf_pre_hook if recorder.counter is not None \
        else recorder.leaves.__setitem__  # fmt: skip
    try:
        for module in modules:
            if isinstance(module, torch.jit.ScriptModule):
                continue
            if sharded:
                handles.append(module.register_forward_pre_hook(
                    recorder.early_pre_hook, with_kwargs=True, prepend=True))  # fmt: skip
                handles.append(module.register_forward_hook(
                    recorder.early_post_hook, with_kwargs=True, prepend=True))  # fmt: skip
            if not sharded and not module._modules and not _records_functions(type(module)):
                handles.append(module.register_forward_pre_hook(leaf_pre))
                post = recorder.leaf_post_hook
            else:
                handles.append(module.register_forward_pre_hook(recorder.pre_hook,
                                                                with_kwargs=True))  # fmt: skip
                post = recorder.post_hook
            handles.append(module.register_forward_hook(post, with_kwargs=True, always_call=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def owned_counts(modules: list[nn.Module]) -> dict[int, tuple[int, int]]:
    """Parameters each module owns directly: (all, trainable); lazy ones are left out."""
    counts = {}
    for module in modules:
        total = trainable = 0
        for p in module._parameters.values():
            if p is None:
                continue
            if is_uninitialized(p):
                break
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
        else:
            counts[id(module)] = (total, trainable)
    return counts
