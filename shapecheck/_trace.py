"""Run ONE forward pass with hooks and record every module call and functional op.

The tracer owns its clean-up: hooks are removed and the model's training flags, buffers and
the global RNG state are restored in ``finally``. It returns records, partial when the forward
raises; it never diagnoses and never prints.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    UnsupportedOperatorException,
)

from ._dry import DryRun
from ._flops import FlopCounter
from ._inputs import realise
from ._paths import PathIndex
from ._recorder import FunctionMode, Recorder, Rewrite, hooks, owned_counts
from ._records import Failure, Layer, TensorInfo
from ._source import traceback_source

__all__ = ["FAKE_LIMITS", "Rewrite", "Trace", "gc_paused", "run_trace"]

#: Errors that mean "fake tensors cannot run this", not "the model is wrong".
FAKE_LIMITS = (
    DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException,
)  # fmt: skip


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
    #: A dry run with a device puts every weight there (shown under this name); None otherwise.
    weights_on: str | None = None

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
    recorder = Recorder(
        PathIndex(model, extra), owned_counts(modules),
        dry.device_alias if dry else {}, rewrites or {},
    )  # fmt: skip
    restore = _Restore(model, buffers=not dry_run)
    output: Any = None
    error: Exception | None = None
    model_inputs: tuple[TensorInfo, ...] = ()
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.set_grad_enabled(grad))
            stack.enter_context(_eager())
            forward: Callable[..., Any] = model
            if dry is not None:
                forward, args, kwargs = stack.enter_context(dry.prepare(model, args, kwargs))
            recorder.busy = True
            model_inputs = recorder.infos((args, kwargs))
            recorder.busy = False
            for context in (*contexts, *([flops] if flops is not None else [])):
                stack.enter_context(context)
            recorder.counter = flops
            stack.enter_context(hooks(modules, recorder))
            stack.enter_context(FunctionMode(recorder))
            output = forward(*args, **kwargs)
            if call is not None:
                call(output)
    except Exception as exc:
        error = exc
    finally:
        restore()
    if dry is not None and _fake_cannot(error, dry) and flops is None and not contexts:
        return run_trace(model, *realise(given, device), dry_run=False, rewrites=rewrites,
                         extra=extra, call=call, grad=grad)  # fmt: skip
    trace = _finish(model, recorder, model_inputs, output, error, dry_run)
    if dry is not None and dry.target is not None:
        trace.weights_on = dry.device_alias.get(dry.target.type, str(dry.target))
    return trace


def _eager() -> AbstractContextManager[Any]:
    """Compiled submodules run eagerly while traced: hooks and fake tensors see every layer,
    and nothing is compiled just to be explained (``set_stance`` exists from torch 2.6).

    Without torch._dynamo imported nothing can be compiled, and entering the stance would
    import it (about 75 MiB and a slow first call), so then there is nothing to do.
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None or "torch._dynamo" not in sys.modules:
        return nullcontext()
    stance: AbstractContextManager[Any] = set_stance("force_eager")
    return stance


def _fake_cannot(error: Exception | None, dry: DryRun) -> bool:
    """Fake tensors cannot run data-dependent ops (``.item()``, mask checks, CTC); a real run
    can, unless the device is only simulated or the weights live on meta."""
    simulated = bool(dry.device_alias) or (dry.target is not None and dry.target.type == "meta")
    return isinstance(error, FAKE_LIMITS) and not simulated


def _finish(
    model: nn.Module,
    recorder: Recorder,
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
