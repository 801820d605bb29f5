"""``missing-batch-dim``: one sample without its batch dimension where the model needs one."""

from __future__ import annotations

from torch import nn

from .._changes import EditInput, TensorOp
from .._records import Layer
from .._text import shape
from ._context import Context, Finding
from ._registry import failure_rule
from ._words import pytorch, where

__all__ = ["missing_batch_dim"]

# Layers that accept an unbatched sample: the sample runs through them, the batch-less shape
# then breaks something later (Flatten(1) folds the channels into rows, say).
_UNBATCHED_OK = (
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
_BATCH_ONLY: dict[type[nn.Module], int] = {nn.BatchNorm1d: 2, nn.BatchNorm2d: 4, nn.BatchNorm3d: 5}


def _spatial(module: nn.Module) -> int:
    """Spatial dims of a conv/pool layer (2 for Conv2d/MaxPool2d)."""
    name = type(module).__name__
    return next((n for n in (1, 2, 3) if f"{n}d" in name), -1)


def _unbatched_row(ctx: Context) -> tuple[Layer, int] | None:
    """The first call that took a model input as one sample, and that input's position."""
    for layer in ctx.layers:
        module = ctx.module(layer)
        if layer.kind != "module" or not layer.inputs or module is None:
            continue
        ndim = len(layer.inputs[0].shape)
        unbatched = (isinstance(module, _UNBATCHED_OK) and ndim == _spatial(module) + 1) or (
            type(module) in _BATCH_ONLY
            and layer.failed
            and ndim == _BATCH_ONLY[type(module)] - 1
            and ndim > 1
        )
        position = layer.inputs[0].model_input if unbatched else None
        if position is not None:
            return layer, position
    return None


@failure_rule("missing-batch-dim")
def missing_batch_dim(ctx: Context) -> list[Finding]:
    """A model input reached a layer as one unbatched sample and the forward failed later."""
    failure = ctx.failure
    found = _unbatched_row(ctx)
    if failure is None or found is None:
        return []
    layer, position = found
    x = layer.inputs[0].shape
    at = f"'{failure.path}' ({failure.type})" if ctx.failed_layer() is not None else "the forward"
    evidence = (
        ("got", f"{shape(x)}   at {where(layer)}, read as ONE unbatched sample"),
        ("expected", f"{shape((1, *x))}   (N, {', '.join(map(str, x))}) with a batch dim first"),
        pytorch(failure),
    )
    cause = (
        f"{layer.type} accepts one sample without a batch dim, so its output lost the "
        f"batch too; a later layer then took dim 0 ({x[0]}) for the batch"
    )
    fix = EditInput(
        summary="add the batch dimension to the single sample",
        code="x = x.unsqueeze(0)   # before model(x)",
        position=position,
        ops=(TensorOp("unsqueeze", (0,)),),
    )
    head = f"input {position} {shape(x)} has no batch dimension; {at} then cannot take its input"
    return [Finding(failure.path, head, evidence, cause, fix, score=0.95)]
