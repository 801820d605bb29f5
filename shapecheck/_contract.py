"""Input-size contracts: every layer's shape as a formula of the input's symbols, and exactly
which input sizes the model accepts.

``contract(model, "B 3 H W", example=x)`` traces one forward with the spec's symbols as sizes
(see ``_symbolic``). A trace holds wherever its guards hold; sizes that leave it (another branch
of torch or of the model) are traced again when asked about, so :meth:`Contract.accepts` and
:meth:`Contract.sizes` answer exactly, not from the first trace alone.

Example:
    >>> import torch, shapecheck
    >>> from shapecheck.demo import seed_model_fixed
    >>> c = shapecheck.contract(seed_model_fixed(), "B 3 H W", example=(4, 3, 32, 32))
    >>> c.output, c.constraints
    (('B', 2), ['(H//4)*(W//4) == 64'])
    >>> bool(c.accepts(H=35, W=35)), c.accepts(H=64, W=64).why
    (True, "layer '7' (Linear) needs (H//4)*(W//4) == 64; here 256 (at B=4, H=64, W=64)")
    >>> str(c.sizes("H", W=32))
    '32..35'
"""

from __future__ import annotations

import itertools
import random
import re
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch
from torch import nn

from . import _symbolic as sym
from ._compat import require_torch
from ._errors import UsageError
from ._inputs import parse_dtype, require_module, unwrapped
from ._source import code_line
from ._spec import SpecLike, parse_spec
from ._text import short

__all__ = ["Contract", "ContractLayer", "SizeSet", "Verdict", "accepted_sizes_hint", "contract"]

#: Traces one contract may add to answer questions about sizes its first trace did not cover.
MAX_PIECES = 24
#: Rounds of re-tracing to get past an equality that only held by coincidence at the example.
GENERIC_ROUNDS = 3
SCHEMA = 1
#: Notes under the table are wrapped to this many columns.
WIDTH = 100


# -- records ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """A yes or no with the reason; true in a boolean context when ``ok``."""

    ok: bool
    why: str

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class SizeSet:
    """The sizes one symbol may take (the others held), as checked from 1 to ``up_to``.

    ``str()`` says it for people: ``32..35``, ``H >= 7`` or ``H >= 16 and H % 16 == 0`` (the
    pattern the sizes up to ``up_to`` repeat: ``period`` > 0). ``unknown`` lists sizes no trace
    could decide.
    """

    symbol: str
    values: tuple[int, ...]
    up_to: int
    text: str
    period: int = 0
    residues: tuple[int, ...] = ()
    unknown: tuple[int, ...] = ()

    def __str__(self) -> str:
        return self.text

    def __iter__(self) -> Iterator[int]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def __contains__(self, size: object) -> bool:
        if not isinstance(size, int) or size < 1:
            return False
        if size <= self.up_to or not self.period:
            return size in self.values
        return size % self.period in self.residues


@dataclass(frozen=True)
class ContractLayer:
    """One row: a module call or a functional op, its outputs as formulas per dim."""

    path: str
    kind: Literal["module", "function"]
    type: str
    depth: int
    outputs: tuple[tuple[str | int, ...], ...]
    line: str | None

    @property
    def output(self) -> tuple[str | int, ...]:
        """The first output tensor's shape (``()`` when the call returned none)."""
        return self.outputs[0] if self.outputs else ()


# -- the public entry point ------------------------------------------------------------------------
def contract(
    model: nn.Module,
    spec: SpecLike | list[SpecLike],
    example: Any = None,
    *,
    dtype: torch.dtype | str | Sequence[torch.dtype | str] | None = None,
    batch: str | None = None,
    **sizes: int,
) -> Contract:
    """The input-size contract of ``model`` for inputs described by ``spec`` (``"B 3 H W"``).

    Args:
        model: the module; it is not changed (hooks and fakes only, nothing runs for real
            unless an op needs tensor values).
        spec: one spec per input tensor: symbols (``B``, ``H``) become formulas, integers are
            fixed dims, ``_`` keeps the example's size.
        example: a tensor (or a list of them), or a shape ``(4, 3, 32, 32)`` (or a list of
            shapes); symbol sizes may instead be given as keywords (``B=4, H=32, W=32``).
            Each symbol's example size must be >= 2 and differ from the spec's fixed dims.
        dtype: the dtype(s) of inputs given by shape (default float32).
        batch: the batch symbol (default ``B`` when the spec has it, else the first dim's).

    Example:
        >>> import shapecheck
        >>> from shapecheck.demo import seed_model_fixed
        >>> shapecheck.contract(seed_model_fixed(), "B 3 H W", B=4, H=32, W=32).output
        ('B', 2)
    """
    return make(model, spec, example, dtype=dtype, batch=batch, sizes=sizes)


