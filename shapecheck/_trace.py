"""Run ONE forward pass with hooks and record every module call and functional op.

The tracer owns its clean-up: hooks are removed and the model's training flags, buffers and
the global RNG state are restored in ``finally``. It returns records, partial when the forward
raises; it never diagnoses and never prints.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    UnsupportedOperatorException,
)
from torch.overrides import TorchFunctionMode

from ._describe import describe_arguments, describe_module
from ._dry import DryRun
from ._flops import FlopCounter
from ._inputs import tensors_in
from ._paths import ModuleFrame, PathIndex
from ._records import Failure, Layer, TensorInfo
from ._source import caller_source, traceback_source

__all__ = ["Rewrite", "Trace", "run_trace"]

#: Replaces one functional call during a re-run: (args, kwargs) -> result.
Rewrite = Callable[[tuple[Any, ...], dict[str, Any]], Any]

_FAKE_LIMITS = (
    DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException,
)  # fmt: skip

# Calls that read metadata or only move bytes: never rows in the table.
_BOOKKEEPING = frozenset({
    "size", "dim", "numel", "stride", "__len__", "__bool__", "__format__", "__repr__",
    "__hash__", "item", "tolist", "is_floating_point", "is_contiguous", "data_ptr",
    "element_size", "contiguous", "detach", "requires_grad_", "__iter__", "__reduce_ex__",
    "__deepcopy__", "__setstate__", "_has_compatible_shallow_copy_type", "get_device",
    "grad", "data", "_base", "is_complex", "nelement", "ndimension", "has_names",
})  # fmt: skip


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
class Trace:
    """What one forward pass recorded."""

    layers: list[Layer]
    failure: Failure | None
    outputs: tuple[TensorInfo, ...]
    inputs: tuple[TensorInfo, ...]
    module_at: dict[int, nn.Module]
    dry_run: bool
    output: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass
class _Row:
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


class _Recorder:
    """Collects rows from module hooks and the function mode."""

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
        self.rows: list[_Row] = []
        self.module_at: dict[int, nn.Module] = {}
        self.stack: list[ModuleFrame] = []
        self.events: list[tuple[BaseException, int]] = []
        self.busy = False
        self.counter: FlopCounter | None = None

    def _flops_now(self) -> int | None:
        # one running total, read at the start and end of each call: O(1) per call
        return None if self.counter is None else self.counter.total

    def _flops_end(self, row: _Row) -> None:
        if self.counter is not None and row.flops_start is not None:
            row.flops = self.counter.total - row.flops_start

    def infos(self, obj: object) -> tuple[TensorInfo, ...]:
        alias = self.device_alias
        # Our own reads of .shape/.dtype pass through the function mode too; marking them busy
        # keeps them from being recorded (a hot spot: ~10 such reads per module call).
        busy, self.busy = self.busy, True
        try:
            return tuple(
                TensorInfo(tuple(t.shape), str(t.dtype).removeprefix("torch."),
                           alias.get(str(t.device), str(t.device)), t.requires_grad)
                for t in tensors_in(obj)
            )  # fmt: skip
        finally:
            self.busy = busy

    def _add(self, row: _Row) -> int:
        self.rows.append(row)
        return len(self.rows) - 1

    # -- module hooks -------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.busy:
            return
        parent = self.stack[-1] if self.stack else None
        owned = self.owned.get(id(module))  # None for a lazy module: count it now, made
        params, trainable = owned or _owned_counts([module]).get(id(module), (0, 0))
        row = self._add(_Row(
            path=self.paths.path_of(module, parent), kind="module",
            type=type(module).__name__, depth=len(self.stack),
            inputs=self.infos((args, kwargs)), params=params, trainable=trainable,
            summary=describe_module(module), parent=parent.row if parent else None,
            flops_start=self._flops_now(),
        ))  # fmt: skip
        self.module_at[row] = module
        records = not type(module).__module__.startswith("torch.")
        self.stack.append(ModuleFrame(module, self.rows[row].path, row, records))

    def post_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if self.busy:
            return
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
        else:
            row.outputs = self.infos(output)

    def _frame_of(self, module: nn.Module) -> int | None:
        for position in range(len(self.stack) - 1, -1, -1):
            if self.stack[position].module is module:
                return position
        return None

    # -- functional ops -------------------------------------------------------------------------
    def call(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        frame = self.stack[-1] if self.stack else None
        if self.busy or frame is None or not frame.records_functions:
            return func(*args, **kwargs)
        name = function_name(func)
        if name in _BOOKKEEPING:
            return func(*args, **kwargs)
        source = caller_source(skip=3)
        arguments = describe_arguments(args, kwargs, func)
        rewrite = self.rewrites.get((source or "", name))
        row = _Row(
            path=frame.path, kind="function", type=name, depth=len(self.stack),
            inputs=self.infos((args, kwargs)), params=0, trainable=0,
            summary=f"{name}({arguments})", parent=frame.row, source=source, arguments=arguments,
            flops_start=self._flops_now(),
        )  # fmt: skip
        try:
            result = rewrite(args, kwargs) if rewrite else func(*args, **kwargs)
        except Exception as error:
            row.failed = True
            self._flops_end(row)
            self.events.append((error, self._add(row)))
            raise
        self._flops_end(row)
        row.outputs = self.infos(result)
        if row.outputs:
            self._add(row)
        return result


class _FunctionMode(TorchFunctionMode):
    """Sends every torch function call through the recorder."""

    def __init__(self, recorder: _Recorder) -> None:
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
def _gc_paused() -> Iterator[None]:
    """No cyclic GC during the trace: its full passes walk the whole model and every record so
    far, which made the trace superlinear (8x the layers took ~11x as long; 8.1x with it off).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _hooks(modules: list[nn.Module], recorder: _Recorder) -> Iterator[None]:
    handles = []
    try:
        for module in modules:
            handles.append(module.register_forward_pre_hook(recorder.pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(
                recorder.post_hook, with_kwargs=True, always_call=True))  # fmt: skip
        yield
    finally:
        for handle in handles:
            handle.remove()


def _owned_counts(modules: list[nn.Module]) -> dict[int, tuple[int, int]]:
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


class _Restore:
    """Training flags, buffers and RNG state, put back exactly as found."""

    def __init__(self, model: nn.Module, buffers: bool) -> None:
        self.flags = [(m, m.training) for m in model.modules()]
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()] if buffers else []
        self.cpu_rng = torch.get_rng_state()
        cuda_ready = torch.cuda.is_available() and torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
        self.cuda_rng = torch.cuda.get_rng_state_all() if cuda_ready else None

    def __call__(self) -> None:
        for module, training in self.flags:
            module.training = training
        with torch.no_grad():
            for live, saved in self.buffers:
                live.copy_(saved)
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


