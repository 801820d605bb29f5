"""One rank of :func:`shapecheck.explain_ranks`, in a process of its own.

``python -m shapecheck._rank_child JOB RANK OUT (all|own)``: brings up the fake world as
``RANK``, builds the model with the user's ``build(mesh)``, explains it, and saves a
:class:`~shapecheck._ranks.Traced` to ``OUT``; with ``all``, also what every rank holds.
"""

from __future__ import annotations

import importlib
import pickle
import runpy
import sys
import traceback
from typing import Any

import torch
from torch import nn

from ._ranks import Job, RankShards, Traced
from ._records import Shape
from ._report import Report
from ._sharding import dtensor_type, local, shard_sizes

__all__ = ["every_rank", "main", "run"]


def main(argv: list[str]) -> int:
    job_file, rank, out, scope = argv
    # the user's modules import as in the caller: this process's PYTHONPATH is its sys.path
    job: Job = torch.load(job_file, weights_only=False)
    torch.save(run(job, int(rank), scope == "all"), out)
    return 0


def run(job: Job, rank: int, all_ranks: bool) -> Traced:
    from . import explain
    from ._world import fake_world

    try:
        build = _resolve(job)
        with fake_world(job.world_size, rank):
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh("cpu", job.mesh_shape, mesh_dim_names=job.mesh_dim_names)
            model = build(mesh)
            own = RankShards(*_held(model))
            shards = every_rank(model, job) if all_ranks else None
            report = explain(model, *job.inputs, **job.kwargs)
    except Exception as error:  # build's own error, re-raised in the caller's process
        return Traced(error=_picklable(error), traceback=traceback.format_exc())
    return Traced(report=_sendable(report), shards=shards, own=own)


def _resolve(job: Job) -> Any:
    if job.main_file is not None:  # a script run as __main__: run it again as multiprocessing's
        return runpy.run_path(job.main_file, run_name="__mp_main__")[job.qualname]
    return getattr(importlib.import_module(job.module), job.qualname)


def _unique(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(model.named_parameters())  # each tensor once, under its first name


def _held(model: nn.Module) -> tuple[tuple[tuple[str, Shape], ...], int]:
    """This rank's local shape of each parameter, and their bytes."""
    shards = [(name, local(p)) for name, p in _unique(model)]
    nbytes = sum(t.numel() * t.element_size() for _, t in shards)
    return tuple((name, tuple(t.shape)) for name, t in shards), nbytes


def every_rank(model: nn.Module, job: Job) -> tuple[RankShards, ...] | None:
    """What each rank of the world holds, from each parameter's global shape, placements and
    mesh; None when a mesh or placement does not tell (a strided shard, a flattened mesh) or
    the arithmetic disagrees with this rank's own shards."""
    dtensor = dtensor_type()
    shapes: list[list[tuple[str, Shape]]] = [[] for _ in range(job.world_size)]
    nbytes = [0] * job.world_size
    for name, p in _unique(model):
        for rank in range(job.world_size):
            held = _local_shape(p, rank, job) if dtensor and isinstance(p, dtensor) else p.shape
            if held is None:
                return None
            shapes[rank].append((name, tuple(held)))
            nbytes[rank] += int(torch.Size(held).numel()) * p.element_size()
    found = tuple(RankShards(tuple(s), b) for s, b in zip(shapes, nbytes, strict=True))
    import torch.distributed as dist

    return found if found[dist.get_rank()].shapes == _held(model)[0] else None


def _local_shape(p: Any, rank: int, job: Job) -> Shape | None:
    """``p``'s shard on ``rank``: DTensor's own arithmetic where this torch has it (strided
    shards included), else each mesh dim in turn splitting the dim it shards, as torch.chunk
    does."""
    mesh = p.device_mesh
    coordinate = _coordinate(rank, job, tuple(mesh.shape), mesh.mesh_dim_names)
    if coordinate is None:
        return None
    from torch.distributed.tensor import _utils

    compute = getattr(_utils, "_compute_local_shape_and_global_offset", None)
    try:  # a private function: its signature is checked by calling it
        local_shape, _ = compute(p.shape, tuple(mesh.shape), coordinate, p.placements)  # type: ignore[misc]
        return tuple(local_shape)
    except Exception:
        pass
    size = list(p.shape)
    for at, placement in enumerate(p.placements):
        if getattr(placement, "split_factor", None) is not None:
            return None  # a strided shard: left to the ranks' own processes
        if placement.is_shard():
            size[placement.dim] = shard_sizes(size[placement.dim], mesh.shape[at])[coordinate[at]]
    return tuple(size)


def _coordinate(
    rank: int, job: Job, shape: Shape, names: tuple[str, ...] | None
) -> list[int] | None:
    """``rank``'s place in a mesh: the whole mesh explain_ranks made, or a sub-mesh of named
    dims of it (``mesh["tp"]``)."""
    whole: list[int] = []
    left = rank
    for size in reversed(job.mesh_shape):  # init_device_mesh lays the ranks out row-major
        whole.insert(0, left % size)
        left //= size
    if shape == job.mesh_shape and names == job.mesh_dim_names:
        return whole
    if names is None or job.mesh_dim_names is None or not set(names) <= set(job.mesh_dim_names):
        return None
    return [whole[job.mesh_dim_names.index(n)] for n in names]


def _picklable(error: BaseException) -> BaseException:
    try:
        pickle.dumps(error)
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _sendable(report: Report) -> Report:
    """The report, its failure's exception made picklable if it is not."""
    if report.failure is not None:
        exception = _picklable(report.failure.exception)
        if exception is not report.failure.exception:
            from dataclasses import replace

            report.failure = replace(report.failure, exception=exception)
    return report


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