def make(
    model: nn.Module,
    spec: SpecLike | list[SpecLike],
    example: Any = None,
    *,
    dtype: torch.dtype | str | Sequence[torch.dtype | str] | None = None,
    batch: str | None = None,
    sizes: Mapping[str, int] | None = None,
) -> Contract:
    """:func:`contract` with the symbol sizes as one mapping (for callers that build them)."""
    require_torch(sym.MINIMUM, "shapecheck.contract")
    model = unwrapped(require_module(model))
    plans, example_sizes = _plans(spec, example, dtype, sizes or {})
    first = sym.trace(model, plans, example_sizes)
    if first.error is not None:
        raise UsageError(
            f"the model does not run on the example ({_at(example_sizes)}): "
            f"{_where(first.error_layer)}{first.error}. A contract starts from an example that "
            "runs; shapecheck.explain(model, example) shows why this one does not."
        )
    atlas = _Atlas(model, plans, [first])
    main = _generic(atlas, first, example_sizes)
    return Contract(
        tuple(" ".join(str(d) for d in p.dims) for p in plans), dict(example_sizes),
        _batch_symbol(plans, batch), main, atlas,
    )  # fmt: skip


# -- specs and examples ----------------------------------------------------------------------------
def _plans(
    spec: SpecLike | list[SpecLike], example: Any, dtype: Any, sizes: Mapping[str, int]
) -> tuple[list[sym.Plan], dict[str, int]]:
    specs = [parse_spec(s) for s in spec] if isinstance(spec, list) else [parse_spec(spec)]
    tensors, shapes = _examples(example, specs, sizes)
    dtypes = _dtypes(dtype, tensors, len(specs))
    plans: list[sym.Plan] = []
    bound: dict[str, int] = {}
    for index, (parsed, shape) in enumerate(zip(specs, shapes, strict=True)):
        dims = _dims(parsed, shape, index, bound)
        tensor = tensors[index] if tensors else None
        device = tensor.device if tensor is not None else torch.device("cpu")
        plans.append(sym.Plan(dims, dtypes[index], device, _detached(tensor)))
    _check_examples(bound, plans)
    return plans, bound


def _detached(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach()


def _examples(
    example: Any, specs: list[Any], sizes: Mapping[str, int]
) -> tuple[list[torch.Tensor], list[tuple[int, ...]]]:
    if example is None:
        if not sizes:
            raise UsageError("give the example: a tensor, a shape such as (4, 3, 32, 32), or "
                             "each symbol's size as a keyword (B=4, H=32, W=32).")  # fmt: skip
        return [], [s.build(sizes, "spec") for s in specs]
    if sizes:
        raise UsageError(f"give either example= or symbol sizes, not both (got {sorted(sizes)}).")
    if isinstance(example, torch.Tensor) or _is_shape(example):
        example = [example]
    if not isinstance(example, (list, tuple)) or len(example) != len(specs):
        raise UsageError(
            f"the example must give one tensor or shape per spec ({len(specs)}); got {example!r}."
        )
    if all(isinstance(e, torch.Tensor) for e in example):
        return list(example), [tuple(e.shape) for e in example]
    if all(_is_shape(e) for e in example):
        return [], [tuple(e) for e in example]
    raise UsageError("the example must be tensors or shapes (tuples of ints), not a mix.")


def _is_shape(value: object) -> bool:
    return isinstance(value, (tuple, list, torch.Size)) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    )


def _dtypes(dtype: Any, tensors: list[torch.Tensor], count: int) -> list[torch.dtype]:
    if tensors:
        return [t.dtype for t in tensors]
    if dtype is None:
        return [torch.float32] * count
    if isinstance(dtype, (list, tuple)):
        if len(dtype) != count:
            raise UsageError(f"dtype must be one dtype or one per input ({count}).")
        return [parse_dtype(d) for d in dtype]
    return [parse_dtype(dtype)] * count


def _dims(
    parsed: Any, shape: tuple[int, ...], index: int, bound: dict[str, int]
) -> tuple[str | int, ...]:
    if parsed.rest is not None:
        raise UsageError(f"a contract spec has one entry per dim (sizes, symbols or _); "
                         f"{parsed} has * or ....")  # fmt: skip
    if len(parsed.dims) != len(shape):
        raise UsageError(f"spec {parsed} has {len(parsed.dims)} dims but input {index} has shape "
                         f"{tuple(shape)}.")  # fmt: skip
    dims: list[str | int] = []
    for dim, size in zip(parsed.dims, shape, strict=True):
        if dim.kind == "size" and dim.size != size:
            raise UsageError(f"spec {parsed} fixes {dim.size}, but input {index} has {size} there "
                             f"{tuple(shape)}.")  # fmt: skip
        if dim.kind == "symbol":
            if bound.setdefault(dim.name, size) != size:
                raise UsageError(f"the example gives {dim.name} two sizes: {bound[dim.name]} "
                                 f"and {size}.")  # fmt: skip
            dims.append(dim.name)
        else:
            dims.append(size)
    return tuple(dims)


