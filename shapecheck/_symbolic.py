"""One forward pass on fake tensors whose sizes are symbols: the only use of torch's private
symbolic-shape machinery (``ShapeEnv``, ``FakeTensorMode(shape_env=...)``) in shapecheck.

Every size of the example that the spec names (``H``) becomes a symbol with the example's size
as its hint. Ops compute their output sizes as formulas of the symbols; each time torch needs a
yes/no answer about sizes (``H//4 >= 1`` in max_pool2d's shape check, ``B < 16`` when conv picks
a memory layout) the ShapeEnv answers from the hints and records a guard. The trace is then
exact for every size at which all its guards hold: a guard asked by ``torch._check`` is a
*check* (the op raises where it fails); any other guard is a *branch* (elsewhere torch, or the
model's own code, goes another way, which another trace must follow).

What fake tensors cannot do (``.item()``, boolean masks, ops without symbolic support) is
answered by a reference run at the same sizes (on fake tensors of fixed sizes, or for real when
values are needed): the call that could not run symbolically takes the reference's result, with
fixed sizes, and the symbols its inputs depend on are pinned there.

Everything leaves this module as plain data: formulas as text for people (``ceil(H/32)``) and as
exact Python (``-((-v_H)//32)``) that :func:`evaluate` runs.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import lru_cache
from types import FrameType
from typing import Any, Literal, cast

import sympy  # type: ignore[import-untyped]
import torch
from torch import nn
from torch._dynamo.source import ConstantSource
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.fx.experimental.symbolic_shapes import (
    DimDynamic,
    GuardOnDataDependentSymNode,
    ShapeEnv,
    free_unbacked_symbols,
)
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils._sympy import functions as fn

from ._paths import ModuleFrame, PathIndex
from ._source import _is_user_file, caller_source, traceback_source

__all__ = [
    "MINIMUM",
    "Formula",
    "Guard",
    "Piece",
    "Pin",
    "Plan",
    "Row",
    "evaluate",
    "trace",
]

#: The oldest torch whose symbolic shapes give the contracts tests/test_contract.py expects.
#: Older releases trace too, but fix sizes that 2.13 keeps symbolic: 2.12 and 2.11 read every
#: size as an int in Linear on 3-D inputs (``aten.size`` in fake mode), 2.8 cannot flatten a
#: symbolic view, 2.4 lacks the floor-division simplifications.
MINIMUM = "2.13"

Kind = Literal["check", "branch", "user", "pin"]

#: Errors that mean "fake tensors cannot run this", not "the model is wrong".
_FAKE_LIMITS = (
    DataDependentOutputException,
    DynamicOutputShapeException,
    UnsupportedOperatorException,
    GuardOnDataDependentSymNode,
)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
#: torch's own symbolic machinery: a guard asked only through these came from the user's code.
_MACHINERY = ("fx/experimental/", "utils/_sympy/", "__init__.py", "_logging/", "utils/_stats.py")
_CHECKS = frozenset({"_check_with", "_check_is_size"})
_QUIET = ("torch.fx.experimental.symbolic_shapes", "torch._subclasses.fake_tensor")
#: torch's own Max/Min arrived after 2.4 (sympy's before); Identity too.
_MAX: Any = getattr(fn, "Max", sympy.Max)
_MIN: Any = getattr(fn, "Min", sympy.Min)
_IDENTITY: Any = getattr(fn, "Identity", None)


# -- records ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Formula:
    """One size as a formula of the spec's symbols: ``text`` for people, ``code`` to evaluate."""

    text: str
    code: str | None

    @property
    def constant(self) -> int | None:
        return int(self.text) if self.text.lstrip("-").isdigit() else None


@dataclass(frozen=True)
class Guard:
    """A yes/no question about sizes that the trace answered from the hints (true there)."""

    text: str
    code: str | None
    kind: Kind
    relation: str
    layer: str
    layer_type: str
    op: str
    line: str | None
    symbols: tuple[str, ...]
    shown: bool = True
    function: str = ""


@dataclass(frozen=True)
class Pin:
    """A symbol the trace could only follow at its hint's size, and where and why."""

    symbol: str
    value: int
    layer: str
    layer_type: str
    line: str | None
    reason: str


@dataclass(frozen=True)
class Row:
    """A module call or a functional op of the user's code, with its shapes as formulas."""

    path: str
    kind: Literal["module", "function"]
    type: str
    depth: int
    inputs: tuple[tuple[Formula, ...], ...]
    outputs: tuple[tuple[Formula, ...], ...]
    line: str | None
    end: int


@dataclass(frozen=True)
class Piece:
    """One trace: valid at every size where its guards hold, in order (a failing check first
    means the forward raises there). ``error`` is set when the forward raised at ``sizes``."""

    sizes: Mapping[str, int]
    rows: tuple[Row, ...]
    outputs: tuple[tuple[Formula, ...], ...]
    guards: tuple[Guard, ...]
    pins: tuple[Pin, ...]
    error: str | None = None
    error_layer: str = ""
    complete: bool = True


@dataclass(frozen=True)
class Plan:
    """One input tensor: its dims (symbol names or fixed sizes), dtype, device and, when known,
    example values (used only when a reference run needs real data)."""

    dims: tuple[str | int, ...]
    dtype: torch.dtype
    device: torch.device
    values: torch.Tensor | None = None

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.dims)


# -- evaluating formulas ---------------------------------------------------------------------------
def _div(a: int | Fraction, b: int | Fraction) -> Fraction:
    return Fraction(a) / Fraction(b)


