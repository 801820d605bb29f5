"""``input-size``: a model built for one image size (``img_size``, ``image_size``) given
another, which its own check rejects (a ViT's patch embedding, torchvision's ``_process_input``).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from .._changes import EditInput, TensorOp
from .._records import TensorInfo
from .._text import shape
from ._context import Context, Finding
from ._entry import ancestors
from ._registry import failure_rule
from ._words import pytorch

__all__ = ["input_size"]

#: Attributes in which vision models keep the image size they were built for.
_SIZE_ATTRIBUTES = ("img_size", "image_size", "input_resolution", "input_size", "resolution")


def _size(value: object) -> tuple[int, int] | None:
    """(H, W) from an int or a pair of ints; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and v > 0 for v in value):  # fmt: skip
        return int(value[0]), int(value[1])
    return None


def _places(ctx: Context) -> Iterator[tuple[str, nn.Module]]:
    """The failing module, the modules around it, then the model itself, with their paths."""
    layer = ctx.failed_layer()
    rows = [layer, *ancestors(ctx, layer)] if layer is not None else []
    for row in rows:
        module = ctx.module(row)
        if module is not None:
            yield row.path, module
    yield "", ctx.model


def _built_for(ctx: Context) -> tuple[str, str, tuple[int, int]] | None:
    """(path, attribute, (H, W)) of the first image size a module says it was built for."""
    for path, module in _places(ctx):
        for name in _SIZE_ATTRIBUTES:
            size = _size(getattr(module, name, None))
            if size is not None:
                return path, name, size
    return None


def _image(ctx: Context) -> TensorInfo | None:
    return next((t for t in ctx.inputs if t.model_input is not None and len(t.shape) == 4
                 and t.dtype.startswith(("float", "bfloat"))), None)  # fmt: skip


@failure_rule("input-size")
def input_size(ctx: Context) -> list[Finding]:
    """The model failed, its input image has another size than the one a module of it was
    built for: name the attribute, and resize to that size."""
    failure, image = ctx.failure, _image(ctx)
    found = _built_for(ctx) if failure is not None and image is not None else None
    if failure is None or image is None or found is None:
        return []
    path, name, (h, w) = found
    got = image.shape[-2:]
    if got == (h, w):
        return []
    owner = f"'{path}'" if path else "the model"
    attr = f"{path + '.' if path else ''}{name}"
    evidence = (("got", f"{shape(image.shape)}   {got[0]}x{got[1]} images"),
                ("expected", f"{shape((image.shape[0], image.shape[1], h, w))}   {attr} = "
                             f"{getattr(ctx.model.get_submodule(path), name)!r}"),
                pytorch(failure))  # fmt: skip
    cause = (f"{owner} was built for {h}x{w} images ({attr}) and checks its input against "
             f"that size; these are {got[0]}x{got[1]}")  # fmt: skip
    resize = TensorOp("interpolate", (), (("size", (h, w)),))
    fix = EditInput(summary=f"resize the images to {h}x{w}, the size the model was built for",
                    code=f"x = F.interpolate(x, size=({h}, {w}))   # or build the model with "
                         f"{name}={got[0] if got[0] == got[1] else tuple(got)}",
                    position=image.model_input or 0, ops=(resize,))  # fmt: skip
    head = f"input {image.model_input} {shape(image.shape)} is not the image size the model expects"
    return [Finding(failure.path, head, evidence, cause, fix, score=0.9)]