def _check_examples(bound: Mapping[str, int], plans: list[sym.Plan]) -> None:
    """torch treats sizes 0 and 1 as special (and would fix them); a symbol whose example equals
    a fixed dim could pass a check that compares the two by coincidence."""
    fixed = {d for p in plans for d in p.dims if isinstance(d, int)}
    for name, size in bound.items():
        if size < 2:
            raise UsageError(
                f"the example gives {name}={size}: a symbol's example size must be >= 2 "
                f"(torch fixes sizes 0 and 1); use an example with {name} >= 2."
            )
        if size in fixed:
            raise UsageError(
                f"the example gives {name}={size}, the same as a fixed dim of the spec: pick "
                f"another size for {name} so that no check can hold by coincidence."
            )
    if not bound:
        raise UsageError("the spec names no symbol: use names such as B, H, W for the dims "
                         "that may vary.")  # fmt: skip


def _batch_symbol(plans: list[sym.Plan], batch: str | None) -> str | None:
    names = [d for p in plans for d in p.dims if isinstance(d, str)]
    if batch is not None:
        if batch not in names:
            raise UsageError(f"the batch symbol {batch!r} is not in the spec ({', '.join(names)}).")
        return batch
    if "B" in names:
        return "B"
    first = plans[0].dims[0] if plans[0].dims else None
    return first if isinstance(first, str) else None


# -- which trace covers which sizes ----------------------------------------------------------------
Outcome = Literal["ok", "raises", "off"]


def _outcome(piece: sym.Piece, sizes: Mapping[str, int]) -> tuple[Outcome, sym.Guard | None]:
    """Follow the trace's guards in order: a failing check means the forward raises there; a
    failing branch means these sizes take another path (``off``). A trace that raised covers
    the sizes where all its guards hold (the last one led to the error, so any failing guard
    is another path)."""
    if not piece.complete:
        return "off", None
    own = all(sizes[n] == v for n, v in piece.sizes.items())
    failed = piece.error is not None
    for guard in piece.guards:
        held = own or (guard.code is not None and bool(sym.evaluate(guard.code, sizes)))
        if not held:
            return ("raises" if guard.kind == "check" and not failed else "off"), guard
    return ("raises" if failed else "ok"), None


class _Atlas:
    """The traces of one contract, and the model to trace again where none covers."""

    def __init__(self, model: nn.Module, plans: list[sym.Plan], pieces: list[sym.Piece]) -> None:
        self.model, self.plans, self.pieces = model, plans, pieces

    def judge(self, sizes: Mapping[str, int], budget: int = MAX_PIECES) -> tuple[
        sym.Piece | None, Outcome, sym.Guard | None
    ]:  # fmt: skip
        for piece in self.pieces:
            outcome, guard = _outcome(piece, sizes)
            if outcome != "off":
                return piece, outcome, guard
        if len(self.pieces) >= budget:
            return None, "off", None
        piece = sym.trace(self.model, self.plans, sizes)
        self.pieces.append(piece)
        outcome, guard = _outcome(piece, sizes)
        return piece, outcome, guard


def _generic(atlas: _Atlas, piece: sym.Piece, example: Mapping[str, int]) -> sym.Piece:
    """The trace to show: past equalities that held only by coincidence at the example (the
    book's ``view(-1, 512)`` at 32x32 gives B rows; at 64x32 it gives 2*B).

    Another trace, at sizes that pass the checks but break the equality, replaces the first
    when its formulas give the same shapes at the example: they are then the general ones.
    An equality broken once stays broken in later rounds.
    """
    broken: list[sym.Guard] = []
    for _ in range(GENERIC_ROUNDS):
        done = {g.code for g in broken}
        equalities = [g for g in piece.guards if _coincidence(g) and g.code not in done]
        sizes = _breaking(piece, equalities, broken, example) if equalities else None
        if sizes is None:
            return piece
        other = sym.trace(atlas.model, atlas.plans, sizes)
        if other.error is not None or not _same_shapes(other, piece, example):
            return piece
        atlas.pieces.append(other)
        broken += [g for g in equalities if not sym.evaluate(g.code or "", sizes)]
        piece = other
    return piece


def _required(atlas: _Atlas, piece: sym.Piece, example: Mapping[str, int]) -> tuple[sym.Guard, ...]:
    """Bounds on one symbol that torch asked as a branch (``H >= 7`` inside conv's kernel) but
    that are requirements: a probe just past the bound raises in that layer.

    The probe stops once that layer has run, so a bound that only picks a memory layout
    (``B < 16``) costs a trace of the layers before it.
    """
    found = []
    for guard in piece.guards:
        if not _bound(guard):
            continue
        name = guard.symbols[0]
        size = _past(guard, example, name)
        if size is None:
            continue
        probe = sym.trace(atlas.model, atlas.plans, {**example, name: size}, guard.layer or None)
        if probe.error is not None and probe.error_layer.startswith(guard.layer):
            found.append(guard)
            atlas.pieces.append(probe)
    return tuple(found)


def _bound(guard: sym.Guard) -> bool:
    return (guard.kind == "branch" and guard.shown and guard.code is not None
            and guard.relation in ("<", "<=", ">", ">=") and len(guard.symbols) == 1)  # fmt: skip


def _past(guard: sym.Guard, example: Mapping[str, int], name: str) -> int | None:
    """The nearest size of ``name`` (the others at the example) where the bound fails."""
    start = example[name]
    for distance in range(1, 4 * start + 65):
        for size in (start - distance, start + distance):
            if size >= 1 and not sym.evaluate(guard.code or "", {**example, name: size}):
                return size
    return None


