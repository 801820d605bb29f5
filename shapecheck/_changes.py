"""Fixes as plain records: what to change, where, and with which hyper-parameters.

A fix never holds a module, a tensor or a function. ``shapecheck._fixes`` is the one interpreter
that turns a record into a change on whatever model it is handed, for a re-run or for
``apply``; the rules only fill these records in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

__all__ = [
    "Build",
    "CallRewrite",
    "ConvertModel",
    "EditInput",
    "EditLayerInput",
    "EditTarget",
    "Fix",
    "FixKind",
    "InsertModule",
    "Parallelize",
    "RegisterModules",
    "ReplaceModule",
    "RewriteCall",
    "RouteByRank",
    "SetAttributes",
    "TensorOp",
    "Together",
    "edits_of",
]

Options = tuple[tuple[str, Any], ...]


class FixKind(Enum):
    """What a fix does; the interpreter has one entry per kind."""

    SUGGESTION = "suggestion"  # advice only: nothing a re-run could try
    INSERT_MODULE = "insert-module"
    REPLACE_MODULE = "replace-module"
    SET_ATTRIBUTES = "set-attributes"
    ROUTE_BY_RANK = "route-by-rank"
    EDIT_LAYER_INPUT = "edit-layer-input"
    EDIT_INPUT = "edit-input"
    REWRITE_CALL = "rewrite-call"
    PROJECT_OPERAND = "project-operand"
    EDIT_TARGET = "edit-target"
    CONVERT_MODEL = "convert-model"
    REGISTER_MODULES = "register-modules"
    PARALLELIZE = "parallelize"
    TOGETHER = "together"


class CallRewrite(Enum):
    """How a functional call is rewritten in place (``RewriteCall``)."""

    FLATTEN_PER_SAMPLE = "flatten-per-sample"  # x.view(-1, n) -> x.flatten(1)
    RESIZE_TO_FIRST = "resize-to-first"  # torch.cat([a, b]) with b resized to a's spatial size
    SIZES = "sizes"  # x.view(2, 8, 4, 16) -> x.view(*RewriteCall.sizes)
    RESHAPE = "reshape"  # x.view(...) -> x.reshape(...): copies when the memory order needs it


@dataclass(frozen=True)
class TensorOp:
    """One tensor method, or ``F.interpolate``, with plain arguments: ``x.flatten(1)``.

    A dtype is written by name (``TensorOp("to", ("float64",))``).
    """

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Options = ()


@dataclass(frozen=True)
class Build:
    """A ``torch.nn`` module to build, its arguments plain values or other Builds.

    The interpreter gives it the dtype and device of the module it replaces (or feeds).
    """

    cls: str
    args: tuple[Any, ...] = ()
    kwargs: Options = ()


@dataclass(frozen=True)
class Fix:
    """A change in words (``summary``) and as code to write (``code``); this base: advice."""

    summary: str
    code: str
    kind: ClassVar[FixKind] = FixKind.SUGGESTION
    #: what it edits; only "model" fixes can be kept in a copy of the model (``apply``)
    edits: ClassVar[str] = "nothing: it is a suggestion"


@dataclass(frozen=True)
class InsertModule(Fix):
    """Insert a module into the ``nn.Sequential`` at ``sequential``, before ``index``."""

    kind: ClassVar[FixKind] = FixKind.INSERT_MODULE
    edits: ClassVar[str] = "model"
    sequential: str = ""
    index: int = 0
    build: Build = Build("Identity")


@dataclass(frozen=True)
class ReplaceModule(Fix):
    """Replace the module at ``path`` with a new one (fresh weights)."""

    kind: ClassVar[FixKind] = FixKind.REPLACE_MODULE
    edits: ClassVar[str] = "model"
    path: str = ""
    build: Build = Build("Identity")


@dataclass(frozen=True)
class SetAttributes(Fix):
    """The module at ``path``, same weights, with attributes changed (``batch_first``)."""

    kind: ClassVar[FixKind] = FixKind.SET_ATTRIBUTES
    edits: ClassVar[str] = "model"
    path: str = ""
    values: Options = ()


@dataclass(frozen=True)
class RouteByRank(Fix):
    """A new module for the calls whose input has ``rank`` dims (and ``channels`` at dim 1,
    when not 0); the old one keeps the other calls: one layer name used for two layers."""

    kind: ClassVar[FixKind] = FixKind.ROUTE_BY_RANK
    edits: ClassVar[str] = "model"
    path: str = ""
    build: Build = Build("Identity")
    rank: int = 0
    channels: int = 0


@dataclass(frozen=True)
class EditLayerInput(Fix):
    """Apply ``ops`` to what the module at ``path`` is given: its first argument, or (with
    ``every_like``) every floating tensor argument of that shape (``attn(x, x, x)``)."""

    kind: ClassVar[FixKind] = FixKind.EDIT_LAYER_INPUT
    edits: ClassVar[str] = "model"
    path: str = ""
    ops: tuple[TensorOp, ...] = ()
    every_like: tuple[int, ...] | None = None


@dataclass(frozen=True)
class EditInput(Fix):
    """Apply ``ops`` to the model's positional input ``position``."""

    kind: ClassVar[FixKind] = FixKind.EDIT_INPUT
    edits: ClassVar[str] = "the input"
    position: int = 0
    ops: tuple[TensorOp, ...] = ()