_NAMESPACE: dict[str, Any] = {
    "__builtins__": {}, "max": max, "min": min, "_div": _div, "_q": Fraction,
    "_ceil": math.ceil, "_floor": math.floor, "_trunc": math.trunc,
}  # fmt: skip


@lru_cache(maxsize=8192)
def _compiled(code: str) -> Any:
    return compile(code, "<formula>", "eval")


def evaluate(code: str, sizes: Mapping[str, int]) -> Any:
    """The value of a formula's ``code`` at ``sizes`` (symbol name -> size), exactly.

    Example:
        >>> evaluate("-((-v_H)//32)", {"H": 33})
        2
    """
    values = {f"v_{name}": size for name, size in sizes.items()}
    return eval(_compiled(code), _NAMESPACE, values)


# -- printing sympy --------------------------------------------------------------------------------
_ATOM, _POW, _UNARY, _MUL, _ADD, _CMP, _NOT, _AND, _OR = 9, 8, 7, 6, 5, 4, 3, 2, 1
_RELATIONS = {
    sympy.Eq: "==", sympy.Ne: "!=", sympy.Lt: "<", sympy.Le: "<=", sympy.Gt: ">", sympy.Ge: ">=",
}  # fmt: skip
_FLIPPED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


class _NoCode(Exception):
    """An expression this printer cannot turn into exact Python."""


def _relation(expr: sympy.Basic) -> str | None:
    for cls, symbol in _RELATIONS.items():
        if isinstance(expr, cls):
            return symbol
    return None


def _ceil_parts(expr: sympy.Basic) -> tuple[sympy.Expr, int] | None:
    """``(x, n)`` when ``expr`` is ceil(x/n) written with floor division: ``(x + n - 1)//n``, or
    ``(x + c)//n + k`` with ``c + k*n == n - 1`` (conv and pool output sizes look like this)."""
    parts = _floor_parts(expr)
    if parts is None:
        return None
    numerator, n = parts
    constant, rest = numerator.as_coeff_Add()
    if n < 2 or constant != n - 1 or rest == 0:
        return None
    inner = _ceil_parts(rest)  # ceil(ceil(x/m)/n) == ceil(x/(m*n))
    return (inner[0], inner[1] * n) if inner else (rest, n)


def _floor_parts(expr: sympy.Basic) -> tuple[sympy.Expr, int] | None:
    """``(numerator, n)`` when ``expr`` is ``numerator//n`` or ``a//n + k`` (== (a + k*n)//n)."""
    offset = sympy.Integer(0)
    if isinstance(expr, sympy.Add):
        offset, expr = expr.as_coeff_Add()
    if type(expr) not in (fn.FloorDiv, fn.CleanDiv) or not expr.args[1].is_Integer:
        return None
    n = int(expr.args[1])
    return expr.args[0] + offset * n, n