def _coincidence(guard: sym.Guard) -> bool:
    """An equality torch's or the model's code branched on (not a size read as a number)."""
    if guard.kind not in ("branch", "user") or guard.relation != "==" or guard.code is None:
        return False
    read = guard.kind == "user" and len(guard.symbols) == 1 and guard.code.count("v_") == 1
    return not read


def _breaking(
    piece: sym.Piece,
    equalities: list[sym.Guard],
    broken: list[sym.Guard],
    example: Mapping[str, int],
) -> dict[str, int] | None:
    """Sizes near the example that pass the checks, keep ``broken`` broken and break all of
    ``equalities`` (or, failing that, some)."""
    checks = [g for g in piece.guards if g.kind == "check" and g.code is not None]
    names = sorted({n for g in equalities for n in g.symbols if n in example})
    some = None
    for candidate in _candidates(names, example):
        sizes = {**example, **candidate}
        if not all(sym.evaluate(g.code or "", sizes) for g in checks) or any(
            sym.evaluate(g.code or "", sizes) for g in broken
        ):
            continue
        held = sum(bool(sym.evaluate(g.code or "", sizes)) for g in equalities)
        if held == 0:
            return sizes
        if held < len(equalities) and some is None:
            some = sizes
    return some


def _candidates(names: list[str], example: Mapping[str, int]) -> Iterator[dict[str, int]]:
    for name in names:
        v = example[name]
        for size in (2 * v, 2 * v + 1, v + 1, v + 2, 3 * v, 4 * v):
            yield {name: size}
    yield {name: 2 * example[name] for name in names}


def _same_shapes(a: sym.Piece, b: sym.Piece, sizes: Mapping[str, int]) -> bool:
    if [(r.path, r.kind, r.type) for r in a.rows] != [(r.path, r.kind, r.type) for r in b.rows]:
        return False
    rows = [(x.outputs, y.outputs) for x, y in zip(a.rows, b.rows, strict=True)]
    return all(_values(x, sizes) == _values(y, sizes) for x, y in [*rows, (a.outputs, b.outputs)])


def _values(
    shapes: tuple[tuple[sym.Formula, ...], ...], sizes: Mapping[str, int]
) -> list[tuple[Any, ...]] | None:
    if any(f.code is None for s in shapes for f in s):
        return None
    return [tuple(sym.evaluate(f.code, sizes) for f in s if f.code) for s in shapes]


