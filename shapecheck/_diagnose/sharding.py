"""Rules for tensor-parallel models, read from local shapes, global shapes and placements.

``tp-divisible``: a reshape splits a sharded dim into groups (heads) that the TP degree does not
divide; ``tp-global-size``: a reshape asks for a global size (``self.n_heads``) on a local
shard; ``tp-uneven-shard``: the sharded dim does not divide, and the last rank's shorter shard
breaks a reshape written for the others; ``tp-colwise-colwise``: a ColwiseParallel layer fed
by another ColwiseParallel layer's shard (the plan is missing a RowwiseParallel).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from torch import nn

from .._changes import Build, CallRewrite, Fix, Parallelize, ReplaceModule, RewriteCall, Together
from .._records import Evidence, Layer, TensorInfo
from .._sharding import dtensor_type, shard_sizes
from .._source import code_line
from .._text import shape, short
from ._context import Context, Finding
from ._registry import failure_rule, layer_rule
from ._words import headline, pytorch, where
from .reshape import requested_shape

__all__ = [
    "Split",
    "shard_text",
    "sharded_origin",
    "tp_colwise_colwise",
    "tp_divisible",
    "tp_global_size",
    "tp_uneven_shard",
]

_RESHAPES = frozenset({"view", "reshape"})
_SHARD = re.compile(r"S\((-?\d+)\)$")
#: calls whose output is their first input, element by element: a shard stays the same shard
_ELEMENTWISE = frozenset({
    "gelu", "relu", "silu", "tanh", "sigmoid", "dropout", "mul", "add", "sub", "div", "softmax",
    "contiguous", "float", "to", "type_as",
})  # fmt: skip


def _ranks(sizes: list[int], size: int) -> str:
    """``ranks 0-2`` / ``rank 3``: the ranks whose shard has ``size``."""
    held = [r for r, s in enumerate(sizes) if s == size]
    if len(held) == 1:
        return f"rank {held[0]}"
    run = held == list(range(held[0], held[-1] + 1))
    return f"ranks {held[0]}-{held[-1]}" if run else "ranks " + ", ".join(map(str, held))


def sharded_origin(ctx: Context, info: TensorInfo) -> tuple[TensorInfo, Layer | None] | None:
    """``info`` with its global shape and placements, from the row that made it (through a
    few elementwise calls), and that row; None when no sharded tensor stands behind it."""
    maker: Layer | None = None
    for _ in range(4):
        if info.placements is not None:
            return info, maker
        maker = ctx.producer(info)
        if maker is None:
            return None
        made = next((t for t in maker.outputs if t.key == info.key), None)
        if made is not None and made.placements is not None:
            return made, maker
        elementwise = maker.kind == "function" and maker.type in _ELEMENTWISE
        if not elementwise or not maker.inputs or maker.inputs[0].shape != info.shape:
            return None
        info = maker.inputs[0]
    return None


def _shard_dim(info: TensorInfo) -> tuple[int, int] | None:
    """(tensor dim, shards) of the one mesh dim that shards ``info``; None otherwise."""
    if info.placements is None or info.mesh_shape is None:
        return None
    found = [(i, _SHARD.match(p)) for i, p in enumerate(info.placements)]
    shards = [(int(m.group(1)) % len(info.shape), info.mesh_shape[i]) for i, m in found if m]
    return shards[0] if len(shards) == 1 else None


@dataclass(frozen=True)
class Split:
    """A failing reshape of a sharded tensor: what it asked for, what this rank holds."""

    call: Layer
    maker: Layer | None
    local: tuple[int, ...]
    origin: TensorInfo  # the same tensor, with its global shape and placements
    whole: int  # global size of the sharded dim
    held: int  # this rank's size of it
    dim: int
    ways: int
    sizes: tuple[int, ...]

    def fits(self, size: int) -> bool:
        """Whether the reshape works when the sharded dim has ``size``."""
        numel = math.prod(s for d, s in enumerate(self.local) if d != self.dim) * size
        known = math.prod(s for s in self.sizes if s != -1)
        if -1 in self.sizes:
            return known > 0 and numel % known == 0
        return known == numel

    @property
    def first(self) -> int | None:
        """Index of the size that starts the split of the sharded dim (the head count)."""
        before = math.prod(self.local[: self.dim])
        for j in range(len(self.sizes)):
            product = math.prod(self.sizes[:j])
            if product == before and -1 not in self.sizes[:j]:
                return j
            if product > before:
                return None
        return None

    @property
    def inner(self) -> int | None:
        """The size of one group after the first factor (the head size), when known."""
        j = self.first
        rest = self.sizes[j + 1 :] if j is not None else ()
        return math.prod(rest) if rest and -1 not in rest else None


def _split(ctx: Context) -> Split | None:
    layer = ctx.failed_layer()
    if layer is None or layer.kind != "function" or layer.type not in _RESHAPES:
        return None
    sizes = requested_shape(layer, ctx.failure.message) if ctx.failure is not None else None
    origin = sharded_origin(ctx, layer.inputs[0]) if layer.inputs and sizes else None
    if origin is None or sizes is None:
        return None
    info, maker = origin
    sharded = _shard_dim(info)
    if sharded is None or info.global_shape is None or info.shape != layer.inputs[0].shape:
        return None
    dim, ways = sharded
    local = layer.inputs[0].shape
    return Split(layer, maker, local, info, info.global_shape[dim], local[dim], dim, ways, sizes)


def shard_text(local: TensorInfo | tuple[int, ...], origin: TensorInfo) -> str:
    """``(2, 8, 16)   this rank's shard of (2, 8, 64) S(2) over 4 ranks``."""
    ways = _shard_dim(origin)
    over = f" over {ways[1]} ranks" if ways else ""
    held = local.shape if isinstance(local, TensorInfo) else local
    whole = shape(origin.global_shape or ())
    return f"{shape(held)}   this rank's shard of {whole} {','.join(origin.placements or ())}{over}"


