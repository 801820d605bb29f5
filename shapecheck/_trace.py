"""Run ONE forward pass with hooks and record every module call and functional op.

The tracer owns its clean-up: hooks are removed and the model's training flags, buffers and
the global RNG state are restored in ``finally``. It returns records, partial when the forward
raises; it never diagnoses and never prints.
"""

from __future__ import annotations

import gc
import random
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    UnsupportedOperatorException,
)

from ._buffers import BufferSnapshot
from ._dry import DryRun, available, is_meta_model
from ._inputs import realise
from ._lazy import is_uninitialized
from ._memory import SavedTensors
from ._paths import ModelWalk, PathIndex
from ._recorder import Recorder, Rewrite, hooks, owned_counts
from ._records import Failure, Layer, TensorInfo
from ._sharding import is_sharded, kept_sharded, module_shards, settle
from ._source import traceback_source

if TYPE_CHECKING:
    from ._flops import FlopCounter

__all__ = [
    "FAKE_LIMITS", "REAL_RUN_BYTES", "Rewrite", "Trace", "activation_bytes", "gc_paused",
    "go_on_for_real", "real_possible", "run_trace",
]  # fmt: skip

#: Errors that mean "fake tensors cannot run this", not "the model is wrong" (an op without a
#: fake kernel raises NotImplementedError).
FAKE_LIMITS = (
    DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException,
    NotImplementedError,
)  # fmt: skip


#: A real run where a dry run could not go on is affordable up to this many bytes of activations
#: (the layer outputs the dry run saw, leaves only, plus the inputs): a real forward of that
#: size costs well under a second on a CPU and never more memory than the user's machine has
#: for the model itself. Larger models keep the dry run's answer, marked as unconfirmed.
REAL_RUN_BYTES = 256 * 2**20


@dataclass
class Trace:
    """What one forward pass recorded.

    ``fallback`` says why a dry run went on for real (the layers are then the real run's);
    ``unconfirmed`` that a dry run failed and no real run could confirm it.
    """

    layers: list[Layer]
    failure: Failure | None
    outputs: tuple[TensorInfo, ...]
    inputs: tuple[TensorInfo, ...]
    module_at: dict[int, nn.Module]
    dry_run: bool
    output: Any = field(default=None, repr=False)
    #: A dry run with a device puts every weight there (shown under this name); None otherwise.
    weights_on: str | None = None
    flops: FlopCounter | None = None
    saved: SavedTensors | None = None
    fallback: str | None = None
    unconfirmed: bool = False
    #: samples in the model's first input: a tensor's leading dim, a list's length
    batch: int | None = None
    #: the same of the model's output (None when it failed or holds no tensor)
    output_batch: int | None = None
    #: ids of the model's weights that a functional call was given (``F.linear(x, self.w)``)
    weights_read: frozenset[int] = frozenset()
    #: the model's module tree as the trace walked it, for the totals and the rules
    walk: ModelWalk | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.failure is None


@contextmanager
def gc_paused() -> Iterator[None]:
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


class _Restore:
    """Training flags, buffers, the RNG states (torch's and Python's ``random``) and the
    recursion limit, put back exactly as found."""

    def __init__(self, modules: list[nn.Module], buffers: bool, depth: int) -> None:
        self.flags = [(m, m.training) for m in modules]
        live = [b for m in modules for b in m._buffers.values()
                if b is not None and not is_uninitialized(b)] if buffers else []  # fmt: skip
        self.buffers = BufferSnapshot(live)
        self.cpu_rng = torch.get_rng_state()
        cuda_ready = torch.cuda.is_available() and torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
        self.cuda_rng = torch.cuda.get_rng_state_all() if cuda_ready else None
        self.python_rng = random.getstate()
        self.limit = sys.getrecursionlimit()
        # a hooked module call takes 4 frames (3 without hooks): nesting as deep as PyTorch
        # itself runs must not hit the limit because of the hooks
        sys.setrecursionlimit(max(self.limit, self.limit + 2 * depth))

    def __call__(self) -> None:
        for module, training in self.flags:
            if module.training is not training:  # nn.Module's __setattr__ costs ~1 µs
                module.training = training
        self.buffers.put_back()
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        random.setstate(self.python_rng)
        sys.setrecursionlimit(self.limit)