# -- the contract ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Contract:
    """What ``contract()`` found; ``str()`` shows every layer's output as a formula.

    It keeps the traces it made and the model, to trace sizes that none of them covers yet.
    """

    specs: tuple[str, ...]
    example: Mapping[str, int]
    batch: str | None
    piece: sym.Piece = field(repr=False)
    atlas: _Atlas = field(repr=False, compare=False)

    # -- reading -------------------------------------------------------------------------------
    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self.example)

    @cached_property
    def layers(self) -> tuple[ContractLayer, ...]:
        """Every module call and functional op of the user's code, outputs as formulas; a dim
        the contract makes constant (``8*(H//4)*(W//4)`` where ``(H//4)*(W//4) == 64``) is
        shown as its value."""
        fold = _Folder(self.piece, self.example)
        return tuple(
            ContractLayer(r.path, r.kind, r.type, r.depth, fold(r.outputs), r.line)
            for r in self.piece.rows
        )

    @cached_property
    def outputs(self) -> tuple[tuple[str | int, ...], ...]:
        """Each output tensor's shape, a formula per dim (an int where it is fixed)."""
        return _Folder(self.piece, self.example)(self.piece.outputs)

    @property
    def output(self) -> tuple[str | int, ...]:
        """The first output tensor's shape: ``("B", 2)``."""
        return self.outputs[0] if self.outputs else ()

    @cached_property
    def required(self) -> tuple[sym.Guard, ...]:
        """Bounds torch asked as branches that probes showed to be requirements (on demand)."""
        return _required(self.atlas, self.piece, self.example)

    @property
    def constraints(self) -> list[str]:
        """The size checks the model's ops make, readable (``(H//4)*(W//4) == 64``); checks that
        the others imply (tested on sample sizes) are left out; pinned symbols last."""
        shown = _essential([*_checks(self.piece), *self.required], self.example)
        order = list(self.example)  # by the spec's symbols, then as traced
        shown.sort(key=lambda g: min((order.index(n) for n in g.symbols if n in order), default=0))
        pins = [f"{p.symbol} == {p.value}" for p in _unique_pins(self.piece)]
        return list(dict.fromkeys([g.text for g in shown] + pins))

    @property
    def pinned(self) -> tuple[sym.Pin, ...]:
        """Symbols the trace could only follow at their example size: where and why."""
        return _unique_pins(self.piece)

    @property
    def assumptions(self) -> list[str]:
        """Branches the model's own code took on sizes (``if h > 16``); other sizes are traced
        on demand."""
        return list(dict.fromkeys(
            f"{g.text}  ({short(g.line)})" if g.line else g.text
            for g in self.piece.guards
            if g.kind == "user" and g.shown and not _pins_symbol(g, self.piece)
        ))  # fmt: skip

    @property
    def keeps_batch(self) -> Verdict:
        """Whether every output has the batch symbol as a dim, and if not, which row lost it."""
        return _keeps_batch(self.piece, self.outputs, self.batch)

    # -- asking ------------------------------------------------------------------------------------
    def accepts(self, **sizes: int) -> Verdict:
        """Whether the model runs at these sizes (symbols not given keep the example's size).

        Example:
            >>> import shapecheck
            >>> from shapecheck.demo import seed_model_fixed
            >>> c = shapecheck.contract(seed_model_fixed(), "B 3 H W", B=4, H=32, W=32)
            >>> bool(c.accepts(B=64, H=33))
            True
        """
        values = self._sizes(sizes)
        piece, outcome, guard = self.atlas.judge(values)
        return _verdict(piece, outcome, guard, values)

    def sizes(self, symbol: str, up_to: int | None = None, **fixed: int) -> SizeSet:
        """The sizes ``symbol`` may take with the others at ``fixed`` (or the example's), checked
        one by one from 1 to ``up_to`` (default: 512, or 4x the example's size if larger).

        Example:
            >>> import shapecheck
            >>> from shapecheck.demo import seed_model_fixed
            >>> c = shapecheck.contract(seed_model_fixed(), "B 3 H W", B=4, H=32, W=32)
            >>> list(c.sizes("H", W=32))
            [32, 33, 34, 35]
        """
        if symbol not in self.example:
            raise UsageError(f"{symbol!r} is not a symbol of this contract ({self._names()}).")
        values = self._sizes(fixed)
        limit = up_to if up_to is not None else max(512, 4 * self.example[symbol])
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise UsageError(f"up_to must be an int >= 1, got {up_to!r}.")
        found, unknown = [], []
        budget = len(self.atlas.pieces) + MAX_PIECES // 2
        start = values[symbol]  # nearest sizes first: the budget of new traces is spent there
        for size in sorted(range(1, limit + 1), key=lambda v: (abs(v - start), v)):
            _, outcome, _ = self.atlas.judge({**values, symbol: size}, budget)
            if outcome == "ok":
                found.append(size)
            elif outcome == "off":
                unknown.append(size)
        return _size_set(symbol, sorted(found), limit, sorted(unknown))

    def shapes(self, **sizes: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Each module's (first call's) output shapes at these sizes, and ``""``: the model's
        outputs; a UsageError when the model does not accept them."""
        values = self._sizes(sizes)
        piece, outcome, guard = self.atlas.judge(values)
        if piece is None or outcome != "ok":
            raise UsageError(_verdict(piece, outcome, guard, values).why)
        found: dict[str, tuple[tuple[int, ...], ...]] = {}
        for row in piece.rows:
            if row.kind == "module" and row.path and row.path not in found:
                found[row.path] = _evaluated(row.outputs, values)
        found[""] = _evaluated(piece.outputs, values)
        return found

    def _sizes(self, sizes: Mapping[str, int]) -> dict[str, int]:
        for name, size in sizes.items():
            if name not in self.example:
                raise UsageError(f"{name!r} is not a symbol of this contract ({self._names()}).")
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise UsageError(f"the size of {name} must be an int >= 1, got {size!r}.")
        return {**self.example, **sizes}

    def _names(self) -> str:
        return ", ".join(self.example)

    # -- showing -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the layers' formulas, the constraints, pins and the batch verdict."""
        keeps = self.keeps_batch
        return {
            "schema": SCHEMA,
            "specs": list(self.specs),
            "example": dict(self.example),
            "batch": self.batch,
            "layers": [
                {"path": x.path, "kind": x.kind, "type": x.type, "depth": x.depth,
                 "outputs": [list(s) for s in x.outputs], "line": x.line}
                for x in self.layers
            ],
            "outputs": [list(s) for s in self.outputs],
            "constraints": self.constraints,
            "assumptions": self.assumptions,
            "pinned": [
                {"symbol": p.symbol, "value": p.value, "layer": p.layer, "type": p.layer_type,
                 "line": p.line, "reason": p.reason}
                for p in self.pinned
            ],
            "keeps_batch": {"ok": keeps.ok, "why": keeps.why},
        }  # fmt: skip

    def __str__(self) -> str:
        return _render(self)


# -- reading a piece -------------------------------------------------------------------------------
class _Folder:
    """Formulas as shown: a constant where every sampled size the trace covers gives one value."""

    def __init__(self, piece: sym.Piece, example: Mapping[str, int]) -> None:
        points = [p for p in _sample(example, 600) if _outcome(piece, p)[0] == "ok"]
        self.points = [dict(example), *points[:40]]
        self.enough = len(points) >= 8
        self.symbols = [name for name in example if len({p[name] for p in self.points}) > 1]

    def __call__(
        self, shapes: tuple[tuple[sym.Formula, ...], ...]
    ) -> tuple[tuple[str | int, ...], ...]:
        return tuple(tuple(self.dim(f) for f in s) for s in shapes)

    def dim(self, formula: sym.Formula) -> str | int:
        if formula.constant is not None:
            return formula.constant
        if not self.enough or formula.code is None:
            return formula.text
        values = [sym.evaluate(formula.code, p) for p in self.points]
        if len(set(values)) == 1:
            return int(values[0])
        same = (
            n
            for n in self.symbols
            if all(v == p[n] for v, p in zip(values, self.points, strict=True))
        )
        return next(same, formula.text)  # 4*(H//4) where H % 4 == 0: H


