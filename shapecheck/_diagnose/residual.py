"""``residual-mismatch``: an add (or mul) of a branch and a shortcut that no longer match.

The branch changed the channels (a conv to more of them) or the size (a stride), and the
shortcut carries the block's input unchanged: it lacks the projection (``downsample``) that
makes the same change. Which operand is which, and which layer changed what, comes from the
provenance the tracer recorded, never from equal shapes.
"""

from __future__ import annotations

from collections.abc import Iterator

from .._changes import Build, Fix, ProjectOperand, ReplaceModule
from .._records import Layer, TensorInfo
from .._shapes import projection
from .._text import shape
from ._context import Context, Finding
from ._registry import failure_rule
from ._words import caller, made_by, pytorch

__all__ = ["residual_mismatch"]

_ELEMENTWISE = frozenset(
    {
        "add",
        "__add__",
        "__radd__",
        "__iadd__",
        "sub",
        "__sub__",
        "__rsub__",
        "__isub__",
        "mul",
        "__mul__",
        "__rmul__",
        "__imul__",
    }
)
_SIGN = {"add": "+", "sub": "-", "mul": "*"}


def _differing(a: tuple[int, ...], b: tuple[int, ...]) -> list[int]:
    """Dims where neither size is 1 and the sizes differ (what broadcasting cannot fix)."""
    if len(a) != len(b):
        return []
    return [d for d in range(len(a)) if a[d] != b[d] and 1 not in (a[d], b[d])]


def _block_input(ctx: Context, layer: Layer) -> TensorInfo | None:
    owner = ctx.layers[layer.parent] if layer.parent is not None else None
    return owner.inputs[0] if owner is not None and owner.inputs else None


def _pass_through(ctx: Context, layer: Layer, info: TensorInfo) -> Layer | None:
    """A child module of the block that returned ``info`` as it was given it (an empty
    ``nn.Sequential`` or ``nn.Identity`` shortcut): the place for the projection."""
    for row in ctx.layers[: layer.index]:
        if (
            row.kind == "module"
            and row.parent == layer.parent
            and row.inputs
            and row.outputs
            and row.inputs[0].key == info.key == row.outputs[0].key
        ):
            return row
    return None


def _shape_changes(
    ctx: Context, start: TensorInfo, stop: int | None, dims: list[int]
) -> Iterator[str]:
    """The module calls on the way back from ``start`` to the tensor keyed ``stop`` that
    changed one of ``dims``, latest first: ``'conv1' (Conv2d(64→128, ...)): dim 1 64→128``."""
    info: TensorInfo | None = start
    for _ in range(64):  # a branch is a few layers; bounded whatever the graph
        row = ctx.producer(info) if info is not None else None
        if info is None or info.key == stop or row is None or not row.inputs:
            return
        before, after = row.inputs[0].shape, info.shape
        moved = [
            f"dim {d} {before[d]}→{after[d]}"
            for d in dims
            if len(before) == len(after) and before[d] != after[d]
        ]
        if moved and row.kind == "module":
            yield f"  '{row.path}' ({row.summary}) makes {', '.join(moved)}"
        info = row.inputs[0]


def _code(spec: Build) -> str:
    """The projection as code to write."""
    if spec.cls == "Linear":
        return f"nn.Linear({spec.args[0]}, {spec.args[1]})"
    conv, norm = spec.args
    stride = dict(conv.kwargs)["stride"]
    stride_code = f", stride={stride}" if stride > 1 else ""
    return (
        f"nn.Sequential(nn.Conv2d({conv.args[0]}, {conv.args[1]}, kernel_size=1{stride_code}, "
        f"bias=False), nn.BatchNorm2d({norm.args[0]}))"
    )


def _fix(
    ctx: Context, layer: Layer, branch: TensorInfo, shortcut: TensorInfo, position: int
) -> Fix:
    build = projection(branch.shape, shortcut.shape)
    if build is None:
        return Fix(
            summary="resize the shortcut to the branch's size before joining them",
            code="identity = F.interpolate(identity, size=out.shape[2:])",
        )
    code = _code(build)
    module = _pass_through(ctx, layer, shortcut)
    if module is not None:
        return ReplaceModule(
            summary=f"give the shortcut '{module.path}' a projection",
            code=f"self.{module.path.rpartition('.')[2]} = {code}",
            path=module.path,
            build=build,
        )
    summary = "give the shortcut a projection (a downsample), as the branch changes the shape"
    code = f"self.downsample = {code}   # then: identity = self.downsample(x)"
    if layer.source is None:
        return Fix(summary=summary, code=code)  # no line of code to find it by: not tried
    return ProjectOperand(
        summary=summary, code=code, source=layer.source, name=layer.type, operand=position
    )


@failure_rule("residual-mismatch")
def residual_mismatch(ctx: Context) -> list[Finding]:
    """``out + identity`` (or ``*``, ``-``) of tensors whose sizes differ where broadcasting
    cannot help; the operand that is the block's own input (or a module that passed it on
    unchanged) is the shortcut."""
    layer, failure = ctx.failed_layer(), ctx.failure
    if (
        layer is None
        or failure is None
        or layer.kind != "function"
        or layer.type not in _ELEMENTWISE
    ):
        return []
    tensors = [t for t in layer.inputs[:2] if t.shape]
    if len(tensors) != 2 or not _differing(tensors[0].shape, tensors[1].shape):
        return []
    source = _block_input(ctx, layer)
    keys = [t.key for t in tensors]
    through = [_pass_through(ctx, layer, t) for t in tensors]
    position = next(
        (
            i
            for i in (1, 0)
            if source is not None and (keys[i] == source.key or through[i] is not None)
        ),
        1,
    )
    shortcut, branch = tensors[position], tensors[1 - position]
    dims = _differing(branch.shape, shortcut.shape)
    owner = ctx.layers[layer.parent] if layer.parent is not None else None
    sign = _SIGN.get(layer.type.strip("_").removeprefix("r").removeprefix("i"), layer.type)
    where = caller(ctx, layer)
    origin = made_by(ctx, layer, 1 - position)
    evidence = (
        ("branch", f"{shape(branch.shape)}   {origin}".rstrip()),
        (
            "shortcut",
            f"{shape(shortcut.shape)}   "
            + (
                "the block's input, unchanged"
                if source is not None and shortcut.key == source.key
                else made_by(ctx, layer, position)
            ),
        ),
        pytorch(failure),
    )
    sizes = ", ".join(f"dim {d} {branch.shape[d]} vs {shortcut.shape[d]}" for d in dims)
    cause = f"the branch changed the shape and the shortcut did not: {sizes}"
    arithmetic = tuple(
        _shape_changes(ctx, branch, source.key if source is not None else None, dims)
    )
    head = f"'{sign}' in {where} joins a branch and a shortcut of different shapes"
    fix = _fix(ctx, layer, branch, shortcut, position)
    return [Finding(owner.path if owner else "", head, evidence, cause, fix, arithmetic)]
