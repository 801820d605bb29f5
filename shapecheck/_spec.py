"""Shape specs: parse ``"B 3 32 32"`` or ``("B", 3, "H", "W")`` and match them against shapes.

A spec lists one entry per dim: a size (``32``), a symbol (``B``) that must bind to the same
size everywhere it appears, ``_`` for any one dim, and at most one ``*`` or ``...`` for any run
of dims. Symbols remember where they were bound so a mismatch can say
"B=4 from input 0 dim 0, but layer '6' has 64 at dim 0". No torch here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Literal, TypeAlias

from ._errors import UsageError
from ._text import shape as format_shape

__all__ = ["Bindings", "Dim", "Mismatch", "Spec", "SpecLike", "match", "parse_spec", "symbol_dims"]

VALID = (
    "A valid spec has one entry per dim, separated by spaces (or given as a tuple): a size such "
    "as 32, a symbol such as B or H (the same symbol must have the same size everywhere), _ for "
    "any one dim, and at most one * or ... for any run of dims; for example 'B 3 32 32', "
    "'B * 10' or ('B', 3, 'H', 'W')."
)
_SYMBOL = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_SIZE = re.compile(r"[+-]?\d+\Z")


@dataclass(frozen=True)
class Dim:
    """One spec entry: a fixed size, a symbol, ``_`` (any one dim) or ``*`` (any run)."""

    kind: Literal["size", "symbol", "any", "rest"]
    size: int = 0
    name: str = ""

    def __str__(self) -> str:
        return {"size": str(self.size), "symbol": self.name, "any": "_", "rest": "*"}[self.kind]


@dataclass(frozen=True)
class Spec:
    """A parsed spec; ``str(spec)`` writes it as a tuple: ``(B, 3, 32, 32)``."""

    dims: tuple[Dim, ...]

    def __str__(self) -> str:
        inner = ", ".join(str(d) for d in self.dims)
        return f"({inner}{',' if len(self.dims) == 1 else ''})"

    @property
    def rest(self) -> int | None:
        """Position of the ``*`` entry, if any."""
        return next((i for i, d in enumerate(self.dims) if d.kind == "rest"), None)

    @property
    def symbols(self) -> list[str]:
        """The symbols in order of first appearance."""
        return list(dict.fromkeys(d.name for d in self.dims if d.kind == "symbol"))

    def build(self, sizes: Mapping[str, int], what: str = "spec") -> tuple[int, ...]:
        """The concrete shape for ``sizes``; UsageError when an entry has no size."""
        shape = []
        for dim in self.dims:
            if dim.kind == "size":
                shape.append(dim.size)
            elif dim.kind == "symbol" and dim.name in sizes:
                shape.append(_check_size(sizes[dim.name], dim.name))
            else:
                raise UsageError(_unsized(dim, what, self))
        return tuple(shape)


#: What the public functions accept as a spec.
SpecLike: TypeAlias = str | Sequence[int | str | EllipsisType] | Spec


def _unsized(dim: Dim, what: str, spec: Spec) -> str:
    if dim.kind == "symbol":
        return f"{what} {spec} uses the symbol {dim.name} with no size: pass {dim.name}=<int>."
    return (
        f"{what} {spec} has {dim}, which matches existing shapes but cannot make a tensor: "
        "use sizes and symbols only, such as 'B 3 32 32'."
    )


def _check_size(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"the size of {name} must be an int >= 0, got {value!r}.")
    return value


def parse_spec(spec: SpecLike) -> Spec:
    """Parse a spec string or tuple; UsageError saying what a valid spec looks like.

    Example:
        >>> str(parse_spec("B 3 32 32")), str(parse_spec(("B", ..., 10)))
        ('(B, 3, 32, 32)', '(B, *, 10)')
    """
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, str):
        items: Sequence[object] = _split(spec)
    elif isinstance(spec, Sequence):
        items = spec
    else:
        raise UsageError(f"a shape spec must be a string or a tuple, got {spec!r}. {VALID}")
    dims = tuple(_dim(item, spec) for item in items)
    if sum(d.kind == "rest" for d in dims) > 1:
        raise UsageError(f"bad shape spec {spec!r}: more than one * or ... is ambiguous. {VALID}")
    return Spec(dims)


def _split(text: str) -> list[str]:
    stripped = text.strip()
    if stripped.startswith("(") and stripped.endswith(")"):
        stripped = stripped[1:-1]  # accept the tuple form the messages print: "(B, 3, 32, 32)"
    return [part for part in re.split(r"[\s,]+", stripped) if part]


def _dim(item: object, spec: object) -> Dim:
    if item is Ellipsis:
        return Dim("rest")
    if isinstance(item, int) and not isinstance(item, bool):
        if item < 0:
            raise UsageError(f"bad shape spec {spec!r}: negative size {item}. {VALID}")
        return Dim("size", size=item)
    if isinstance(item, str):
        return _token(item.strip(), spec)
    raise UsageError(f"bad shape spec {spec!r}: entry {item!r} is not a size or a name. {VALID}")


def _token(token: str, spec: object) -> Dim:
    if token in ("*", "..."):
        return Dim("rest")
    if token == "_":
        return Dim("any")
    if _SIZE.match(token):
        return _dim(int(token), spec)
    if _SYMBOL.match(token):
        return Dim("symbol", name=token)
    raise UsageError(f"bad shape spec {spec!r}: unknown entry {token!r}. {VALID}")


@dataclass
class Bindings:
    """Symbol sizes and where each was bound (``"input 0 dim 0"``)."""

    values: dict[str, tuple[int, str]] = field(default_factory=dict)

    def size(self, name: str) -> int | None:
        found = self.values.get(name)
        return None if found is None else found[0]

    def describe(self) -> str:
        """``B=4 (input 0 dim 0), H=32 (input 0 dim 2)``."""
        return ", ".join(f"{n}={v} ({where})" for n, (v, where) in self.values.items())


@dataclass(frozen=True)
class Mismatch:
    """Why a shape does not match a spec: ``reason`` is one sentence with the arithmetic."""

    where: str
    shape: tuple[int, ...]
    spec: Spec
    reason: str


def match(spec: Spec, shape: Sequence[int], where: str, bindings: Bindings) -> Mismatch | None:
    """Match ``shape`` (found at ``where``) against ``spec``; bind new symbols on success.

    A failed match binds nothing, so one broken entry does not make later ones look wrong.

    Example:
        >>> b = Bindings()
        >>> match(parse_spec("B 3"), (4, 3), "input 0", b), b.size("B")
        (None, 4)
        >>> match(parse_spec("B 2"), (64, 2), "layer '6'", b).reason
        "B=4 from input 0 dim 0, but layer '6' has 64 at dim 0"
    """
    shape = tuple(shape)
    aligned = _align(spec, len(shape))
    if aligned is None:
        return Mismatch(where, shape, spec, _rank_reason(spec, shape, where))
    new: dict[str, tuple[int, str]] = {}
    for dim, index in aligned:
        reason = _check_dim(dim, shape[index], index, where, bindings, new)
        if reason:
            return Mismatch(where, shape, spec, reason)
    bindings.values.update(new)
    return None


def symbol_dims(spec: Spec, rank: int, name: str) -> list[int]:
    """The dim indices where symbol ``name`` sits in a shape of ``rank`` dims matching ``spec``."""
    aligned = _align(spec, rank) or []
    return [index for dim, index in aligned if dim.kind == "symbol" and dim.name == name]


def _align(spec: Spec, rank: int) -> list[tuple[Dim, int]] | None:
    """Each fixed entry with the dim index it covers; None when the rank cannot match."""
    rest = spec.rest
    if rest is None:
        return list(zip(spec.dims, range(rank), strict=True)) if rank == len(spec.dims) else None
    after = len(spec.dims) - rest - 1
    if rank < len(spec.dims) - 1:
        return None
    head = list(zip(spec.dims[:rest], range(rest), strict=True))
    tail = list(zip(spec.dims[rest + 1 :], range(rank - after, rank), strict=True))
    return head + tail


def _rank_reason(spec: Spec, shape: tuple[int, ...], where: str) -> str:
    fixed = len(spec.dims) - (spec.rest is not None)
    need = f"at least {fixed}" if spec.rest is not None else str(fixed)
    return f"{where} is {len(shape)}-D {format_shape(shape)}, but the spec {spec} needs {need} dims"


def _check_dim(
    dim: Dim,
    size: int,
    index: int,
    where: str,
    bindings: Bindings,
    new: dict[str, tuple[int, str]],
) -> str | None:
    if dim.kind == "size" and size != dim.size:
        return f"{where} has {size} at dim {index}, the spec says {dim.size}"
    if dim.kind != "symbol":
        return None
    bound = bindings.values.get(dim.name) or new.get(dim.name)
    if bound is None:
        new[dim.name] = (size, f"{where} dim {index}")
    elif bound[0] != size:
        return f"{dim.name}={bound[0]} from {bound[1]}, but {where} has {size} at dim {index}"
    return None