def _evaluated(
    shapes: tuple[tuple[sym.Formula, ...], ...], sizes: Mapping[str, int]
) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(sym.evaluate(f.code or "None", sizes)) for f in s) for s in shapes)


def _checks(piece: sym.Piece) -> list[sym.Guard]:
    return [g for g in piece.guards if g.kind == "check" and g.shown]


def _unique_pins(piece: sym.Piece) -> tuple[sym.Pin, ...]:
    seen: dict[str, sym.Pin] = {}
    for pin in piece.pins:
        seen.setdefault(pin.symbol, pin)
    return tuple(seen.values())


def _pins_symbol(guard: sym.Guard, piece: sym.Piece) -> bool:
    return guard.relation == "==" and any(p.symbol in guard.symbols for p in piece.pins)


def _essential(checks: list[sym.Guard], example: Mapping[str, int]) -> list[sym.Guard]:
    """Leave out checks that the others imply at every sample size where they hold (at least a
    few such sizes needed): ``H >= 4`` next to ``(H//4)*(W//4) == 64``."""
    unique = list({g.text: g for g in checks if g.code is not None}.values())
    points = _sample(example, 4000)
    kept = list(unique)
    for guard in sorted(unique, key=lambda g: -len(g.text)):  # the plainest are kept
        others = [g for g in kept if g is not guard]
        holding = [p for p in points if all(sym.evaluate(g.code or "", p) for g in others)]
        if others and len(holding) >= 8 and all(sym.evaluate(guard.code or "", p) for p in holding):
            kept.remove(guard)
    return kept


def _sample(example: Mapping[str, int], limit: int) -> list[dict[str, int]]:
    axes = []
    for v in example.values():
        axes.append(sorted({*range(2, 9), v // 2, v - 1, v, v + 1, v + 3, 2 * v, 2 * v + 1,
                            3 * v, 4 * v} - {0, 1}))  # fmt: skip
    grid = list(itertools.product(*axes))
    if len(grid) > limit:
        grid = random.Random(0).sample(grid, limit)
    return [dict(zip(example, point, strict=True)) for point in grid]


def _code(source: str | None) -> str:
    """The line's code without a trailing comment."""
    return re.sub(r"\s+#[^'\"]*$", "", code_line(source))


def _keeps_batch(
    piece: sym.Piece, outputs: tuple[tuple[str | int, ...], ...], batch: str | None
) -> Verdict:
    if batch is None:
        return Verdict(False, "the spec names no batch symbol (B, or give batch=...)")
    if outputs and all(batch in shape for shape in outputs):
        return Verdict(True, f"every output keeps {batch}: " + ", ".join(map(_tuple, outputs)))
    lost = next((s for s in outputs if batch not in s), ())
    row = _row_losing(piece, batch)
    where = ""
    if row is not None:
        label = f"{row.type}" if row.kind == "function" else f"layer '{row.path}' ({row.type})"
        code = _code(row.line)
        at = f" at {short(row.line)} ({code})" if code else ""
        where = f": {label}{at} turns {batch} rows into {row.outputs[0][0].text}"
    return Verdict(False, f"the output {_tuple(lost)} does not keep {batch}{where}")


def _row_losing(piece: sym.Piece, batch: str) -> sym.Row | None:
    """The first row to finish whose input has the batch at dim 0 and whose output has not."""
    rows = sorted((r for r in piece.rows if r.end >= 0), key=lambda r: r.end)
    for row in rows:
        first_in = row.inputs[0] if row.inputs else ()
        first_out = row.outputs[0] if row.outputs else ()
        if first_in and first_out and first_in[0].text == batch and first_out[0].text != batch:
            return row
    return None


