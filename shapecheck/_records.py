"""Plain, frozen records of one traced forward pass: tensors, layers, the failure, diagnoses.

Nothing here touches ``torch.nn`` or formats text; the tracer and the repair stage fill these
in, the renderer and the serialiser read them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from ._text import call_text

if TYPE_CHECKING:
    from torch import nn

    from ._changes import Fix

__all__ = [
    "CallArguments",
    "Diagnosis",
    "Evidence",
    "Failure",
    "Layer",
    "Outcome",
    "Shape",
    "Step",
    "TensorInfo",
    "TrainingMemory",
    "Written",
    "dtype_bytes",
    "record_of",
]

Shape = tuple[int, ...]
#: One line of a message's evidence: its label (``got``, ``expected``, ``PyTorch``) and text.
Evidence = tuple[str, str]

_DTYPE_BYTES = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "bfloat16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "complex32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
    "complex64": 8,
    "complex128": 16,
}


_Record = TypeVar("_Record")


def record_of(cls: type[_Record], fields: dict[str, Any]) -> _Record:
    """``cls(**fields)`` for the tracer's hot path, ``fields`` naming every field of ``cls``.

    The same frozen record, made without the dataclass ``__init__``'s one ``object.__setattr__``
    per field (1.2 µs of a TensorInfo's 1.5; the tracer makes one per tensor of every call).
    """
    record = object.__new__(cls)
    record.__dict__.update(fields)
    return record


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype named as in ``str(torch.float32)`` minus ``torch.``."""
    return _DTYPE_BYTES.get(dtype, 4)


@dataclass(frozen=True)
class TensorInfo:
    """What the trace keeps of one tensor: its shape, dtype and device, never its data.

    Provenance, recorded while tracing: ``key`` tells tensor objects apart within one trace,
    ``made_by`` is the index of the row whose call first returned it, and ``model_input`` the
    position of the model's positional argument that it is (None when it is neither).

    On a sharded model ``shape`` is this rank's (local) shape; a DTensor, or a module output
    that a ParallelStyle turned back into a local tensor, also has its ``global_shape``, its
    ``placements`` (one per mesh dim: ``"S(0)"``, ``"R"``, ``"P(sum)"``, ``"S(0, sf=2)"`` for
    a strided shard) and the ``mesh_shape`` they refer to; None for plain tensors.
    """

    shape: Shape
    dtype: str
    device: str
    requires_grad: bool = False
    key: int | None = field(default=None, compare=False)
    made_by: int | None = field(default=None, compare=False)
    model_input: int | None = field(default=None, compare=False)
    global_shape: Shape | None = None
    placements: tuple[str, ...] | None = None
    mesh_shape: Shape | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_bytes(self.dtype)


@dataclass(frozen=True)
class Written:
    """An argument kept as the text a table shows for it (``T`` for a tensor, ``'cuda:0'``,
    ``[3 tensors]``): what a call was given, without holding on to it."""

    text: str

    def __repr__(self) -> str:
        return self.text


class CallArguments(NamedTuple):
    """A functional call's arguments after its first (the tensor the call is about), as plain
    values: numbers, strings, None, dtypes and tuples of them; anything else :class:`Written`.
    Keywords equal to the function's defaults are left out. Text is made only when asked
    (:attr:`Layer.arguments`): most traces are never rendered."""

    positional: tuple[object, ...]
    keywords: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Layer:
    """One call in the forward pass: a module's forward, or a functional op between modules.

    A module called twice gives two layers. ``outputs`` is empty when the call raised.
    ``params`` counts the parameters the module owns (global sizes on a sharded model);
    ``rank_params`` and ``rank_param_bytes`` what this rank holds of them, read from the
    sharded parameters before the forward (FSDP2 gathers them inside it), and
    ``param_placements`` each DTensor parameter's placements; None and ``()`` when unsharded.
    """

    index: int
    path: str
    kind: Literal["module", "function"]
    type: str
    depth: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    params: int
    trainable: int
    #: a module row's class with the hyper-parameters that decide shapes; "" for a function
    description: str
    parent: int | None = None
    failed: bool = False
    source: str | None = None
    #: a function row's arguments (None for a module): see :attr:`arguments`
    call: CallArguments | None = None
    flops: int | None = None
    #: calls inside this one that do work but have no FLOPs formula: ``flops`` is then a floor
    flops_uncounted: int = 0
    rank_params: int | None = None
    rank_param_bytes: int | None = None
    param_placements: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @functools.cached_property
    def arguments(self) -> str:
        """A function row's arguments after its first, as written in code: ``-1, 512``."""
        return call_text(*self.call) if self.call is not None else ""

    @functools.cached_property
    def summary(self) -> str:
        """``Conv2d(3→16, k=3, p=1)`` for a module, ``view(-1, 512)`` for a function call."""
        return self.description if self.kind == "module" else f"{self.type}({self.arguments})"

    @property
    def input_shapes(self) -> list[Shape]:
        return [t.shape for t in self.inputs]

    @property
    def output_shapes(self) -> list[Shape]:
        return [t.shape for t in self.outputs]

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.outputs)


