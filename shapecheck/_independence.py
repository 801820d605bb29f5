"""Per-sample independence: sample i's output must not move when only the other samples change.

Catches ``x.view(-1, N)`` and other reshapes that mix the batch; the message names the first
layer whose kept sample moved. Used by ``testing.assert_batch_polymorphic``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._inputs import tensors_in
from ._report import Report
from ._spec import Spec, symbol_dims
from ._text import shape

__all__ = ["check_independence", "random_like"]


def random_like(
    dims: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator
) -> torch.Tensor:
    """Example data for a batch check: normal noise, or 0s and 1s for integer inputs."""
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(dims, generator=generator).to(dtype)
    return torch.randint(0, 2, dims, generator=generator).to(dtype)  # valid for any Embedding


def check_independence(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    specs: tuple[list[Spec], list[Spec]],
    batch: str,
    report: Report,
    size: int,
) -> None:
    """Keep the last sample, redraw all others: the last sample's outputs must not move.

    ``specs`` are the input and output specs; ``batch`` is the symbol that marks the batch dim.
    """
    __tracebackhide__ = True
    keep = size - 1
    in_dims = _batch_dims(specs[0], [tuple(a.shape) for a in args], batch)
    other = _redraw_others(args, in_dims, keep, size)
    first, events_a = _run_recording(model, args, keep, size)
    second, events_b = _run_recording(model, other, keep, size)
    outs_a, outs_b = tensors_in(first), tensors_in(second)
    out_dims = _batch_dims(specs[1], [tuple(t.shape) for t in outs_a], batch)
    moved = [
        line
        for i, (a, b, d) in enumerate(zip(outs_a, outs_b, out_dims, strict=True))
        if d is not None and (line := _moved(i, a, b, d, keep))
    ]
    if moved:
        raise AssertionError(_mixing_message(size, keep, moved, events_a, events_b, report))


def _batch_dims(
    specs: list[Spec], shapes: Sequence[tuple[int, ...]], batch: str
) -> list[int | None]:
    """Where the batch symbol sits in each tensor (None where it does not appear)."""
    found = [symbol_dims(s, len(d), batch) for s, d in zip(specs, shapes, strict=True)]
    return [dims[0] if dims else None for dims in found]


def _redraw_others(
    args: tuple[torch.Tensor, ...], dims: list[int | None], keep: int, size: int
) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(10_000 + size)
    changed = []
    for arg, dim in zip(args, dims, strict=True):
        fresh = random_like(tuple(arg.shape), arg.dtype, generator)
        if dim is not None:
            fresh.select(dim, keep).copy_(arg.select(dim, keep))
        changed.append(fresh if dim is not None else arg)
    return tuple(changed)


def _moved(index: int, a: torch.Tensor, b: torch.Tensor, dim: int, keep: int) -> str | None:
    if a.shape != b.shape:
        return f"  output {index}  {shape(a.shape)} then {shape(b.shape)}: the shape changed"
    x, y = a.select(dim, keep).detach(), b.select(dim, keep).detach()
    if not (x.is_floating_point() or x.is_complex()):
        same = torch.equal(x, y)
        return None if same else f"  output {index}  {shape(a.shape)}: sample {keep} changed"
    delta = (x - y).abs().max().item() if x.numel() else 0.0
    tolerance = 1e-4 * max(1.0, x.abs().max().item() if x.numel() else 0.0)
    if not math.isfinite(delta) or delta > tolerance:
        return (
            f"  output {index}  {shape(a.shape)}: sample {keep} moved by up to "
            f"{delta:.4g} (tolerance {tolerance:.1g})"
        )
    return None


def _run_recording(
    model: nn.Module, args: tuple[torch.Tensor, ...], keep: int, size: int
) -> tuple[Any, list[tuple[str, torch.Tensor | None]]]:
    """Forward once, keeping sample ``keep`` of each module's first input and output."""
    events: list[tuple[str, torch.Tensor | None]] = []

    def sample(obj: object) -> torch.Tensor | None:
        found = tensors_in(obj)
        if not found or found[0].dim() == 0 or found[0].shape[0] != size:
            return None  # this tensor does not carry the batch in dim 0: nothing to compare
        return found[0][keep].detach().clone()

    handles = []
    for path, module in model.named_modules():
        label = f"layer '{path}' ({type(module).__name__})" if path else "the model"
        handles.append(
            module.register_forward_pre_hook(
                lambda m, a, label=label: events.append((f"the input of {label}", sample(a)))
            )
        )
        handles.append(
            module.register_forward_hook(
                lambda m, a, o, label=label: events.append((f"the output of {label}", sample(o)))
            )
        )
    try:
        with torch.no_grad():
            return model(*args), events
    finally:
        for handle in handles:
            handle.remove()


def _first_change(
    a: list[tuple[str, torch.Tensor | None]], b: list[tuple[str, torch.Tensor | None]]
) -> tuple[str | None, str | None]:
    """The first recorded tensor whose kept sample differs, and the last one that did not."""
    last_same = None
    for (label, x), (_, y) in zip(a, b, strict=False):
        if x is None or y is None or x.shape != y.shape:
            continue
        if x.is_floating_point() and not torch.allclose(x, y, rtol=1e-4, atol=1e-5):
            return label, last_same
        if not x.is_floating_point() and not torch.equal(x, y):
            return label, last_same
        last_same = label
    return None, last_same


def _mixing_message(
    size: int,
    keep: int,
    moved: list[str],
    events_a: list[tuple[str, torch.Tensor | None]],
    events_b: list[tuple[str, torch.Tensor | None]],
    report: Report,
) -> str:
    changed, unchanged = _first_change(events_a, events_b)
    lines = [
        f"at batch size {size}: sample {keep}'s output changed when only the other samples changed",
        *moved,
    ]
    if changed:
        lines.append(f"  first     {changed}")
    if unchanged:
        lines.append(f"  still ok  {unchanged}")
    lines += [
        "cause: the forward mixes samples of the batch, usually a view or reshape that does not",
        "    keep the batch dim first: x.view(-1, N) with N not the per-sample size, or",
        "    x.view(T, B, ...) where x.transpose(0, 1) was meant. The model ran in eval mode, so",
        "    BatchNorm and Dropout are not the cause.",
        "fix: flatten with nn.Flatten() or x.flatten(1), and use transpose/permute to move dims.",
    ]
    return "\n".join([*lines, "", str(report)])