def _tuple(dims: Sequence[str | int]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _at(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{n}={v}" for n, v in sizes.items())


def _where(layer: str) -> str:
    return f"layer '{layer}' raised " if layer else ""


def _verdict(
    piece: sym.Piece | None, outcome: Outcome, guard: sym.Guard | None, sizes: Mapping[str, int]
) -> Verdict:
    at = _at(sizes)
    if piece is None or outcome == "off":
        return Verdict(False, f"not decided at {at}: no trace covers these sizes (the budget of "
                              f"{MAX_PIECES} traces is spent)")  # fmt: skip
    if outcome == "ok":
        shapes = ", ".join(_tuple(s) for s in _evaluated(piece.outputs, sizes))
        return Verdict(True, f"the model runs at {at}: output {shapes}")
    if guard is None:
        return Verdict(
            False, f"the forward raises at {at}: {_where(piece.error_layer)}{piece.error}"
        )
    return Verdict(False, f"{_needs(guard, sizes)} (at {at})")


def _needs(guard: sym.Guard, sizes: Mapping[str, int]) -> str:
    text = f"{_place(guard)} needs {guard.text}"
    left = guard.text.split(f" {guard.relation} ")[0] if guard.relation != "other" else ""
    divides = re.fullmatch(r"\((.*)\) % \d+|(.*) % \d+", left)
    if divides and guard.relation == "==":  # a divisibility check: show what must divide
        left = divides.group(1) or divides.group(2)
        here = _value_of(left, guard, sizes)
        return f"{text}; here {left} = {here}" if here is not None else text
    here = _value_of(left, guard, sizes)
    return f"{text}; here {here}" if here is not None else text


def _owner(path: str, kind: str) -> str:
    """``layer 'conv1' (Conv2d)``, or for the model's own code, ``the forward of Net``."""
    if path:
        return f"layer '{path}' ({kind})"
    return f"the forward of {kind}" if kind else "the forward"


def _place(guard: sym.Guard) -> str:
    """``layer '7' (Linear)``, or ``view in the forward of BookNet (zoo.py:178)``."""
    if guard.function:
        owner = _owner(guard.layer, guard.layer_type)
        at = f" ({short(guard.line)})" if guard.line else ""
        return f"{guard.function} in {owner}{at}"
    if guard.layer_type:
        return f"layer '{guard.layer}' ({guard.layer_type})" if guard.layer else guard.layer_type
    return "the model"


def _value_of(left: str, guard: sym.Guard, sizes: Mapping[str, int]) -> Any:
    """The left side's value at ``sizes``, computed from the readable text (``(H//4)*(W//4)``),
    which is Python once ``ceil`` and the symbols are given."""
    if not left or left.lstrip("-").isdigit():
        return None
    try:
        return eval(left, {"__builtins__": {}, "ceil": _ceil, "max": max, "min": min}, dict(sizes))
    except Exception:
        return None


def _ceil(value: Any) -> int:
    return -int(-value // 1)


def _size_set(symbol: str, found: list[int], limit: int, unknown: list[int]) -> SizeSet:
    values = tuple(found)
    period = _period(values, limit)
    residues = tuple(sorted({v % period for v in values})) if period else ()
    text = _size_text(symbol, values, period, residues) if values else "no size"
    if unknown:
        text += f" (not decided: {_listing(unknown)})"
    return SizeSet(symbol, values, limit, text, period, residues, tuple(unknown))


def _period(values: tuple[int, ...], limit: int) -> int:
    """The smallest p such that, from the first size on, a size is in exactly when size + p is,
    seen over at least three periods up to ``limit``; 0 when the sizes stop before the end."""
    if not values:
        return 0
    first, present = values[0], set(values)
    for p in range(1, (limit - first + 1) // 3 + 1):
        if values[-1] > limit - p and all(
            (v in present) == (v + p in present) for v in range(first, limit - p + 1)
        ):
            return p
    return 0


def _size_text(symbol: str, values: tuple[int, ...], period: int, residues: tuple[int, ...]) -> str:
    first, last = values[0], values[-1]
    if period == 1:
        return f"any {symbol}" if first == 1 else f"{symbol} >= {first}"
    if period:
        kept = (
            f"== {residues[0]}"
            if len(residues) == 1
            else "in {" + ", ".join(map(str, residues)) + "}"
        )
        return f"{symbol} >= {first} and {symbol} % {period} {kept}"
    if last - first + 1 == len(values):
        return f"{first}..{last}" if last > first else str(first)
    return "{" + _listing(list(values)) + "}"


def _listing(values: list[int]) -> str:
    if len(values) <= 8:
        return ", ".join(map(str, values))
    return f"{values[0]}, {values[1]}, ..., {values[-1]} ({len(values)} sizes)"


# -- text ------------------------------------------------------------------------------------------
def _render(c: Contract) -> str:
    rows = [_row_text(x) for x in c.layers]
    width = min(max([len(label) for label, _, _ in rows] + [20]) + 2, 48)
    model = c.piece.rows[0].type if c.piece.rows else "model"
    lines = [
        f"contract  {model}   input {' '.join(_tuple(s.split()) for s in c.specs)}   "
        f"example {_at(c.example)}",
        f"{'layer':<{width}}output",
        "─" * (width + 40),
    ]
    lines += [f"{label:<{width}}{out}{note}" for label, out, note in rows]
    notes = [f"output     {' '.join(map(_tuple, c.outputs)) or '—'}"]
    notes += [f"requires   {text}" for text in c.constraints] or [
        "requires   nothing beyond sizes >= 1"
    ]
    notes += [f"assumes    {text}" for text in c.assumptions]
    notes += _pin_lines(c.pinned)
    keeps = c.keeps_batch
    notes.append(f"batch      {'kept' if keeps else 'NOT kept'}: {keeps.why}")
    wrapped = [textwrap.fill(n, WIDTH, subsequent_indent=" " * 11, break_long_words=False,
                             break_on_hyphens=False) for n in notes]  # fmt: skip
    return "\n".join([*lines, "", *wrapped])


def _row_text(layer: ContractLayer) -> tuple[str, str, str]:
    indent = "  " * layer.depth
    if layer.kind == "function":
        label = f"{indent}· {layer.type}"
    else:
        label = f"{indent}{layer.path or '(root)'}  {layer.type}"
    out = " ".join(map(_tuple, layer.outputs)) or "—"
    return label, out, ""


def _pin_lines(pins: Sequence[sym.Pin]) -> list[str]:
    """One line per place: ``pinned     B = 2, H = 8: the forward of ... (why)``."""
    places: dict[tuple[str, str], list[sym.Pin]] = {}
    for pin in pins:
        places.setdefault((_pin_where(pin), pin.reason), []).append(pin)
    return [
        f"pinned     {', '.join(f'{p.symbol} = {p.value}' for p in group)}: {where} ({reason})"
        for (where, reason), group in places.items()
    ]


def _pin_where(pin: sym.Pin) -> str:
    """``layer 'lstm' (LSTM)`` or ``the forward of Pinned at model.py:12 (w = int(x.shape[3]))``."""
    owner = _owner(pin.layer, pin.layer_type)
    code = _code(pin.line)
    return owner + (f" at {short(pin.line)} ({code})" if code else "")


# -- for the repair stage --------------------------------------------------------------------------
def accepted_sizes_hint(model: nn.Module, args: Sequence[Any]) -> str | None:
    """One sentence on the input sizes a model accepts, for a message about an input that failed:
    ``"this model accepts H, W with (H//4)*(W//4) == 64, e.g. 32x32"``; None when it cannot say
    (not one image-like tensor, no size found that runs, or an older torch).

    Example:
        >>> import torch
        >>> from shapecheck.demo import seed_model_fixed
        >>> accepted_sizes_hint(seed_model_fixed(), (torch.randn(1, 3, 64, 64),))
        'this model accepts H, W with (H//4)*(W//4) == 64, e.g. 32x32'
    """
    from ._compat import torch_at_least

    if not torch_at_least(sym.MINIMUM) or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return None
    shape = tuple(args[0].shape)
    if len(shape) < 3:
        return None
    names = {3: ["L"], 4: ["H", "W"], 5: ["D", "H", "W"]}.get(len(shape))
    if names is None:
        return None
    dims = ("B", shape[1], *names)
    try:
        found = _running_example(model, dims, shape, args[0].dtype)
    except UsageError:
        return None
    if found is None:
        return None
    c, sizes = found
    spatial = "x".join(str(sizes[n]) for n in names)
    rules = [t for t in c.constraints if any(n in t for n in names)]
    what = f"with {' and '.join(rules)}" if rules else "of any size from the smallest that runs"
    return f"this model accepts {', '.join(names)} {what}, e.g. {spatial}"


def _running_example(
    model: nn.Module, dims: tuple[Any, ...], shape: tuple[int, ...], dtype: torch.dtype
) -> tuple[Contract, dict[str, int]] | None:
    """A contract from sizes near ``shape`` that run: the failing trace's checks tell which."""
    names = [d for d in dims if isinstance(d, str)]
    batch = next(b for b in (shape[0], 2, 3, 4) if b >= 2 and b != shape[1])
    plans = [sym.Plan(tuple(dims), dtype, torch.device("cpu"))]
    start = {"B": batch, **{n: max(s, 2) for n, s in zip(names[1:], shape[2:], strict=True)}}
    failed = sym.trace(unwrapped(model), plans, start)
    checks = [g for g in failed.guards if g.kind == "check" and g.code]
    for size in _nearby(max(shape[2:])):
        sizes = {"B": batch, **dict.fromkeys(names[1:], size)}
        if size in dims[1:2] or not _passes(checks, sizes, failed.error is not None):
            continue
        try:
            c = make(model, " ".join(map(str, dims)), sizes=sizes)
        except UsageError:
            continue
        return c, _roundest(c, names[1:], sizes)
    return None


def _passes(checks: list[sym.Guard], sizes: Mapping[str, int], negate_last: bool) -> bool:
    """All checks but the one that failed hold, and that one holds the other way round."""
    if not checks:
        return True
    *held, last = checks
    ok = all(sym.evaluate(g.code or "", sizes) for g in held)
    last_value = bool(sym.evaluate(last.code or "", sizes))
    return ok and (not last_value if negate_last else last_value)


def _nearby(size: int) -> Iterator[int]:
    for distance in range(4 * size):
        for candidate in (size - distance, size + distance):
            if candidate >= 2:
                yield candidate


def _roundest(c: Contract, names: list[str], sizes: dict[str, int]) -> dict[str, int]:
    """Among the square sizes near the one found, the one with most factors of two (32, not 35)."""
    base = sizes[names[0]]
    options = [s for s in range(max(2, base - 16), base + 17)
               if c.accepts(**dict.fromkeys(names, s))]  # fmt: skip
    best = max(options, key=lambda s: ((s & -s), -abs(s - base)), default=base)
    return {**sizes, **dict.fromkeys(names, best)}