@gc_paused()  # the whole trace, set-up and records included
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
    flops: bool = False,
    saved: bool = False,
    confirm: bool = False,
    walk: ModelWalk | None = None,
) -> Trace:
    """Run one forward pass of ``model`` and record it; never raises for the model's errors.

    ``call``, when given, receives the model's output and runs more code under the same trace
    (the loss, say); its modules are named by ``extra``. ``flops`` counts FLOPs per call;
    ``saved`` runs with autograd on and records what it saves for backward. A dry run that
    raises may go on for real: see :func:`go_on_for_real`, with ``confirm`` for the user's own
    forward. ``walk``: the model's walk, when made already.
    """
    walk = walk or ModelWalk(model)
    trace = _run_once(model, args, kwargs, dry_run, device, rewrites, extra, call, flops, saved,
                      walk)  # fmt: skip
    error = trace.failure.exception if trace.failure is not None else None
    if not dry_run or error is None:
        return trace
    if not go_on_for_real(error, trace, confirm, model, device):
        trace.unconfirmed = confirm and not isinstance(error, FAKE_LIMITS)
        return trace
    here = device if device is not None and available(device) else None  # else: where data is
    real_args, real_kwargs = realise((args, kwargs), here)
    real = _run_once(model, real_args, real_kwargs, False, None, rewrites, extra, call, flops,
                     saved, walk)  # fmt: skip
    if not isinstance(error, FAKE_LIMITS) and _same_place(real, trace):
        # the real run fails where the dry run did: the dry answer stands, in PyTorch's words
        # for real tensors (fake kernels word some errors otherwise)
        assert trace.failure is not None
        assert real.failure is not None
        trace.failure = replace(trace.failure, exception=real.failure.exception)
        return trace
    place = "" if here is None and device is None else f" on {here or 'cpu'}"
    real.fallback = (
        f"fake tensors could not run this forward ({type(error).__name__}: "
        f"{_first_line(error)}); it ran for real{place} on example data of the same shapes"
    )
    return real


def go_on_for_real(
    error: BaseException, dry: Trace, confirm: bool, model: nn.Module, device: torch.device | None
) -> bool:
    """The one fake-to-real fallback policy, for explain, re-runs, FLOPs and memory alike.

    A dry run that raised goes on for real when the model's weights are real (not ``meta``):
    - when fake tensors cannot run an op (data-dependent output such as ``.item()`` or
      ``nonzero``, an op without a fake kernel): always, on the device asked for, or where the
      data lives when that device is only simulated;
    - for any other error only with ``confirm`` (the dry run is the user's own forward: fake
      kernels can be stricter than real ones, so a dry run never reports a working model as
      failed), on a device this machine has (a simulated one could hide a device mismatch),
      and within :data:`REAL_RUN_BYTES`.
    A re-run of a candidate fix does not confirm: a fix fake tensors reject is at worst left
    unverified.
    """
    if is_meta_model(model):
        return False
    if isinstance(error, FAKE_LIMITS):
        return True
    return confirm and real_possible(model, device) and activation_bytes(dry) <= REAL_RUN_BYTES


def real_possible(model: nn.Module, device: torch.device | None) -> bool:
    """True when the model can run for real as asked: weights not on meta, device not simulated."""
    return not is_meta_model(model) and (
        device is None or (available(device) and device.type != "meta")
    )


def activation_bytes(trace: Trace) -> int:
    """Bytes of the inputs and of every leaf call's outputs: what a real run would allocate."""
    parents = {layer.parent for layer in trace.layers}
    leaves = sum(layer.output_bytes for layer in trace.layers if layer.index not in parents)
    return leaves + sum(t.nbytes for t in trace.inputs)


def _batch_of(args: tuple[Any, ...]) -> int | None:
    """The samples in the first input: a tensor's leading dim, or how many tensors a list of
    them holds (detection models take a list of images)."""
    first = args[0] if args else None
    if isinstance(first, torch.Tensor):
        return int(first.shape[0]) if first.dim() else None
    if isinstance(first, (list, tuple)) and first and all(isinstance(t, torch.Tensor)
                                                          for t in first):  # fmt: skip
        return len(first)
    return None


