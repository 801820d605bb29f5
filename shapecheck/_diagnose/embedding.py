"""``embedding-index``: ids at or beyond ``num_embeddings`` (vocabulary or max length too small)."""

from __future__ import annotations

from torch import nn

from .._changes import Build, Fix, ReplaceModule
from .._records import Layer
from ._context import Context, Finding
from ._registry import layer_rule
from ._words import got, headline, pytorch

__all__ = ["embedding_index"]


@layer_rule("embedding-index", nn.Embedding)
def embedding_index(ctx: Context, layer: Layer, module: nn.Embedding) -> list[Finding]:
    """An Embedding looked up an id outside ``0 .. num_embeddings-1``.

    The ids come from the trace: on a real run the failing call's id range is recorded
    (``Failure.value_range``); fake tensors hold no values.
    """
    failure = ctx.failure
    assert failure is not None
    if layer.inputs[0].dtype not in ("int64", "int32"):
        return []
    ids = failure.value_range
    n = module.num_embeddings
    if ids is not None and ids[0] >= 0 and ids[1] < n:
        return []
    if ids is None and not isinstance(failure.exception, IndexError):
        return []
    label, text = got(ctx, layer)
    evidence = (
        (label, text + (f"   ids {ids[0]} .. {ids[1]}" if ids else "")),
        ("expected", f"ids in 0 .. {n - 1}   num_embeddings={n}"),
        pytorch(failure),
    )
    top = ids[1] if ids is not None else None
    head = headline(layer, "got an id outside its table")
    if top is None or top < n:
        cause = f"an id ≥ num_embeddings={n} (or < 0) was looked up"
        fix = Fix(
            summary="keep every id below num_embeddings",
            code="assert ids.max() < embedding.num_embeddings",
        )
        return [Finding(layer.path, head, evidence, cause, fix, score=0.9)]
    cause = (
        f"id {top} ≥ num_embeddings={n}: the vocabulary (or the maximum length) the table "
        "was built for is smaller than the ids it is given"
    )
    size = top + 1
    fix = ReplaceModule(
        summary=f"make the table hold ids up to {top} (or map ids into 0 .. {n - 1})",
        code=f"nn.Embedding({size}, {module.embedding_dim})",
        path=layer.path,
        build=Build(
            "Embedding", (size, module.embedding_dim), (("padding_idx", module.padding_idx),)
        ),
    )
    return [Finding(layer.path, head, evidence, cause, fix)]