@dataclass(frozen=True)
class RewriteCall(Fix):
    """Rewrite one functional call of ``forward``, found by its source line and name
    (``source="*"``: that call on every line, as a size used on several lines needs)."""

    kind: ClassVar[FixKind] = FixKind.REWRITE_CALL
    edits: ClassVar[str] = "a line of forward()"
    source: str = ""
    name: str = ""
    rewrite: CallRewrite = CallRewrite.FLATTEN_PER_SAMPLE
    #: ``CallRewrite.SIZES``: a ``view``/``reshape`` asking for ``asked`` gets ``sizes``
    #: instead; calls asking for other sizes run as written
    asked: tuple[int, ...] = ()
    sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ProjectOperand(Fix):
    """At one functional call of ``forward`` (found by its source line and name), pass operand
    ``operand`` through a projection whenever it does not match the other one: the
    ``downsample`` a residual shortcut lacks, made for each shape that needs one."""

    kind: ClassVar[FixKind] = FixKind.PROJECT_OPERAND
    edits: ClassVar[str] = "a line of forward()"
    source: str = ""
    name: str = ""
    operand: int = 1


@dataclass(frozen=True)
class EditTarget(Fix):
    """Apply ``ops`` to the loss target (``target.argmax(dim=1)``)."""

    kind: ClassVar[FixKind] = FixKind.EDIT_TARGET
    edits: ClassVar[str] = "the loss target"
    ops: tuple[TensorOp, ...] = ()


@dataclass(frozen=True)
class ConvertModel(Fix):
    """The whole model converted to ``dtype`` and/or moved to ``device``."""

    kind: ClassVar[FixKind] = FixKind.CONVERT_MODEL
    edits: ClassVar[str] = "model"
    dtype: str | None = None
    device: str | None = None


@dataclass(frozen=True)
class RegisterModules(Fix):
    """A plain list or dict of modules at ``owner``.``name`` registered (``nn.ModuleList`` or
    ``nn.ModuleDict``), its modules moved to ``device``."""

    kind: ClassVar[FixKind] = FixKind.REGISTER_MODULES
    edits: ClassVar[str] = "model"
    owner: str = ""
    name: str = ""
    device: str = "cpu"


@dataclass(frozen=True)
class Parallelize(Fix):
    """A new module ``build`` at ``path``, parallelised with the ParallelStyle named ``style``
    (``"ColwiseParallel"``, ``"RowwiseParallel"``) on the mesh of the module it replaces."""

    kind: ClassVar[FixKind] = FixKind.PARALLELIZE
    edits: ClassVar[str] = "model"
    path: str = ""
    build: Build = Build("Identity")
    style: str = "RowwiseParallel"


@dataclass(frozen=True)
class Together(Fix):
    """Several fixes at once (one change in several places)."""

    kind: ClassVar[FixKind] = FixKind.TOGETHER
    parts: tuple[Fix, ...] = ()


def edits_of(fix: Fix) -> str:
    """What ``fix`` edits; several parts at once: the first that is not the model, if any."""
    if isinstance(fix, Together):
        return next((edits_of(p) for p in fix.parts if edits_of(p) != "model"), "model")
    return fix.edits