class _Printer:
    """Sympy size expressions as text for people and as exact Python over ``v_<symbol>``."""

    def __init__(self, names: Mapping[sympy.Symbol, str]) -> None:
        self.names = names

    def formula(self, size: object) -> Formula:
        if isinstance(size, int):
            return Formula(str(size), str(size))
        expr = size.node.expr if isinstance(size, torch.SymInt) else size
        return Formula(self.text(expr), self.code(expr))

    def text(self, expr: sympy.Basic) -> str:
        try:
            return self._text(expr)[0]
        except (TypeError, ValueError, AttributeError, IndexError):
            return str(expr)

    def code(self, expr: sympy.Basic) -> str | None:
        try:
            return self._code(expr)
        except (_NoCode, TypeError, ValueError, AttributeError, IndexError):
            return None

    # -- text -----------------------------------------------------------------------------------
    def _wrap(self, expr: sympy.Basic, above: int) -> str:
        text, precedence = self._text(expr)
        return f"({text})" if precedence <= above else text

    def _text(self, e: sympy.Basic) -> tuple[str, int]:
        if isinstance(e, sympy.Symbol):
            return self.names.get(e, str(e)), _ATOM
        if e.is_Integer:
            return str(int(e)), _ATOM if int(e) >= 0 else _UNARY
        if e.is_Rational:
            return f"{e.p}/{e.q}", _MUL
        if isinstance(e, (sympy.logic.boolalg.BooleanTrue, sympy.logic.boolalg.BooleanFalse)):
            return str(bool(e)), _ATOM
        ceil = _ceil_parts(e)
        if ceil is not None:
            return f"ceil({self._wrap(ceil[0], _MUL)}/{ceil[1]})", _ATOM
        floor = _floor_parts(e)
        if floor is not None:
            return f"{self._wrap(floor[0], _MUL)}//{floor[1]}", _MUL
        relation = _relation(e)
        if relation is not None:
            left, right = e.args
            return f"{self._wrap(left, _CMP)} {relation} {self._wrap(right, _CMP)}", _CMP
        return self._text_compound(e)

    def _text_compound(self, e: sympy.Basic) -> tuple[str, int]:
        if isinstance(e, sympy.Add):
            return self._text_add(e), _ADD
        if isinstance(e, sympy.Mul):
            return self._text_mul(e)
        if isinstance(e, (sympy.Pow, fn.PowByNatural)):
            return f"{self._wrap(e.args[0], _POW)}**{self._wrap(e.args[1], _POW)}", _POW
        if type(e) in (fn.FloorDiv, fn.CleanDiv):
            return f"{self._wrap(e.args[0], _MUL)}//{self._wrap(e.args[1], _MUL)}", _MUL
        if type(e) in (fn.Mod, fn.PythonMod, sympy.Mod):
            return f"{self._wrap(e.args[0], _MUL)} % {self._wrap(e.args[1], _MUL)}", _MUL
        if isinstance(e, fn.ModularIndexing):
            base, div, mod = e.args
            return f"({self._wrap(base, _MUL)}//{self._wrap(div, _MUL)}) % {mod}", _MUL
        if isinstance(e, fn.CeilDiv):
            return f"ceil({self._wrap(e.args[0], _MUL)}/{self._wrap(e.args[1], _MUL)})", _ATOM
        if isinstance(e, (_MAX, _MIN)):
            inner = ", ".join(self._text(a)[0] for a in e.args)
            return f"{'max' if isinstance(e, _MAX) else 'min'}({inner})", _ATOM
        return self._text_logic(e)

    def _text_logic(self, e: sympy.Basic) -> tuple[str, int]:
        if isinstance(e, sympy.And):
            return " and ".join(self._wrap(a, _AND) for a in e.args), _AND
        if isinstance(e, sympy.Or):
            return " or ".join(self._wrap(a, _OR) for a in e.args), _OR
        if isinstance(e, sympy.Not):
            return f"not {self._wrap(e.args[0], _NOT)}", _NOT
        for name, cls in (("ceil", fn.CeilToInt), ("floor", fn.FloorToInt), ("int", fn.TruncToInt)):
            if isinstance(e, cls):
                return f"{name}({self._text(e.args[0])[0]})", _ATOM
        if isinstance(e, (fn.IntTrueDiv, fn.FloatTrueDiv)):
            return f"{self._wrap(e.args[0], _MUL)}/{self._wrap(e.args[1], _MUL)}", _MUL
        return str(e), _ATOM

    def _text_add(self, e: sympy.Add) -> str:
        constant, rest = e.as_coeff_Add()
        terms = [*sympy.Add.make_args(rest), *([constant] if constant else [])]
        text = ""
        for term in terms:
            negative = term.could_extract_minus_sign()
            body = self._wrap(-term if negative else term, _ADD)
            text += (
                (" - " if negative else " + ") + body if text else ("-" if negative else "") + body
            )
        return text

    def _text_mul(self, e: sympy.Mul) -> tuple[str, int]:
        coefficient, factors = e.as_coeff_mul()
        if coefficient < 0:
            return "-" + self._wrap(-e, _UNARY), _UNARY
        texts = [self._wrap(f, _MUL) for f in factors]
        numerator = sympy.Rational(coefficient).p
        denominator = sympy.Rational(coefficient).q
        if numerator != 1:
            texts.insert(0, str(numerator))
        product = "*".join(texts)
        return (f"{product}/{denominator}" if denominator != 1 else product), _MUL

    # -- code -----------------------------------------------------------------------------------
    def _code(self, e: sympy.Basic) -> str:
        if isinstance(e, sympy.Symbol):
            if e not in self.names:
                raise _NoCode(str(e))  # an unbacked size: not a function of the input sizes
            return f"v_{self.names[e]}"
        if e.is_Integer:
            return f"({int(e)})"
        if e.is_Rational:
            return f"_q({e.p}, {e.q})"
        if isinstance(e, (sympy.logic.boolalg.BooleanTrue, sympy.logic.boolalg.BooleanFalse)):
            return str(bool(e))
        args = [self._code(a) for a in e.args]
        relation = _relation(e)
        if relation is not None:
            return f"({args[0]} {relation} {args[1]})"
        return self._code_of(e, args)

    def _code_of(self, e: sympy.Basic, args: list[str]) -> str:
        binary = {
            sympy.Add: " + ", sympy.Mul: " * ", sympy.And: " and ", sympy.Or: " or ",
        }  # fmt: skip
        for cls, joiner in binary.items():
            if isinstance(e, cls):
                return "(" + joiner.join(args) + ")"
        calls: dict[type, str] = {
            fn.FloorDiv: "({0}//{1})", fn.CleanDiv: "({0}//{1})", fn.Mod: "({0}%{1})",
            fn.PythonMod: "({0}%{1})", sympy.Mod: "({0}%{1})", sympy.Pow: "({0}**{1})",
            fn.PowByNatural: "({0}**{1})", fn.ModularIndexing: "(({0}//{1})%{2})",
            fn.CeilDiv: "(-((-{0})//{1}))", fn.IntTrueDiv: "_div({0}, {1})",
            fn.FloatTrueDiv: "_div({0}, {1})", fn.CeilToInt: "_ceil({0})",
            fn.FloorToInt: "_floor({0})", fn.TruncToInt: "_trunc({0})",
            sympy.Not: "(not {0})", sympy.floor: "_floor({0})", sympy.ceiling: "_ceil({0})",
        }  # fmt: skip
        for cls, template in calls.items():
            if type(e) is cls:
                return template.format(*args)
        if isinstance(e, (_MAX, _MIN)):
            return f"{'max' if isinstance(e, _MAX) else 'min'}({', '.join(args)})"
        if _IDENTITY is not None and isinstance(e, _IDENTITY):
            return args[0]
        raise _NoCode(type(e).__name__)


