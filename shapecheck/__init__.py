"""shapecheck: make PyTorch shape and parameter bugs obvious, and fix them.

``explain(model, x)`` traces one forward pass and reports every layer's shapes and parameters,
the layer that failed, why, and a fix verified by re-running the model with it.
"""

from ._clarify import clarify
from ._errors import ShapecheckError, ShapeError, UsageError
from ._explain import explain
from ._records import Diagnosis, Failure, Layer, TensorInfo
from ._report import Report

__all__ = [
    "Diagnosis", "Failure", "Layer", "Report", "ShapeError", "ShapecheckError", "TensorInfo",
    "UsageError", "clarify", "explain",
]  # fmt: skip

__version__ = "0.1.0"
