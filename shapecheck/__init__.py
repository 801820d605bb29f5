"""shapecheck: make PyTorch shape and parameter bugs obvious, and fix them.

``explain(model, x)`` traces one forward pass and reports every layer's shapes and parameters,
the layer that failed, why, and a fix verified by re-running the model with it.
"""

import typing as _typing

from ._errors import ShapecheckError, ShapeError, UsageError

if _typing.TYPE_CHECKING:
    from ._apply import apply_fix
    from ._clarify import clarify
    from ._contract import Contract, contract
    from ._explain import explain
    from ._notebook import disable, enable
    from ._ranks import RankGroup, RankReports, explain_ranks
    from ._records import Diagnosis, Failure, Layer, Outcome, Step, TensorInfo, TrainingMemory
    from ._report import Report
    from ._world import fake_world

# Imported on first use (PEP 562) so that the pytest plugin, registered as
# ``shapecheck.pytest_plugin``, loads without importing torch in every pytest run.
_LAZY = {
    "clarify": "._clarify", "contract": "._contract", "Contract": "._contract",
    "explain": "._explain", "Report": "._report",
    "Diagnosis": "._records", "Failure": "._records", "Layer": "._records",
    "TensorInfo": "._records", "TrainingMemory": "._records", "Outcome": "._records",
    "Step": "._records", "apply_fix": "._apply", "enable": "._notebook", "disable": "._notebook",
    "fake_world": "._world", "explain_ranks": "._ranks", "RankReports": "._ranks",
    "RankGroup": "._ranks",
}  # fmt: skip
# IPython's extension protocol (``%load_ext shapecheck``): found by name, not public API
_HOOKS = {"load_ipython_extension": "._notebook", "unload_ipython_extension": "._notebook"}


def __getattr__(name: str) -> object:
    where = _LAZY.get(name) or _HOOKS.get(name)
    if where is None:
        raise AttributeError(f"module 'shapecheck' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where, __name__), name)
    if name in _LAZY:
        globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Contract", "Diagnosis", "Failure", "Layer", "Outcome", "RankGroup", "RankReports",
    "Report", "ShapeError", "ShapecheckError", "Step", "TensorInfo", "TrainingMemory",
    "UsageError", "apply_fix", "clarify", "contract", "disable", "enable", "explain",
    "explain_ranks", "fake_world",
]  # fmt: skip

__version__ = "0.1.0"