def _evidence(ctx: Context, split: Split) -> tuple[Evidence, ...]:
    assert ctx.failure is not None
    maker = split.maker
    found: list[Evidence] = [("got", shard_text(split.local, split.origin))]
    if maker is not None and maker.path:
        found.append(("from", where(maker)))
    found.append(("asked", f"{split.call.type}({split.call.arguments})"))
    line = code_line(split.call.source)
    if line:
        found.append(("at", f"{short(split.call.source)}   {line}"))
    return (*found, pytorch(ctx.failure))


def _head(ctx: Context, split: Split, what: str) -> str:
    owner = ctx.layers[split.call.parent] if split.call.parent is not None else None
    inside = ""
    if owner is not None:
        inside = f" in '{owner.path}' ({owner.type})" if owner.path else f" in {owner.type}.forward"
    return f"call '{split.call.type}({split.call.arguments})'{inside} {what}"


@failure_rule("tp-divisible")
def tp_divisible(ctx: Context) -> list[Finding]:
    """A reshape into groups (heads) of a dim sharded over more ranks than it has groups for."""
    split = _split(ctx)
    inner = split.inner if split is not None else None
    if split is None or not inner or split.whole % inner:
        return []
    groups, ways = split.whole // inner, split.ways
    if groups % ways == 0:
        return []
    per_rank = split.whole / ways
    cause = (
        f"{groups} groups (heads) of {inner} do not divide over {ways} ranks: a rank holds "
        f"{_num(per_rank)} of the {split.whole} values, {_num(per_rank / inner)} heads, "
        "and a head cannot be split"
    )
    arithmetic = (
        f"  {split.whole} / {ways} = {_num(per_rank)};  {_num(per_rank)} / {inner} = "
        f"{_num(per_rank / inner)} heads per rank",
    )
    divisors = [d for d in range(2, groups + 1) if groups % d == 0]
    multiple = -(-groups // ways) * ways
    suggestion = Fix(
        summary=(
            f"use a TP degree that divides {groups} heads ({_words(divisors)}), or "
            f"{multiple} heads: a multiple of {ways}"
        ),
        code=f"tp_mesh = init_device_mesh('cpu', ({divisors[0] if divisors else 1},))"
        f"   # or n_heads={multiple}",
    )
    path = _failed_path(ctx)
    head = _head(ctx, split, f"cannot split {groups} heads over {ways} ranks")
    findings = [Finding(path, head, _evidence(ctx, split), cause, suggestion, arithmetic, 1.1)]
    replicated = _replicated(ctx, split)
    if replicated is not None:
        findings.append(
            Finding(path, head, _evidence(ctx, split), cause, replicated, arithmetic, 1.2)
        )
    return findings


def _replicated(ctx: Context, split: Split) -> Fix | None:
    """Every sharded Linear beside the one that made the shard, replaced by a plain one:
    the attention left out of the TP plan (each rank computes all heads)."""
    maker = split.maker
    if maker is None or maker.kind != "module" or not maker.path:
        return None
    parent_path = maker.path.rpartition(".")[0]
    parent = ctx.model.get_submodule(parent_path)
    dtensor = dtensor_type()
    sharded = [
        (f"{parent_path}.{name}" if parent_path else name, child)
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear) and dtensor is not None
        and isinstance(child.weight, dtensor)
    ]  # fmt: skip
    if not sharded:
        return None
    parts = tuple(
        ReplaceModule(summary=f"replicate '{path}'", code="", path=path, build=_linear(child))
        for path, child in sharded
    )
    names = ", ".join(f"'{path}'" for path, _ in sharded)
    return Together(
        summary=f"leave {names} out of the TP plan (replicated: every rank computes all heads)",
        code=f"parallelize_module(model, tp_mesh, plan)   # plan without {names}",
        parts=parts,
    )