@_gc_paused()  # the whole trace, set-up and records included
def run_trace(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    dry_run: bool,
    device: torch.device | None = None,
    rewrites: Mapping[tuple[str, str], Rewrite] | None = None,
    extra: dict[str, nn.Module] | None = None,
    call: Callable[[Any], Any] | None = None,
    flops: FlopCounter | None = None,
    grad: bool = False,
    contexts: Sequence[AbstractContextManager[Any]] = (),
) -> Trace:
    """Run one forward pass of ``model`` and record it; never raises for the model's errors.

    ``call``, when given, receives the model's output and runs more code under the same trace
    (the loss, say); its modules are named by ``extra``. ``flops`` counts FLOPs per call;
    ``grad`` runs with autograd on (to see what it saves) and ``contexts`` are entered inside
    the dry run's fake mode, just before the forward.
    """
    modules = list(model.modules()) + list((extra or {}).values())
    dry = DryRun(device) if dry_run else None
    given = (args, kwargs)  # real inputs, for a real run where fake tensors cannot go on
    recorder = _Recorder(
        PathIndex(model, extra), _owned_counts(modules),
        dry.device_alias if dry else {}, rewrites or {},
    )  # fmt: skip
    restore = _Restore(model, buffers=not dry_run)
    output: Any = None
    error: Exception | None = None
    model_inputs: tuple[TensorInfo, ...] = ()
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.set_grad_enabled(grad))
            forward: Callable[..., Any] = model
            if dry is not None:
                forward, args, kwargs = stack.enter_context(dry.prepare(model, args, kwargs))
            recorder.busy = True
            model_inputs = recorder.infos((args, kwargs))
            recorder.busy = False
            for context in (*contexts, *([flops] if flops is not None else [])):
                stack.enter_context(context)
            recorder.counter = flops
            stack.enter_context(_hooks(modules, recorder))
            stack.enter_context(_FunctionMode(recorder))
            output = forward(*args, **kwargs)
            if call is not None:
                call(output)
    except Exception as exc:
        error = exc
    finally:
        restore()
    if dry is not None and _fake_cannot(error, dry) and flops is None and not contexts:
        return run_trace(model, *given, dry_run=False, rewrites=rewrites, extra=extra, call=call,
                         grad=grad)  # fmt: skip
    return _finish(model, recorder, model_inputs, output, error, dry_run)


def _fake_cannot(error: Exception | None, dry: DryRun) -> bool:
    """Fake tensors cannot run data-dependent ops (``.item()``, mask checks, CTC); a real run
    can, unless the device is only simulated or the weights live on meta."""
    simulated = bool(dry.device_alias) or (dry.target is not None and dry.target.type == "meta")
    return isinstance(error, _FAKE_LIMITS) and not simulated


def _finish(
    model: nn.Module,
    recorder: _Recorder,
    inputs: tuple[TensorInfo, ...],
    output: Any,
    error: Exception | None,
    dry_run: bool,
) -> Trace:
    layers = [
        Layer(index=i, path=r.path, kind=r.kind, type=r.type, depth=r.depth,  # type: ignore[arg-type]
              inputs=r.inputs, outputs=r.outputs, params=r.params, trainable=r.trainable,
              summary=r.summary, parent=r.parent, failed=r.failed, source=r.source,
              arguments=r.arguments, flops=r.flops)
        for i, r in enumerate(recorder.rows)
    ]  # fmt: skip
    failure = None if error is None else _failure(model, recorder, layers, inputs, error)
    outputs = recorder.infos(output) if error is None else ()
    return Trace(layers, failure, outputs, inputs, recorder.module_at, dry_run, output)


def _failure(
    model: nn.Module,
    recorder: _Recorder,
    layers: list[Layer],
    inputs: tuple[TensorInfo, ...],
    error: Exception,
) -> Failure:
    index = _event_for(recorder.events, error)
    source = traceback_source(error.__traceback__)
    if index is None:
        return Failure("", type(model).__name__, inputs, error, source, None)
    layer = layers[index]
    if layer.kind == "function":
        owner = layers[layer.parent].path if layer.parent is not None else ""
        return Failure(owner, layer.type, layer.inputs, error, layer.source or source, index)
    return Failure(layer.path, layer.type, layer.inputs, error, source, index)


def _event_for(events: list[tuple[BaseException, int]], error: BaseException) -> int | None:
    """The innermost recorded call that raised ``error`` (or the error it was raised from)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for candidate in chain:
        for raised, index in events:
            if raised is candidate:
                return index
    return None


def with_layers(trace: Trace, layers: list[Layer]) -> Trace:
    """A copy of ``trace`` with other layer records (used to add per-layer statistics)."""
    return replace(trace, layers=layers)