@dataclass(frozen=True)
class Failure:
    """Where the forward pass raised, and with what.

    ``path`` is the innermost module whose forward was running (``""`` for the root);
    ``type`` is that module's class, or the function's name when a functional op raised.
    """

    path: str
    type: str
    inputs: tuple[TensorInfo, ...]
    exception: BaseException
    source: str | None
    layer_index: int | None
    #: (min, max) of the failing call's first integer input, read on a real run (ids that an
    #: Embedding cannot look up); None on fake tensors or for other inputs
    value_range: tuple[int, int] | None = None

    @property
    def input_shapes(self) -> list[Shape]:
        return [t.shape for t in self.inputs]

    @property
    def message(self) -> str:
        """PyTorch's own message, verbatim (first line)."""
        text = str(self.exception).strip()
        return text.splitlines()[0] if text else type(self.exception).__name__


@dataclass(frozen=True)
class Outcome:
    """What a re-run of the model with a fix (and the plan's steps before it) showed.

    ``by`` says how: ``"real run"`` (real tensors, real kernels) or ``"dry run"`` (fake
    tensors: shapes only; dtype and kernel checks that only real kernels make are not seen).
    ``keeps_batch`` compares the output's leading dim with the samples fed in (an unbatched
    input counts as one); None when that cannot be told (no tensor input or output). A real
    check of a batch too large to run whole runs its first sample (``real_samples``); the
    shapes are then the dry run's.
    When the model still fails, ``failed_*`` say where and ``same`` whether it is the failure
    the fix was for (no progress).
    """

    runs: bool
    by: Literal["real run", "dry run"]
    output_shapes: tuple[Shape, ...] = ()
    samples: int | None = None
    keeps_batch: bool | None = None
    #: a real run on fewer samples than fed (1: the batch was too large to run whole)
    real_samples: int | None = None
    failed_path: str | None = None
    failed_type: str | None = None
    failed_call: int = 0
    failed_inputs: tuple[Shape, ...] = ()
    same: bool = False
    message: str = ""


@dataclass(frozen=True)
class Step:
    """One diagnosis of one failure: the message as data, the fix as a record, its outcome.

    ``headline`` names where; ``evidence`` are labelled lines (what the layer got, expected,
    PyTorch's own words); ``cause`` says why, ``arithmetic`` the working behind it.
    ``outcome`` is None for a fix no re-run tried (a suggestion, or the re-run budget was
    spent).
    """

    rule: str
    path: str
    headline: str
    evidence: tuple[Evidence, ...]
    cause: str
    change: Fix
    arithmetic: tuple[str, ...] = ()
    outcome: Outcome | None = None


@dataclass(frozen=True)
class Diagnosis:
    """A named cause of a failure (or a warning on a model that runs) and its repair plan.

    ``plan[0]`` is this diagnosis's own fix; when the model still fails elsewhere with it, the
    later steps fix what fails next. The plan is ``verified`` when the model runs after its
    last step, as ``verified_by`` says (``"real run"`` or ``"dry run"``: shapes only), and
    ``keeps_batch`` says whether its output still has one row per input sample. ``message``
    is the whole plan as text.

    Example:
        >>> import torch, shapecheck
        >>> from shapecheck.demo import seed_model
        >>> first = shapecheck.explain(seed_model(), torch.randn(1, 3, 32, 32)).diagnoses[0]
        >>> first.rule, first.verified, first.verified_by, first.keeps_batch
        ('missing-flatten', True, 'real run', True)
    """

    plan: tuple[Step, ...]
    message: str = ""
    #: fingerprint of the layers (paths and types) of the model the plan was made for
    made_for: int | None = field(default=None, repr=False, compare=False)

    @property
    def rule(self) -> str:
        return self.plan[0].rule

    @property
    def path(self) -> str:
        return self.plan[0].path

    @property
    def change(self) -> Fix:
        """The first step's fix, as a record."""
        return self.plan[0].change

    @property
    def fix(self) -> str:
        """The first step's fix as code to write."""
        return self.plan[0].change.code

    @property
    def _last(self) -> Outcome | None:
        return self.plan[-1].outcome

    @property
    def verified(self) -> bool:
        """True when a re-run with every step of the plan ran to the end."""
        return self._last is not None and self._last.runs

    @property
    def verified_by(self) -> Literal["real run", "dry run"] | None:
        return self._last.by if self._last is not None and self._last.runs else None

    @property
    def keeps_batch(self) -> bool | None:
        return self._last.keeps_batch if self._last is not None and self._last.runs else None

    @property
    def output_shapes_after_fix(self) -> list[Shape] | None:
        """The output shapes of the verified re-run; None when the plan did not run."""
        last = self._last
        return list(last.output_shapes) if last is not None and last.runs else None

    def apply(self, model: nn.Module) -> nn.Module:
        """A fixed copy of ``model``: every step of the plan, as its re-run verified it
        (:func:`shapecheck.apply_fix`)."""
        from . import apply_fix

        return apply_fix(self, model)


@dataclass(frozen=True)
class TrainingMemory:
    """An estimate, in bytes, of the peak memory of one training step, by part.

    ``saved`` is measured: the storages autograd keeps for backward (inputs included,
    parameters and buffers excluded since they are counted on their own). The rest is
    arithmetic on the unique parameters. ``shapecheck._memory`` says what is left out.
    """

    optimizer: str
    params: int
    buffers: int
    grads: int
    optimizer_state: int
    saved: int

    @property
    def total(self) -> int:
        return self.params + self.buffers + self.grads + self.optimizer_state + self.saved