def _linear(module: nn.Linear, out_features: int | None = None) -> Build:
    out = module.out_features if out_features is None else out_features
    return Build("Linear", (module.in_features, out), (("bias", module.bias is not None),))


@failure_rule("tp-global-size")
def tp_global_size(ctx: Context) -> list[Finding]:
    """A reshape that asks for the global size of a sharded dim (``self.n_heads``)."""
    split = _split(ctx)
    if split is None or -1 in split.sizes or not split.fits(split.whole) or split.fits(split.held):
        return []
    j, ways = split.first, split.ways
    if j is None or split.sizes[j] % ways or split.whole % ways:
        return []
    given = split.sizes[j]
    local = list(split.sizes)
    local[j] = given // ways
    inner = math.prod(split.sizes[j + 1 :])
    cause = (
        f"{_times(split.sizes[j:])} = {split.whole} is dim {split.dim}'s global size; this "
        f"rank holds {split.whole} / {ways} = {split.held} of it: {given} / {ways} = "
        f"{given // ways} head{'s' if given // ways != 1 else ''} of {inner}"
    )
    written = [str(s) for s in split.sizes]
    written[j] = "n_heads // tp"
    fix = RewriteCall(
        summary=f"use the local count, {given} // {ways} = {given // ways} on each rank, in "
        f"every {split.call.type} that splits this shard: "
        f"{split.call.type}({', '.join(map(str, local))})",
        code=f"{split.call.type}({', '.join(written)})   # tp = {ways}: {given // ways} on "
        "each rank",
        source="*",  # the same size is used wherever the shard is split (q, k and v)
        name=split.call.type,
        rewrite=CallRewrite.SIZES,
        asked=split.sizes,
        sizes=tuple(local),
    )
    head = _head(ctx, split, "uses a global size on this rank's shard")
    return [Finding(_failed_path(ctx), head, _evidence(ctx, split), cause, fix, (), 1.2)]


@failure_rule("tp-uneven-shard")
def tp_uneven_shard(ctx: Context) -> list[Finding]:
    """A dim that does not divide over the ranks: the last shard is shorter, and a reshape
    written for the full shards breaks on it."""
    split = _split(ctx)
    if split is None or split.whole % split.ways == 0:
        return []
    sizes = shard_sizes(split.whole, split.ways)
    fitting = [n for n in dict.fromkeys(sizes) if n != split.held and split.fits(n)]
    if not fitting:
        return []
    chunk, wanted = sizes[0], fitting[0]
    cause = (
        f"{split.whole} does not divide over {split.ways} ranks: {_ranks(sizes, chunk)} hold "
        f"{chunk}, {_ranks(sizes, split.held)} {split.held}; the reshape only fits {wanted}"
    )
    arithmetic = (
        f"  ceil({split.whole} / {split.ways}) = {chunk};  {split.whole} - "
        f"{split.whole // chunk} * {chunk} = {split.whole - split.whole // chunk * chunk}",
    )
    fix = _padded(ctx, split, chunk) if wanted == chunk else None
    fix = fix or Fix(
        summary=f"pad dim {split.dim} to a multiple of {split.ways}, or reshape with -1 there",
        code=f"{split.call.type}(..., -1)   # the shard's own size, not {wanted}",
    )
    head = _head(ctx, split, f"breaks on {_ranks(sizes, split.held)}'s shorter shard")
    return [Finding(_failed_path(ctx), head, _evidence(ctx, split), cause, fix, arithmetic,
                    1.2)]  # fmt: skip


