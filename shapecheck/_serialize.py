"""Reports as plain JSON-compatible dicts."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from enum import Enum
from typing import TYPE_CHECKING, Any

from ._changes import Fix, edits_of
from ._records import Diagnosis, Layer, Step, TensorInfo

if TYPE_CHECKING:
    from ._report import Report

__all__ = ["SCHEMA_VERSION", "report_to_dict"]

#: Bumped whenever a key changes meaning or goes away. 2: diagnoses carry their plan, each
#: step's message as data (headline, evidence, cause, arithmetic), fix record and outcome.
#: Sharded models add keys (a tensor's global shape, a layer's rank counts, the report's rank).
SCHEMA_VERSION = 2


def _tensor(t: TensorInfo) -> dict[str, Any]:
    found: dict[str, Any] = {"shape": list(t.shape), "dtype": t.dtype, "device": t.device}
    if t.global_shape is not None:  # a DTensor: ``shape`` is this rank's
        found.update(global_shape=list(t.global_shape), placements=list(t.placements or ()),
                     mesh_shape=list(t.mesh_shape or ()))  # fmt: skip
    return found


def _layer(layer: Layer) -> dict[str, Any]:
    return {
        "index": layer.index,
        "path": layer.path,
        "kind": layer.kind,
        "type": layer.type,
        "summary": layer.summary,
        "depth": layer.depth,
        "parent": layer.parent,
        "inputs": [_tensor(t) for t in layer.inputs],
        "outputs": [_tensor(t) for t in layer.outputs],
        "params": layer.params,
        "trainable": layer.trainable,
        "failed": layer.failed,
        "source": layer.source,
        "flops": layer.flops,
        "flops_uncounted": layer.flops_uncounted,
        "output_bytes": layer.output_bytes,
        **_rank_counts(layer),
    }


def _rank_counts(layer: Layer) -> dict[str, Any]:
    """What this rank holds of a sharded model's layer (nothing for a plain model)."""
    if layer.rank_params is None:
        return {}
    return {
        "rank_params": layer.rank_params,
        "rank_param_bytes": layer.rank_param_bytes,
        "param_placements": {name: list(p) for name, p in layer.param_placements},
    }


def _plain(value: Any) -> Any:
    """Records, enums and tuples as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _fix(fix: Fix) -> dict[str, Any]:
    return {"kind": fix.kind.value, "edits": edits_of(fix), **_plain(fix)}


def _step(step: Step) -> dict[str, Any]:
    return {
        "rule": step.rule,
        "path": step.path,
        "headline": step.headline,
        "evidence": [{"label": label, "text": text} for label, text in step.evidence],
        "cause": step.cause,
        "arithmetic": list(step.arithmetic),
        "fix": _fix(step.change),
        "outcome": None if step.outcome is None else _plain(step.outcome),
    }


def _diagnosis(d: Diagnosis) -> dict[str, Any]:
    return {
        "rule": d.rule,
        "path": d.path,
        "message": d.message,
        "fix": d.fix,
        "verified": d.verified,
        "verified_by": d.verified_by,
        "keeps_batch": d.keeps_batch,
        "output_shapes_after_fix": None
        if d.output_shapes_after_fix is None
        else [list(s) for s in d.output_shapes_after_fix],
        "plan": [_step(s) for s in d.plan],
    }


def report_to_dict(report: Report) -> dict[str, Any]:
    """Everything in the report except live objects; the exception becomes type and message."""
    failure = report.failure
    return {
        "schema_version": SCHEMA_VERSION,
        "ok": report.ok,
        "model": report.model_type,
        "dry_run": report.dry_run,
        "inputs": [_tensor(t) for t in report.inputs],
        "output_shapes": [list(s) for s in report.output_shapes],
        "layers": [_layer(x) for x in report.layers],
        "total_params": report.total_params,
        "trainable_params": report.trainable_params,
        "param_bytes_by_dtype": dict(report.param_bytes_by_dtype),
        "buffer_count": report.buffer_count,
        "buffer_bytes": report.buffer_bytes,
        "total_flops": report.total_flops,
        "flops_uncounted": report.flops_uncounted,
        "fallback": report.fallback,
        "unconfirmed": report.unconfirmed,
        "reruns": report.reruns,
        "tied": [{"path": p, "shared_with": owner, "params": n} for p, owner, n in report.tied],
        "rank": report.rank,
        "world_size": report.world_size,
        "mesh_shape": None if report.mesh_shape is None else list(report.mesh_shape),
        "rank_param_bytes": report.rank_param_bytes,
        "training_memory": None
        if report.training_memory is None
        else {**asdict(report.training_memory), "total": report.training_memory.total},
        "failure": None
        if failure is None
        else {
            "path": failure.path,
            "type": failure.type,
            "input_shapes": [list(s) for s in failure.input_shapes],
            "exception": type(failure.exception).__name__,
            "message": str(failure.exception),
            "source": failure.source,
        },
        "diagnoses": [_diagnosis(d) for d in report.diagnoses],
        "warnings": [_diagnosis(d) for d in report.warnings],
    }