# -- making guards readable ------------------------------------------------------------------------
def _readable(expr: sympy.Basic) -> sympy.Basic:
    """An equivalent, plainer relation: ``8*X == 512`` -> ``X == 64``, ``(8*X) % 512 == 0`` ->
    ``X % 64 == 0``, ``H//4 >= 1`` -> ``H >= 4``, ``min(T, 64) == T`` -> ``T <= 64``."""
    relation = _relation(expr)
    if relation is None:
        return expr
    left, right = expr.args
    if left.is_number and not right.is_number:
        left, right, relation = right, left, _FLIPPED[relation]
    for rewrite in (_multiple, _scaled, _divisible, _floor_bound, _min_max):
        found = rewrite(left, right, relation)
        if found is not None:
            left, right, relation = found
    return _make(left, right, relation)


def _make(left: sympy.Basic, right: sympy.Basic, relation: str) -> sympy.Basic:
    cls = next(c for c, r in _RELATIONS.items() if r == relation)
    return cls(left, right, evaluate=False)


_Rewrite = tuple[sympy.Basic, sympy.Basic, str] | None


def _multiple(left: sympy.Basic, right: sympy.Basic, relation: str) -> _Rewrite:
    """``H == 4*(H//4)`` -> ``H % 4 == 0`` (either side first)."""
    for x, y in ((left, right), (right, left)):
        if relation in ("==", "!=") and isinstance(y, sympy.Mul) and len(y.args) == 2:
            n, floor = y.as_coeff_Mul()
            if type(floor) is fn.FloorDiv and floor.args == (x, n):
                return fn.Mod(x, n, evaluate=False), sympy.Integer(0), relation
    return None