def _padded(ctx: Context, split: Split, chunk: int) -> Fix | None:
    """The ColwiseParallel Linear that made the shard, with its outputs padded to a multiple
    of the ranks (every rank then holds ``chunk``)."""
    maker = split.maker
    module = ctx.module(maker) if maker is not None else None
    if maker is None or not isinstance(module, nn.Linear) or split.dim != len(split.local) - 1:
        return None
    if ("weight", ("S(0)",)) not in maker.param_placements:
        return None
    padded = chunk * split.ways
    extra = padded - split.whole
    bias = "" if module.bias is not None else ", bias=False"
    code = f"nn.Linear({module.in_features}, {padded}{bias})"
    return Parallelize(
        summary=f"pad '{maker.path}' to {padded} = {split.ways} * {chunk} outputs (ignore the "
        f"{extra} extra), ColwiseParallel as before: {code}",
        code=f"self.{maker.path.rpartition('.')[2]} = {code}   # {split.whole} padded to a "
        f"multiple of tp={split.ways}",
        path=maker.path,
        build=_linear(module, padded),
        style="ColwiseParallel",
    )


@layer_rule("tp-colwise-colwise", nn.Linear)
def tp_colwise_colwise(ctx: Context, layer: Layer, module: nn.Linear) -> list[Finding]:
    """A ColwiseParallel Linear fed by another ColwiseParallel layer's shard."""
    if ("weight", ("S(0)",)) not in layer.param_placements:
        return []
    origin = sharded_origin(ctx, _raw(ctx, layer))
    if origin is None:
        return []
    info, maker = origin
    sharded = _shard_dim(info)
    if sharded is None or info.global_shape is None or sharded[0] != len(info.shape) - 1:
        return []
    ways, features = sharded[1], info.global_shape[-1]
    if features != module.in_features or layer.inputs[0].shape[-1] == features:
        return []
    source = where(maker) if maker is not None else "its input"
    cause = (
        f"{source} is ColwiseParallel: each rank holds {features} / {ways} = "
        f"{info.shape[-1]} of its {features} outputs; '{layer.path}' is ColwiseParallel too, "
        f"so it takes that shard as a whole input of {info.shape[-1]} features, not "
        f"in_features={features}. A Colwise layer must be followed by a Rowwise one"
    )
    fix = Parallelize(
        summary=f"make '{layer.path}' RowwiseParallel(): it takes the shard, multiplies it by "
        "its own rows of the weight and all-reduces the sums",
        code=f'parallelize_module(model, tp_mesh, {{..., "{layer.path}": RowwiseParallel()}})',
        path=layer.path,
        build=_linear(module),
        style="RowwiseParallel",
    )
    assert ctx.failure is not None
    evidence: list[Evidence] = [("got", shard_text(layer.inputs[0], info))]
    if maker is not None:
        evidence.append(("from", where(maker)))
    evidence += [
        ("expected", f"(*, {module.in_features})   whole, as ColwiseParallel takes its input"),
        pytorch(ctx.failure),
    ]
    head = headline(layer, "is ColwiseParallel after a ColwiseParallel layer")
    return [Finding(layer.path, head, tuple(evidence), cause, fix, score=1.2)]


def _raw(ctx: Context, layer: Layer) -> TensorInfo:
    """The layer's input as it was made (a ColwiseParallel input hook re-labels it ``R``)."""
    info = layer.inputs[0]
    return info if info.placements is None else TensorInfo(
        info.shape, info.dtype, info.device, key=info.key, made_by=info.made_by)  # fmt: skip


def _failed_path(ctx: Context) -> str:
    return ctx.failure.path if ctx.failure is not None else ""


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _times(sizes: tuple[int, ...]) -> str:
    return "*".join(map(str, sizes))


def _words(numbers: list[int]) -> str:
    text = [str(n) for n in numbers] or ["1"]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " or " + text[-1]
