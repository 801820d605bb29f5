"""Reports as plain JSON-compatible dicts."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ._records import Diagnosis, Layer, TensorInfo

if TYPE_CHECKING:
    from ._report import Report

__all__ = ["report_to_dict"]


def _tensor(t: TensorInfo) -> dict[str, Any]:
    return {"shape": list(t.shape), "dtype": t.dtype, "device": t.device}


def _layer(layer: Layer) -> dict[str, Any]:
    return {
        "index": layer.index, "path": layer.path, "kind": layer.kind, "type": layer.type,
        "summary": layer.summary, "depth": layer.depth, "parent": layer.parent,
        "inputs": [_tensor(t) for t in layer.inputs],
        "outputs": [_tensor(t) for t in layer.outputs],
        "params": layer.params, "trainable": layer.trainable, "failed": layer.failed,
        "source": layer.source, "flops": layer.flops, "output_bytes": layer.output_bytes,
    }  # fmt: skip


def _diagnosis(d: Diagnosis) -> dict[str, Any]:
    return {
        "rule": d.rule, "path": d.path, "message": d.message, "fix": d.fix,
        "verified": d.verified,
        "output_shapes_after_fix": None if d.output_shapes_after_fix is None
        else [list(s) for s in d.output_shapes_after_fix],
        "then": [_diagnosis(t) for t in d.then],
    }  # fmt: skip


def report_to_dict(report: Report) -> dict[str, Any]:
    """Everything in the report except live objects; the exception becomes type and message."""
    failure = report.failure
    return {
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
        "training_memory": None if report.training_memory is None
        else {**asdict(report.training_memory), "total": report.training_memory.total},
        "failure": None if failure is None else {
            "path": failure.path, "type": failure.type,
            "input_shapes": [list(s) for s in failure.input_shapes],
            "exception": type(failure.exception).__name__, "message": str(failure.exception),
            "source": failure.source,
        },
        "diagnoses": [_diagnosis(d) for d in report.diagnoses],
        "warnings": [_diagnosis(d) for d in report.warnings],
    }  # fmt: skip
