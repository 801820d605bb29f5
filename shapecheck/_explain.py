"""``explain``: validate the arguments, trace once, diagnose, and build the Report."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._advise import warn
from ._arguments import check_arguments
from ._dry import available, is_meta_model
from ._errors import UsageError
from ._inputs import make_inputs, parse_device, require_module, unwrapped
from ._lazy import copy_model
from ._loss import loss_hooks, loss_module
from ._memory import check_optimizer, training_memory
from ._params import param_totals, tied_params
from ._paths import ModelWalk
from ._records import Diagnosis
from ._report import Report
from ._sharding import world_of
from ._trace import Trace, gc_paused, run_trace

__all__ = ["explain"]


# The global RNG is put back as found: fixes build new modules (nn.Linear draws its init)
@torch.random.fork_rng(devices=[])
@gc_paused()  # diagnoses and warnings walk the model too; see gc_paused
def explain(
    model: nn.Module,
    *inputs: Any,
    input_size: Any = None,
    dtypes: Any = None,
    device: str | torch.device | None = None,
    depth: int | None = None,
    fold: bool = True,
    dry_run: bool = False,
    loss_fn: Any = None,
    target: Any = None,
    flops: bool = False,
    optimizer: str | None = None,
    **forward_kwargs: Any,
) -> Report:
    """Run one forward pass of ``model`` and report every layer's shapes, and why it failed.

    Never raises for errors in the model: a failing forward gives a Report with the partial
    table, the failure and verified fixes. The model is left exactly as it was.

    Args:
        model: any ``nn.Module``.
        *inputs: example inputs: tensors or nested tuples/lists/dicts of tensors.
        input_size: instead of inputs, one shape or a list of shapes to make inputs from.
        dtypes: dtypes for ``input_size`` (default float32).
        device: where to place the inputs; with ``dry_run`` it may name a device this machine
            lacks (``"cuda"``), which is then simulated.
        depth: fold table rows deeper than this when printing.
        fold: fold repeated blocks into one ``×N`` row when printing, and show the inside of
            each class once (``False``: every call gets a row; ``report.render`` can change it).
        dry_run: run on fake tensors: no activation memory, no compute. Inputs made from
            ``input_size`` hold no memory either, and a ``meta`` input stands for one of its
            shape. Ops that need values (``.item()``) make it run for real on example data.
        loss_fn: a loss module or function ``(output, target)``, traced after the forward under
            the path ``"loss"``; its failures are diagnosed too.
        target: the target passed to ``loss_fn``.
        flops: count forward FLOPs per layer: torch's FlopCounterMode formulas, and
            shapecheck's own for what they miss (CPU attention kernels, fused encoder layers,
            recurrent kernels, grouped matmuls). Ops that do work without a formula are listed
            in ``report.flops_uncounted``, and the total is then shown as a lower bound.
        optimizer: ``"sgd"``, ``"sgd-momentum"``, ``"adam"`` or ``"adamw"``: run with
            autograd on and estimate one training step's memory (``report.training_memory``).
        **forward_kwargs: keyword arguments for the model's forward. A name that forward does
            not take is a UsageError (the closest of explain's own keywords is suggested), so a
            misspelled ``input_sizes=`` never reaches the model.

    Example:
        >>> import torch, shapecheck
        >>> from torch import nn
        >>> seed = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        ...                      nn.Conv2d(16, 8, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        ...                      nn.Linear(512, 32), nn.Tanh(), nn.Linear(32, 2))
        >>> report = shapecheck.explain(seed, torch.randn(1, 3, 32, 32))
        >>> report.ok, report.failure.path, report.diagnoses[0].rule
        (False, '6', 'missing-flatten')
    """
    model = _eager(unwrapped(require_module(model)))
    flags = {"dry_run": dry_run, "flops": flops, "fold": fold}
    check_arguments(model, inputs, forward_kwargs, input_size=input_size, flags=flags,
                    loss_fn=loss_fn, target=target)  # fmt: skip
    loss = loss_module(loss_fn)
    where = parse_device(device)
    _check_depth(depth)
    optimizer = check_optimizer(optimizer)
    walk = _traceable(ModelWalk(model))  # the one walk of the model: the rest read it
    traced = walk.root
    dry_run = dry_run or is_meta_model(walk)
    args, kwargs = _inputs(inputs, forward_kwargs, input_size, dtypes, where, dry_run)
    world = world_of(walk)  # before the forward: FSDP2 gathers the parameters inside it
    trace = run_trace(traced, args, kwargs, dry_run=dry_run, device=where, flops=flops,
                      saved=optimizer is not None, confirm=True, walk=walk,
                      **loss_hooks(loss, target))  # fmt: skip
    diagnoses, reruns = _diagnosed(traced, args, kwargs, target, where, loss, trace)
    totals = param_totals(walk)
    return Report(
        model_type=type(model).__name__, layers=trace.layers, failure=trace.failure,
        diagnoses=diagnoses, warnings=[] if trace.failure else warn(traced, trace),
        inputs=trace.inputs, outputs=trace.outputs,
        total_params=totals.total, trainable_params=totals.trainable,
        param_bytes_by_dtype=totals.bytes_by_dtype, buffer_count=totals.buffer_count,
        buffer_bytes=totals.buffer_bytes, dry_run=trace.dry_run, depth=depth,
        total_flops=None if trace.flops is None else trace.flops.total,
        flops_uncounted=None if trace.flops is None else dict(trace.flops.uncounted),
        training_memory=None if trace.saved is None or optimizer is None
        else training_memory(traced, trace.saved, optimizer),
        fallback=trace.fallback, unconfirmed=trace.unconfirmed, reruns=reruns,
        fold=fold, tied=tied_params(walk),
        rank=None if world is None else world.rank,
        world_size=None if world is None else world.world_size,
        mesh_shape=None if world is None else world.mesh_shape,
        rank_param_bytes=None if world is None else world.param_bytes,
    )  # fmt: skip


def _diagnosed(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    target: Any,
    where: torch.device | None,
    loss: nn.Module | None,
    trace: Trace,
) -> tuple[list[Diagnosis], int]:
    """The diagnoses of a failure, and the re-runs they took; the repair machinery (rules,
    fix interpreter) is loaded only when a forward failed."""
    if trace.failure is None:
        return [], 0
    from ._fixes import View
    from ._repair import Repair, diagnose

    repair = Repair(View(model, args, kwargs, target=target), where, loss)
    return diagnose(repair, trace), repair.runs


def _inputs(
    inputs: tuple[Any, ...],
    forward_kwargs: dict[str, Any],
    input_size: Any,
    dtypes: Any,
    where: torch.device | None,
    dry_run: bool,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword inputs, on ``where`` when this machine has it."""
    if where is not None and not dry_run and not available(where):
        raise UsageError(
            f"device {str(where)!r} is not available on this machine; pass dry_run=True to "
            "explain the shapes on fake tensors without it."
        )
    place = where if where is not None and available(where) else None
    args = make_inputs(inputs, input_size, dtypes, place, shapes_only=dry_run)
    values = make_inputs(tuple(forward_kwargs.values()), None, None, place, arguments=True)
    return args, dict(zip(forward_kwargs, values, strict=True))


def _eager(model: nn.Module) -> nn.Module:
    """``model`` itself: an eager module. TorchScript runs without Python hooks, so a scripted
    or traced model cannot be explained; its eager original can."""
    if isinstance(model, torch.jit.ScriptModule):
        raise UsageError(
            f"this {type(model).__name__} is a TorchScript module (torch.jit.script or "
            "torch.jit.trace), which runs without the Python hooks explain() needs; pass the "
            "nn.Module it was made from."
        )
    return model


def _check_depth(depth: object) -> None:
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 0):
        raise UsageError(f"depth must be None or an int >= 0, got {depth!r}.")


def _traceable(walk: ModelWalk) -> ModelWalk:
    """The model's walk, or a copy's when lazy modules would otherwise materialise in place."""
    lazy = any(
        isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params()
        for m in walk.modules()
    )
    return ModelWalk(copy_model(walk.root)) if lazy else walk