def _scaled(left: sympy.Basic, right: sympy.Basic, relation: str) -> _Rewrite:
    if relation not in ("==", "!=") or not right.is_Integer or not isinstance(left, sympy.Mul):
        return None
    coefficient, rest = left.as_coeff_Mul()
    if not coefficient.is_Integer or coefficient <= 1 or int(right) % int(coefficient):
        return None
    return rest, sympy.Integer(int(right) // int(coefficient)), relation


def _divisible(left: sympy.Basic, right: sympy.Basic, relation: str) -> _Rewrite:
    if type(left) not in (fn.Mod, fn.PythonMod) or right != 0 or not left.args[1].is_Integer:
        return None
    coefficient, rest = left.args[0].as_coeff_Mul()
    if not coefficient.is_Integer:
        return None
    modulus = int(left.args[1]) // math.gcd(int(coefficient), int(left.args[1]))
    return fn.Mod(rest, sympy.Integer(modulus), evaluate=False), right, relation


def _floor_bound(left: sympy.Basic, right: sympy.Basic, relation: str) -> _Rewrite:
    if type(left) is not fn.FloorDiv or not right.is_Integer or not left.args[1].is_Integer:
        return None
    x, n, k = left.args[0], int(left.args[1]), int(right)
    if not isinstance(x, sympy.Symbol) or relation in ("==", "!="):
        return None
    bounds = {">=": (">=", n * k), ">": (">=", n * (k + 1)), "<=": ("<=", n * k + n - 1),
              "<": ("<=", n * k - 1)}  # fmt: skip
    new, limit = bounds[relation]
    return x, sympy.Integer(limit), new


def _min_max(left: sympy.Basic, right: sympy.Basic, relation: str) -> _Rewrite:
    if relation != "==" or not isinstance(left, (_MIN, _MAX)) or len(left.args) != 2:
        return None
    if right not in left.args:
        return None
    other = left.args[1] if left.args[0] == right else left.args[0]
    return right, other, "<=" if isinstance(left, _MIN) else ">="


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class _Call:
    """A row under construction."""

    path: str
    kind: Literal["module", "function"]
    type: str
    depth: int
    inputs: tuple[tuple[object, ...], ...]
    line: str | None = None
    outputs: tuple[tuple[object, ...], ...] = ()
    end: int = -1
    sources: tuple[int, ...] = ()  # ids of the input tensors, to find what produced them


def _tensors(obj: object) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(obj)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def _shapes(obj: object) -> tuple[tuple[object, ...], ...]:
    return tuple(tuple(t.shape) for t in _tensors(obj))


class _Stop(BaseException):
    """Ends a probe once the layer it is about has run (not an Exception: nothing catches it)."""


def _function_name(func: Callable[..., Any]) -> str:
    name = getattr(func, "__name__", "") or type(func).__name__
    if name == "__get__":  # a property such as Tensor.T
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    if name in ("fn", "boolean_dispatch"):  # F.max_pool2d and friends wrap a dispatcher
        name = (torch.overrides.resolve_name(func) or name).rsplit(".", 1)[-1]
    return name if name.startswith("__") else name.lstrip("_")


_SKIP = frozenset({"contiguous", "detach", "requires_grad_", "dim", "size", "numel", "stride"})


class _Recorder(TorchFunctionMode):
    """Module hooks and a function mode shared by the symbolic run and the reference run.

    With ``reference`` (results of a reference run, by call) the symbolic run gives any call
    that raises, or whose result has data-dependent sizes, the reference's result instead.
    """

    def __init__(self, model: nn.Module, reference: dict[tuple[object, ...], Any] | None) -> None:
        super().__init__()
        self.paths = PathIndex(model)
        self.reference = reference
        self.keep = False  # a reference run keeps each call's result (as metadata)
        self.results: dict[tuple[object, ...], Any] = {}
        self.calls: list[_Call] = []
        self.stack: list[tuple[ModuleFrame, _Call, tuple[object, ...]]] = []
        self.seen: dict[tuple[object, ...], int] = {}
        self.ended = 0
        self.busy = False
        self.function_running = ""  # the user-level op being run, for guards asked inside it
        self.on_substitute: Callable[[_Call, BaseException | None, bool], None] | None = None
        self.producer: dict[int, _Call] = {}  # id of a tensor -> the call that returned it
        self.stop_after: str | None = None

    def key(self, *parts: object) -> tuple[object, ...]:
        nth = self.seen.get(parts, 0)
        self.seen[parts] = nth + 1
        return (*parts, nth)

    @property
    def layer(self) -> tuple[str, str]:
        if not self.stack:
            return "", ""
        frame = self.stack[-1][0]
        return frame.path, type(frame.module).__name__

    # -- modules ----------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        parent = self.stack[-1][0] if self.stack else None
        path = self.paths.path_of(module, parent)
        user = not type(module).__module__.startswith("torch.")
        call = _Call(path, "module", type(module).__name__, len(self.stack), _shapes(args),
                     sources=tuple(id(t) for t in _tensors(args)))  # fmt: skip
        self.calls.append(call)
        self.stack.append((ModuleFrame(module, path, len(self.calls) - 1, user), call,
                           self.key("module", path)))  # fmt: skip

    def post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        while self.stack and self.stack[-1][0].module is not module:
            self.stack.pop()  # a call that raised inside and was answered by the reference
        if not self.stack:
            return
        _, call, key = self.stack.pop()
        call.outputs, call.end = _shapes(output), self._tick()
        self._produced(output, call)
        if self.keep:
            self.results[key] = _metadata(output)
        if call.path == self.stop_after:
            raise _Stop

    def _produced(self, output: Any, call: _Call) -> None:
        for tensor in _tensors(output):
            self.producer[id(tensor)] = call

    def _tick(self) -> int:
        self.ended += 1
        return self.ended

    def wrap(self, module: nn.Module, rules: bool) -> Callable[..., Any]:
        """A forward that gives the output shapes by a rule where one applies (recurrent layers,
        in symbolic runs), and where the call cannot run symbolically takes the reference run's
        result (when there is one)."""
        forward = module.forward
        recorder = self

        def forward_or_reference(*args: Any, **kwargs: Any) -> Any:
            key, call = recorder.stack[-1][2], recorder.stack[-1][1]
            made = _by_rule(module, args, kwargs) if rules else None
            if made is not None:
                return made
            try:
                output = forward(*args, **kwargs)
            except Exception as error:
                if recorder.reference is None:
                    raise
                while recorder.stack and recorder.stack[-1][1] is not call:
                    recorder.stack.pop()  # calls inside that raised never reached their hook
                return recorder.substitute(key, call, error, None)
            return recorder.substitute(key, call, None, output) if _unbacked(output) else output

        return forward_or_reference

    def substitute(
        self, key: tuple[object, ...], call: _Call, error: BaseException | None, output: Any
    ) -> Any:
        """The reference's result for this call; without one, the call's own outcome."""
        if self.reference is None or key not in self.reference:
            if error is not None:
                raise error
            return output
        result = self.reference[key]
        if self.on_substitute is not None:
            value = not any(isinstance(leaf, _Meta) for leaf in tree_flatten(result)[0])
            self.on_substitute(call, error, value)
        return _from_metadata(result)

    # -- functions ------------------------------------------------------------------------
    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Every torch function called while the recorder is entered as a mode comes here."""
        return self.function(func, args, kwargs or {})

    def function(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self.busy or not self.stack or not self.stack[-1][0].records_functions:
            return func(*args, **kwargs)
        name = _function_name(func)
        if name in _SKIP:
            return func(*args, **kwargs)
        self.busy = True
        try:
            path = self.stack[-1][0].path
            line = caller_source(skip=3)
            tensors = _tensors((args, kwargs))
            call = _Call(path, "function", name, len(self.stack),
                         tuple(tuple(t.shape) for t in tensors), line,
                         sources=tuple(id(t) for t in tensors))  # fmt: skip
            key = self.key("function", path, name, line)
        finally:
            self.busy = False
        outer, self.function_running = self.function_running, name
        try:
            result = self._run_function(func, args, kwargs, key, call)
        finally:
            self.function_running = outer
        call.end, call.outputs = self._tick(), _shapes(result)
        self._produced(result, call)
        if self.keep:
            self.results[key] = _metadata(result)
        if call.outputs:
            self.calls.append(call)
        return result

    def _run_function(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        key: tuple[object, ...],
        call: _Call,
    ) -> Any:
        if self.reference is None:
            return func(*args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except Exception as error:
            return self.substitute(key, call, error, None)
        return self.substitute(key, call, None, result) if _unbacked(result) else result


@dataclass(frozen=True)
class _Meta:
    """A tensor of a reference run, without its data."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


def _metadata(obj: Any) -> Any:
    def meta(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            shape = tuple(int(d) for d in t.shape) if not _unbacked(t) else None
            return None if shape is None else _Meta(shape, tuple(t.stride()), t.dtype, t.device)
        if isinstance(t, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return None
        return t

    return tree_map(meta, obj)


def _from_metadata(obj: Any) -> Any:
    def make(t: Any) -> Any:
        if isinstance(t, _Meta):
            return torch.empty_strided(t.shape, t.stride, dtype=t.dtype, device=t.device)
        return t

    return tree_map(make, obj)


def _unbacked(obj: Any) -> bool:
    leaves, _ = tree_flatten(obj)
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and free_unbacked_symbols(leaf.shape):
            return True
        if isinstance(leaf, (torch.SymInt, torch.SymFloat, torch.SymBool)) and (
            free_unbacked_symbols(leaf)
        ):
            return True
    return False


@contextmanager
def _hooks(model: nn.Module, recorder: _Recorder, symbolic: bool) -> Iterator[None]:
    """Hooks on every module; forwards wrapped where a rule or the reference may answer."""
    handles = []
    wrapped: list[tuple[nn.Module, object]] = []
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(recorder.pre_hook))
            handles.append(module.register_forward_hook(recorder.post_hook))
            rules = symbolic and isinstance(module, nn.RNNBase)
            if rules or recorder.reference is not None:
                wrapped.append((module, vars(module).get("forward", _ABSENT)))
                module.forward = recorder.wrap(module, rules)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, old in wrapped:
            if old is _ABSENT:
                vars(module).pop("forward", None)
            else:
                module.forward = cast(Callable[..., Any], old)


_ABSENT = object()


def _by_rule(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The outputs of a recurrent layer, whose kernels (or their decompositions, which loop over
    time) need concrete sizes: after the layer's own checks of its input and state, tensors of
    the shapes it returns. None when no rule applies (packed sequences, other modules)."""
    x = args[0] if args else kwargs.get("input")
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    if not isinstance(module, nn.RNNBase):
        return None
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        return None
    batched = x.dim() == 3
    x3 = x if batched else x.unsqueeze(0 if module.batch_first else 1)
    module.check_input(x3, None)
    if hx is not None:
        module.check_forward_args(x3, hx if batched else _unsqueezed(hx), None)
    seq, batch = (x3.shape[1], x3.shape[0]) if module.batch_first else (x3.shape[0], x3.shape[1])
    lead: list[Any] = [batch] if batched else []
    directions = 2 if module.bidirectional else 1
    out = module.proj_size or module.hidden_size
    shape = [batch, seq] if module.batch_first and batched else [seq, *lead]
    y = x.new_empty([*shape, directions * out])
    states = directions * module.num_layers
    h = x.new_empty([states, *lead, out])
    if isinstance(module, nn.LSTM):
        return y, (h, x.new_empty([states, *lead, module.hidden_size]))
    return y, h


def _unsqueezed(hx: Any) -> Any:
    """An unbatched state with its batch dim (a tuple for LSTM)."""
    return tree_map(lambda t: t.unsqueeze(1) if isinstance(t, torch.Tensor) else t, hx)


@contextmanager
def _quiet() -> Iterator[None]:
    """Fake mode and the ShapeEnv log every op they cannot run; the trace reports them."""
    loggers = [logging.getLogger(name) for name in _QUIET]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class _GuardLog(list):  # type: ignore[type-arg]
    """The ShapeEnv's guard list; each guard appended is classified while its stack is live."""

    def __init__(self, owner: _Symbolic) -> None:
        super().__init__()
        self.owner = owner

    def append(self, guard: Any) -> None:
        super().append(guard)
        self.owner.on_guard(guard.expr, sys._getframe(1))


@dataclass
class _Seen:
    """A guard as recorded, before it is printed."""

    expr: sympy.Basic
    kind: Kind
    layer: tuple[str, str]
    op: str
    line: str | None
    pinned: tuple[sympy.Symbol, ...] = ()
    reason: str = ""
    function: str = ""


class _Symbolic:
    """One symbolic run: the ShapeEnv, the symbols, the recorder and what the guards said."""

    def __init__(self, plans: Sequence[Plan], sizes: Mapping[str, int]) -> None:
        self.plans, self.sizes = plans, sizes
        self.env = ShapeEnv(duck_shape=False)
        self.env.guards = _GuardLog(self)
        self.mode = FakeTensorMode(shape_env=self.env, allow_non_fake_inputs=True)
        self.symbols: dict[str, torch.SymInt | int] = {}
        self.names: dict[sympy.Symbol, str] = {}
        self.seen: list[_Seen] = []
        self.recorder: _Recorder | None = None
        self.entry: FrameType | None = None
        self.replaced = 0

    def make_inputs(self) -> list[torch.Tensor]:
        for plan in self.plans:
            for dim in plan.dims:
                if isinstance(dim, str) and dim not in self.symbols:
                    hint = self.sizes[dim]
                    expr = self.env.create_symbol(hint, ConstantSource(dim), DimDynamic.DYNAMIC)
                    if isinstance(expr, sympy.Symbol):
                        self.names[expr] = dim
                    self.symbols[dim] = self.env.create_symintnode(expr, hint=hint)
        with self.mode:
            return [
                torch.empty([self.symbols[d] if isinstance(d, str) else d for d in plan.dims],
                            dtype=plan.dtype, device=plan.device)
                for plan in self.plans
            ]  # fmt: skip

    # -- guards ------------------------------------------------------------------------------
    def on_guard(self, expr: sympy.Basic, frame: FrameType | None) -> None:
        """Classify a guard by who asked: torch._check (a check), torch code (a branch) or
        only the user's code (``int(x.shape[3])``, ``if h > 16``)."""
        names: list[str] = []
        line = None
        while frame is not None and frame is not self.entry:
            filename = frame.f_code.co_filename
            if filename.startswith(_TORCH_DIR):
                relative = filename[len(_TORCH_DIR) + 1 :].replace("\\", "/")
                if not relative.startswith(_MACHINERY) or frame.f_code.co_name in _CHECKS:
                    names.append(frame.f_code.co_name)
            elif _is_user_file(filename):
                line = f"{filename}:{frame.f_lineno}"
                break
            frame = frame.f_back
        kind: Kind = "check" if _CHECKS & set(names) else "branch" if names else "user"
        op = next((n for n in names if n not in _CHECKS), "")
        layer = self.recorder.layer if self.recorder else ("", "")
        reason = f"{op} needs it as a fixed number" if op else "the code uses it as a plain int"
        running = self.recorder.function_running if self.recorder else ""
        self.seen.append(
            _Seen(expr, kind, layer, op, line, self._new_replacements(), reason, running)
        )

    def _new_replacements(self) -> tuple[sympy.Symbol, ...]:
        replacements = self.env.replacements
        if len(replacements) == self.replaced:
            return ()
        new = list(replacements)[self.replaced :]
        self.replaced = len(replacements)
        return tuple(s for s in new if s in self.names and replacements[s].is_number)

    def on_substitute(self, call: _Call, error: BaseException | None, value: bool) -> None:
        """A call answered by the reference run: the symbols its inputs (or, for a value such
        as ``.item()``, the tensors it was computed from) depend on are pinned at their hints."""
        line = call.line or (traceback_source(error.__traceback__) if error else None)
        layer = self.recorder.layer if self.recorder and call.kind == "function" else (
            call.path, call.type)  # fmt: skip
        op = call.type if call.kind == "function" else ""
        why = (
            "its result is a value read from the data"
            if value and error is None
            else _reason(error)
        )
        reason = f"{op}: {why}" if op else why
        for symbol in sorted(self._depends_on(call), key=str):
            expr = sympy.Eq(symbol, self.sizes[self.names[symbol]])
            self.seen.append(_Seen(expr, "pin", layer, op, line, (symbol,), reason))

    def _depends_on(self, call: _Call) -> set[sympy.Symbol]:
        producer = self.recorder.producer if self.recorder else {}
        free: set[sympy.Symbol] = set()
        todo, seen = [call], 0
        while todo and not free and seen < 16:  # walk back to the first symbolic sizes
            current = todo.pop()
            seen += 1
            for shape in current.inputs:
                for size in shape:
                    if isinstance(size, torch.SymInt):
                        free |= size.node.expr.free_symbols
            todo += [producer[i] for i in current.sources if i in producer]
        return {s for s in free if s in self.names}

    # -- the records -------------------------------------------------------------------------
    def piece(self, output: Any, error: str | None = None, error_layer: str = "") -> Piece:
        printer = _Printer(self.names)
        formula = self._formula(printer)
        rows = tuple(
            Row(c.path, c.kind, c.type, c.depth,
                tuple(tuple(formula(d) for d in s) for s in c.inputs),
                tuple(tuple(formula(d) for d in s) for s in c.outputs), c.line, c.end)
            for c in (self.recorder.calls if self.recorder else [])
        )  # fmt: skip
        outputs = tuple(tuple(formula(d) for d in s) for s in _shapes(output))
        guards = (*self._domain(), *(g for seen in self.seen for g in self._guards(seen, printer)))
        pins = tuple(p for seen in self.seen for p in self._pins(seen))
        return Piece(dict(self.sizes), rows, outputs, guards, pins, error, error_layer)

    def _domain(self) -> Iterator[Guard]:
        """Symbols are traced for sizes >= 2 (torch fixes 0 and 1): a size 1 needs its own trace,
        where that symbol is fixed."""
        for name, hint in self.sizes.items():
            text, code = (f"{name} >= 2", f"(v_{name} >= 2)") if hint >= 2 else (
                f"{name} == {hint}", f"(v_{name} == {hint})")  # fmt: skip
            kind: Kind = "branch" if hint >= 2 else "pin"
            yield Guard(text, code, kind, text.split()[1], "", "", "", None, (name,), False)

    def _formula(self, printer: _Printer) -> Callable[[object], Formula]:
        def formula(size: object) -> Formula:
            if isinstance(size, torch.SymInt):
                return printer.formula(self.env.simplify(size.node.expr))
            return printer.formula(int(size))  # type: ignore[call-overload]

        return formula

    def _guards(self, seen: _Seen, printer: _Printer) -> Iterator[Guard]:
        for part in sympy.And.make_args(seen.expr):
            shown = self.env.replace(part)
            symbols = tuple(sorted({self.names.get(s, str(s)) for s in part.free_symbols}))
            yield Guard(
                printer.text(_readable(shown)), printer.code(part), seen.kind,
                _relation(part) or "other", seen.layer[0], seen.layer[1], seen.op, seen.line,
                symbols, shown is not sympy.true, seen.function,
            )  # fmt: skip

    def _pins(self, seen: _Seen) -> Iterator[Pin]:
        for symbol in seen.pinned:
            name = self.names[symbol]
            yield Pin(name, self.sizes[name], seen.layer[0], seen.layer[1], seen.line, seen.reason)


def _reason(error: BaseException | None) -> str:
    if error is None:
        return "its output sizes depend on the data"
    if isinstance(error, (DataDependentOutputException, GuardOnDataDependentSymNode)):
        return "it reads tensor values (data-dependent)"
    if isinstance(error, DynamicOutputShapeException):
        return "its output sizes depend on the data"
    text = str(error).strip().splitlines()
    return f"no symbolic-shape support ({type(error).__name__}: {text[0] if text else ''})"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


# -- running ---------------------------------------------------------------------------------------
def trace(
    model: nn.Module, plans: Sequence[Plan], sizes: Mapping[str, int], stop_after: str | None = None
) -> Piece:
    """Trace ``model`` with symbolic sizes hinted at ``sizes``; never raises for the model.

    When fake tensors cannot follow a call, a reference run at ``sizes`` answers it (see the
    module docstring); when the reference run raises too, the piece records the error. With
    ``stop_after`` (a module path) the trace ends once that module has run: the piece is then
    not ``complete``.
    """
    with _quiet(), torch.no_grad(), _restored(model):
        state, output, error = _symbolic_run(model, plans, sizes, None, stop_after)
        if isinstance(error, _Stopped):
            return replace(state.piece(None), complete=False)
        if error is None and not _unbacked_rows(state):
            return state.piece(output)
        results, ref_error, ref_layer = _reference_run(model, plans, sizes)
        if ref_error is not None:
            return _failed(state, plans, sizes, error, ref_error, ref_layer)
        state, output, error = _symbolic_run(model, plans, sizes, results)
        if error is not None:  # the reference answers every call; this is shapecheck's limit
            return _failed(state, plans, sizes, error, error, "")
        return state.piece(output)


def _unbacked_rows(state: _Symbolic) -> bool:
    calls = state.recorder.calls if state.recorder else []
    return any(_unbacked_shape(s) for c in calls for s in c.outputs)


def _unbacked_shape(shape: tuple[object, ...]) -> bool:
    return any(isinstance(d, torch.SymInt) and free_unbacked_symbols(d) for d in shape)


def _failed(
    state: _Symbolic,
    plans: Sequence[Plan],
    sizes: Mapping[str, int],
    symbolic: BaseException | None,
    error: BaseException,
    layer: str,
) -> Piece:
    """The forward raises at ``sizes``: where the symbolic run failed the same way its guards
    say where else it raises; otherwise only these sizes are known."""
    if symbolic is None or isinstance(symbolic, _FAKE_LIMITS):
        state.seen = [
            _Seen(sympy.Eq(s, state.sizes[n]), "pin", ("", ""), "", None, (), "")
            for s, n in state.names.items()
        ]
    return state.piece(None, _first_line(error), layer)


class _Stopped(Exception):
    """The probe ended where it was asked to."""


def _symbolic_run(
    model: nn.Module,
    plans: Sequence[Plan],
    sizes: Mapping[str, int],
    reference: dict[tuple[object, ...], Any] | None,
    stop_after: str | None = None,
) -> tuple[_Symbolic, Any, BaseException | None]:
    state = _Symbolic(plans, sizes)
    recorder = _Recorder(model, reference)
    recorder.stop_after = stop_after
    recorder.on_substitute = state.on_substitute
    state.recorder = recorder
    inputs = state.make_inputs()
    output: Any = None
    try:
        with ExitStack() as stack:
            stack.enter_context(state.mode)
            stack.enter_context(_hooks(model, recorder, symbolic=True))
            stack.enter_context(recorder)
            state.entry = sys._getframe()
            output = model(*inputs)
    except _Stop:
        return state, None, _Stopped()
    except Exception as error:
        return state, None, error
    return state, output, None


def _reference_run(
    model: nn.Module, plans: Sequence[Plan], sizes: Mapping[str, int]
) -> tuple[dict[tuple[object, ...], Any], BaseException | None, str]:
    """Each call's result at ``sizes`` (tensors as metadata): on fake tensors of fixed sizes,
    or, when those cannot run it, for real on the example's values."""
    recorder = _Recorder(model, None)
    recorder.keep = True
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        fakes = [torch.empty(p.shape(sizes), dtype=p.dtype, device=p.device) for p in plans]
    error = _run_recorded(model, recorder, fakes, mode)
    if isinstance(error, _FAKE_LIMITS):
        recorder = _Recorder(model, None)
        recorder.keep = True
        error = _run_recorded(model, recorder, _values(plans, sizes), None)
    return recorder.results, error, recorder.layer[0]


def _run_recorded(
    model: nn.Module, recorder: _Recorder, inputs: list[torch.Tensor], mode: Any
) -> BaseException | None:
    try:
        with ExitStack() as stack:
            if mode is not None:
                stack.enter_context(mode)
            stack.enter_context(_hooks(model, recorder, symbolic=False))
            stack.enter_context(recorder)
            model(*inputs)
    except Exception as error:
        return error
    return None


def _values(plans: Sequence[Plan], sizes: Mapping[str, int]) -> list[torch.Tensor]:
    """Real inputs of the given sizes: the example itself, or values drawn from it."""
    generator = torch.Generator().manual_seed(0)
    made = []
    for plan in plans:
        shape = plan.shape(sizes)
        example = plan.values
        if example is not None and tuple(example.shape) == shape:
            made.append(example)
        elif example is not None and example.numel():
            picks = torch.randint(0, example.numel(), shape, generator=generator)
            made.append(example.flatten()[picks.to(example.device)])
        elif plan.dtype.is_floating_point:
            made.append(torch.randn(shape, generator=generator).to(plan.device, plan.dtype))
        else:
            made.append(torch.zeros(shape, dtype=plan.dtype, device=plan.device))
    return made


@contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """A trace leaves no trace: buffers (BatchNorm statistics, which even fake mode counts up
    in ``num_batches_tracked``, and a real run updates) and the RNG are put back."""
    buffers = [(b, b.detach().clone()) for b in model.buffers() if b.device.type != "meta"]
    rng = torch.get_rng_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    cuda_rng = torch.cuda.get_rng_state_all() if cuda else None
    try:
        yield
    finally:
        for live, saved in buffers:
            live.copy_(saved)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