def _same_place(real: Trace, dry: Trace) -> bool:
    return (
        real.failure is not None
        and dry.failure is not None
        and (real.failure.path, real.failure.type) == (dry.failure.path, dry.failure.type)
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _run_once(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    dry_run: bool,
    device: torch.device | None,
    rewrites: Mapping[tuple[str, str], Rewrite] | None,
    extra: dict[str, nn.Module] | None,
    call: Callable[[Any], Any] | None,
    flops: bool,
    saved: bool,
    walk: ModelWalk,
) -> Trace:
    paths = PathIndex(walk, extra)
    modules = walk.modules() + list((extra or {}).values())
    dry = DryRun(device) if dry_run else None
    counter = _counter() if flops else None
    saving = SavedTensors(model) if saved else None
    sharded = is_sharded(walk)  # read before the forward: FSDP2 gathers inside it
    recorder = Recorder(
        paths, owned_counts(modules), dry.device_alias if dry else {}, rewrites or {},
        module_shards(modules) if sharded else None,
    )  # fmt: skip
    restore = _Restore(modules, buffers=not dry_run, depth=paths.depth)
    output: Any = None
    error: Exception | None = None
    model_inputs: tuple[TensorInfo, ...] = ()
    try:
        with ExitStack() as stack:
            if sharded:
                stack.enter_context(kept_sharded(model))
            stack.enter_context(torch.set_grad_enabled(saved))
            stack.enter_context(_eager())
            forward: Callable[..., Any] = model
            if dry is not None:
                forward, args, kwargs = stack.enter_context(dry.prepare(walk, args, kwargs))
            model_inputs = recorder.model_inputs(args, kwargs)
            if dry is None:
                recorder.guard(walk.parameters())
            for context in (saving, counter):
                if context is not None:
                    stack.enter_context(context)
            recorder.counter = counter
            stack.enter_context(hooks(modules, recorder, sharded))
            stack.enter_context(recorder)  # the function mode: functional calls are rows
            output = forward(*args, **kwargs)
            if sharded:
                settle(output)
            if call is not None:
                call(output)
    except Exception as exc:
        error = exc
    finally:
        restore()
        recorder.restore_written()
        walk.ran()
    trace = _finish(model, recorder, model_inputs, output, error, dry_run)
    trace.flops, trace.saved, trace.walk = counter, saving, walk
    trace.batch = _batch_of(args)
    trace.output_batch = _batch_of((output,)) if error is None else None
    originals = dry.originals if dry is not None else {}
    trace.weights_read = frozenset(originals.get(key, key) for key in recorder.read)
    if dry is not None and dry.target is not None:
        trace.weights_on = dry.device_alias.get(dry.target.type, str(dry.target))
    return trace


def _counter() -> FlopCounter:
    """A FLOP counter (its formulas are loaded only when FLOPs are asked for)."""
    from ._flops import FlopCounter

    return FlopCounter()


def _eager() -> AbstractContextManager[Any]:
    """Compiled submodules run eagerly while traced: hooks and fake tensors see every layer,
    and nothing is compiled just to be explained (``set_stance("force_eager")`` from torch
    2.6; before it, dynamo's ``disable`` setting, which compiles no frame while it is set).

    Without torch._dynamo imported nothing can be compiled, and entering either would
    import it (about 75 MiB and a slow first call), so then there is nothing to do.
    """
    if "torch._dynamo" not in sys.modules:
        return nullcontext()
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        patched: AbstractContextManager[Any] = sys.modules["torch._dynamo"].config.patch(
            disable=True)  # fmt: skip
        return patched
    stance: AbstractContextManager[Any] = set_stance("force_eager")
    return stance


def _finish(
    model: nn.Module,
    recorder: Recorder,
    inputs: tuple[TensorInfo, ...],
    output: Any,
    error: Exception | None,
    dry_run: bool,
) -> Trace:
    layers = recorder.layers()
    failure = None if error is None else _failure(model, recorder, layers, inputs, error)
    outputs = recorder.infos(output) if error is None else ()
    return Trace(layers, failure, outputs, inputs, recorder.module_at, dry_run, output)


def _failure(
    model: nn.Module,
    recorder: Recorder,
    layers: list[Layer],
    inputs: tuple[TensorInfo, ...],
    error: Exception,
) -> Failure:
    index = _event_for(recorder.events, error)
    source = traceback_source(error.__traceback__)
    if index is None:
        return Failure("", type(model).__name__, inputs, error, source, None)
    layer = layers[index]
    values = recorder.value_ranges.get(index)
    if layer.kind == "function":
        owner = layers[layer.parent].path if layer.parent is not None else ""
        return Failure(owner, layer.type, layer.inputs, error, layer.source or source, index,
                       values)  # fmt: skip
    return Failure(layer.path, layer.type, layer.inputs, error, source, index, values)


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
