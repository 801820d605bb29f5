"""``embedding-index``: ids at or beyond ``num_embeddings`` (vocabulary or max length too small)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._fixes import Fix, ReplaceModule
from .._records import Layer
from .._trace import run_trace
from ._context import Context, Finding
from ._words import got_line, headline, pytorch_line

__all__ = ["embedding_index"]


class _Caught(Exception):
    """Stops a capture run once the embedding's input has been seen."""


def _indices(ctx: Context, layer: Layer, module: nn.Module) -> torch.Tensor | None:
    """The real ids the embedding got: one more real forward, stopped at that layer."""
    if ctx.trace.dry_run:
        return None  # fake tensors hold no values
    seen: list[torch.Tensor] = []

    def grab(_: nn.Module, args: tuple[Any, ...]) -> None:
        if (
            args
            and isinstance(args[0], torch.Tensor)
            and tuple(args[0].shape) == layer.inputs[0].shape
        ):
            seen.append(args[0].detach().clone())
            raise _Caught

    handle = module.register_forward_pre_hook(grab)
    try:
        run_trace(ctx.model, ctx.args, ctx.kwargs, dry_run=False)  # restores state; never raises
    finally:
        handle.remove()
    return seen[0] if seen else None


def embedding_index(ctx: Context) -> list[Finding]:
    """An Embedding looked up an id outside ``0 .. num_embeddings-1``."""
    layer, failure = ctx.failed_layer(), ctx.failure
    module = ctx.module(layer) if layer is not None else None
    if layer is None or failure is None or not isinstance(module, nn.Embedding):
        return []
    if not layer.inputs or layer.inputs[0].dtype not in ("int64", "int32"):
        return []
    ids = _indices(ctx, layer, module)
    n = module.num_embeddings
    if ids is not None and int(ids.min()) >= 0 and int(ids.max()) < n:
        return []
    if ids is None and not isinstance(failure.exception, IndexError):
        return []
    top = int(ids.max()) if ids is not None else None
    body = "\n".join(
        [
            headline(layer, "got an id outside its table"),
            got_line(layer, ctx.producer(layer))
            + (f"   ids {int(ids.min())} .. {top}" if ids is not None else ""),
            f"  expected  ids in 0 .. {n - 1}   num_embeddings={n}",
            pytorch_line(failure),
            f"cause: id {top} ≥ num_embeddings={n}: the vocabulary (or the maximum length) "
            "the table "
            "was built for is smaller than the ids it is given"
            if top is not None
            else f"cause: an id ≥ num_embeddings={n} (or < 0) was looked up",
        ]
    )
    if top is None or top < n:
        return [
            Finding(
                "embedding-index",
                layer.path,
                body,
                Fix(
                    summary="keep every id below num_embeddings",
                    code="assert ids.max() < embedding.num_embeddings",
                ),
                0.9,
            )
        ]
    size = top + 1
    new = nn.Embedding(size, module.embedding_dim, padding_idx=module.padding_idx)
    fix = ReplaceModule(
        summary=f"make the table hold ids up to {top} (or map ids into 0 .. {n - 1})",
        code=f"nn.Embedding({size}, {module.embedding_dim})",
        path=layer.path,
        make=lambda: new,
    )
    return [Finding("embedding-index", layer.path, body, fix, 1.0)]
