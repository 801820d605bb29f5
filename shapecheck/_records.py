"""Plain, frozen records of one traced forward pass: tensors, layers, the failure, diagnoses.

Nothing here touches ``torch.nn`` or formats tables; the tracer fills these in and the renderer
reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Diagnosis", "Failure", "Layer", "Shape", "TensorInfo"]

Shape = tuple[int, ...]

_DTYPE_BYTES = {
    "bool": 1, "uint8": 1, "int8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2,
    "int32": 4, "uint32": 4, "float32": 4, "complex32": 4,
    "int64": 8, "uint64": 8, "float64": 8, "complex64": 8, "complex128": 16,
}  # fmt: skip


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype named as in ``str(torch.float32)`` minus ``torch.``."""
    return _DTYPE_BYTES.get(dtype, 4)


@dataclass(frozen=True)
class TensorInfo:
    """What the trace keeps of one tensor: its shape, dtype and device, never its data."""

    shape: Shape
    dtype: str
    device: str
    requires_grad: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_bytes(self.dtype)


@dataclass(frozen=True)
class Layer:
    """One call in the forward pass: a module's forward, or a functional op between modules.

    A module called twice gives two layers. ``outputs`` is empty when the call raised.
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
    summary: str
    parent: int | None = None
    failed: bool = False
    source: str | None = None
    arguments: str = ""
    flops: int | None = None

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

    @property
    def input_shapes(self) -> list[Shape]:
        return [t.shape for t in self.inputs]

    @property
    def message(self) -> str:
        """PyTorch's own message, verbatim (first line)."""
        text = str(self.exception).strip()
        return text.splitlines()[0] if text else type(self.exception).__name__


@dataclass(frozen=True)
class Diagnosis:
    """A named cause of a failure (or a warning on a model that runs) and its fix.

    ``verified`` is True only when the model was re-run with the fix applied and succeeded;
    ``output_shapes_after_fix`` are then the output shapes of that re-run.
    ``then`` holds the diagnoses of the next failure when the fixed model still fails
    elsewhere, so a report can carry a whole repair plan. ``fix`` is the change as code;
    ``apply`` keeps it in a copy of the model.
    """

    rule: str
    path: str
    message: str
    fix: str
    verified: bool = False
    output_shapes_after_fix: list[Shape] | None = None
    then: tuple[Diagnosis, ...] = field(default=())
    change: Any = field(default=None, repr=False, compare=False)  # the structured fix
    #: fingerprint of the layers (paths and types) of the model the fix was made for
    made_for: int | None = field(default=None, repr=False, compare=False)

    def apply(self, model: nn.Module) -> nn.Module:
        """A fixed copy of ``model``: this fix and the rest of its plan, as the re-run verified
        them. ``model`` (the one given to ``explain``) is left as it is. A change to a layer's
        input (flatten before ``fc``) is kept as a forward pre-hook on that layer, so names and
        ``state_dict`` keys stay the same; move it into your ``forward`` for good.

        Raises:
            ShapecheckError: the fix edits the input, a line of ``forward`` or the loss target
                rather than the layers (make it in your code: the message shows it), or it
                was not verified.
            UsageError: ``model`` lacks the layers the fix names.
        """
        from ._apply import fixed_copy

        return fixed_copy(self, model)
