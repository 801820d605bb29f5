"""``explain_ranks``: every rank of a sharded model, one fresh process per group of ranks.

The first process (rank 0) builds the model and works out, from each parameter's global
shape, placements and mesh, the local shape every rank holds; ranks that hold the same shapes
form a group, and one rank of each other group is traced in a process of its own. Each rank
gets a fresh process because DTensor caches sharding decisions without the rank in the key:
two ranks in one process can share local shapes that only one of them has.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import ShapecheckError, UsageError
from ._records import Shape
from ._report import Report, add_note

__all__ = ["Job", "RankGroup", "RankReports", "RankShards", "Traced", "explain_ranks"]


@dataclass(frozen=True)
class RankGroup:
    """Ranks whose parameter shards have the same shapes, and the Report of the first of them
    (``rank``), which stands for all of them.

    ``param_shapes`` is each parameter's local shape on these ranks (by name, each tensor
    once).
    """

    ranks: tuple[int, ...]
    report: Report
    param_shapes: tuple[tuple[str, Shape], ...]

    @property
    def rank(self) -> int:
        """The rank that was traced."""
        return self.ranks[0]

    @property
    def params(self) -> int:
        """Parameter elements each of these ranks holds."""
        return sum(math.prod(s) for _, s in self.param_shapes)


@dataclass(frozen=True)
class RankReports:
    """What :func:`shapecheck.explain_ranks` found: one Report per group of ranks.

    ``rank_param_bytes[r]`` is the parameter bytes rank ``r`` holds (every rank, whether or
    not it was traced). ``str()`` gives a summary per group and each failing group's diagnosis.
    """

    model_type: str
    world_size: int
    mesh_shape: Shape
    groups: tuple[RankGroup, ...]
    rank_param_bytes: tuple[int, ...]

    @property
    def ok(self) -> bool:
        """True when every rank's forward ran to the end."""
        return all(g.report.ok for g in self.groups)

    @property
    def reports(self) -> list[Report]:
        return [g.report for g in self.groups]

    def group(self, rank: int) -> RankGroup:
        """The group ``rank`` belongs to; KeyError for a rank outside the world."""
        for group in self.groups:
            if rank in group.ranks:
                return group
        raise KeyError(f"rank {rank} is not in a world of {self.world_size}")

    def report(self, rank: int) -> Report:
        """The Report that stands for ``rank`` (its group's)."""
        return self.group(rank).report

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view: every group's ranks, shard shapes and report."""
        return {
            "model": self.model_type,
            "world_size": self.world_size,
            "mesh_shape": list(self.mesh_shape),
            "rank_param_bytes": list(self.rank_param_bytes),
            "groups": [
                {
                    "ranks": list(g.ranks),
                    "param_shapes": {name: list(shape) for name, shape in g.param_shapes},
                    "report": g.report.to_dict(),
                }
                for g in self.groups
            ],
        }

    def __str__(self) -> str:
        from ._render import render_ranks

        return render_ranks(self)

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(str(self))}</pre>"


# -- what travels between the processes ---------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """What every rank's process needs: how to find ``build``, and what to explain it with."""

    module: str
    qualname: str
    main_file: str | None  # ``build`` defined in a script run as __main__
    inputs: tuple[Any, ...]
    kwargs: dict[str, Any]
    world_size: int
    mesh_shape: Shape
    mesh_dim_names: tuple[str, ...] | None


@dataclass(frozen=True)
class RankShards:
    """What one rank holds: each parameter's local shape, and their bytes."""

    shapes: tuple[tuple[str, Shape], ...]
    nbytes: int


@dataclass(frozen=True)
class Traced:
    """A rank's process's answer: its Report and, from the first, what every rank holds
    (None when the meshes did not tell: then every rank is traced); or what ``build`` (or
    explain's own checks) raised."""

    report: Report | None = None
    shards: tuple[RankShards, ...] | None = None
    own: RankShards | None = None
    error: BaseException | None = None
    traceback: str = ""


def explain_ranks(
    build: Callable[[Any], Any],
    *inputs: Any,
    world_size: int,
    mesh_shape: Sequence[int] | None = None,
    mesh_dim_names: Sequence[str] | None = None,
    **explain_kwargs: Any,
) -> RankReports:
    """Explain every rank of a sharded model, each in a fresh process on this CPU.

    ``build(mesh)`` receives a DeviceMesh of ``mesh_shape`` (default ``(world_size,)``) over
    a fake process group of ``world_size`` ranks and returns the model, parallelised as in
    training (``parallelize_module``, ``fully_shard``; build it on ``torch.device("meta")``
    for a model too large for this machine). Ranks whose parameter shards have the same
    shapes are traced once: ``explain(model, *inputs, **explain_kwargs)`` runs on one rank of
    each group. The inputs are the same on every rank.

    Args:
        build: a function defined at the top level of an importable module (or of the script
            being run): each rank's process imports it by name.
        *inputs: the example inputs, as for :func:`shapecheck.explain`.
        world_size: how many ranks.
        mesh_shape: the mesh's shape, its product ``world_size`` (``(2, 4)``: dp 2, tp 4).
        mesh_dim_names: names of the mesh dims (``("dp", "tp")``).
        **explain_kwargs: passed on to :func:`shapecheck.explain` (``dry_run``,
            ``optimizer``, forward keyword arguments, ...).

    Raises:
        UsageError: ``build`` cannot be imported by name, a bad world or mesh shape, or a
            torch older than 2.5.
        Exception: whatever ``build`` raised on a rank, with that rank's traceback as a note.

    Example (the README's "Sharded models" section shows its output)::

        ranks = shapecheck.explain_ranks(build_tp_gpt, tokens, world_size=4)
        print(ranks)                     # one line per group of ranks, then any failure
        ranks.report(3).output_shapes    # what rank 3 computed
    """
    from ._compat import require_torch
    from ._world import DTENSOR_TORCH

    require_torch(DTENSOR_TORCH, "shapecheck.explain_ranks")
    module, qualname, main_file = _target(build)
    shape = _mesh(world_size, mesh_shape, mesh_dim_names)
    names = tuple(mesh_dim_names) if mesh_dim_names is not None else None
    job = Job(module, qualname, main_file, inputs, explain_kwargs, world_size, shape, names)
    with tempfile.TemporaryDirectory(prefix="shapecheck-ranks-") as folder:
        return _explained(job, Path(folder))


def _explained(job: Job, folder: Path) -> RankReports:
    """Rank 0 first (it says what every rank holds), then one rank of every other group."""
    import torch

    job_file = folder / "job.pt"
    try:
        torch.save(job, job_file)
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise UsageError(
            f"the inputs and keyword arguments of explain_ranks go to each rank's process, so "
            f"they must pickle; this did not ({error}): pass tensors, and a loss module or a "
            "top-level function rather than a lambda."
        ) from error
    first = _run(job_file, folder, [0], every_rank=True)[0]
    shards = first.shards
    # the meshes did not tell what other ranks hold: trace each rank
    groups: list[tuple[int, ...]] = [(r,) for r in range(job.world_size)]
    if shards is not None:
        by_shapes: dict[tuple[tuple[str, Shape], ...], list[int]] = {}
        for rank, held in enumerate(shards):
            by_shapes.setdefault(held.shapes, []).append(rank)
        groups = [tuple(ranks) for ranks in by_shapes.values()]
    traced = [first, *_run(job_file, folder, [g[0] for g in groups[1:]], every_rank=False)]
    found = tuple(RankGroup(ranks, *_answer(t)) for ranks, t in zip(groups, traced, strict=True))
    nbytes = [s.nbytes for s in shards] if shards is not None else [_own(t).nbytes for t in traced]
    return RankReports(
        found[0].report.model_type, job.world_size, job.mesh_shape, found, tuple(nbytes)
    )


def _own(traced: Traced) -> RankShards:
    assert traced.own is not None  # every answer without an error has them
    return traced.own


def _answer(traced: Traced) -> tuple[Report, tuple[tuple[str, Shape], ...]]:
    assert traced.report is not None
    return traced.report, _own(traced).shapes


def _run(job_file: Path, folder: Path, ranks: list[int], every_rank: bool) -> list[Traced]:
    """Each rank in a fresh process, as many at once as there are cores."""
    import torch

    width = max(1, os.cpu_count() or 1)
    found: list[Traced] = []
    for start in range(0, len(ranks), width):
        running = [
            (rank, folder / f"rank{rank}.pt", _start(job_file, folder, rank, every_rank))
            for rank in ranks[start : start + width]
        ]
        answers = [(rank, out, process, process.communicate()[1]) for rank, out, process in running]
        for rank, out, process, errors in answers:  # every process waited for before raising
            if process.returncode != 0 or not out.exists():
                raise ShapecheckError(
                    f"the process for rank {rank} ended with exit code {process.returncode} "
                    f"and no answer; its last output:\n{errors[-2000:]}"
                )
            traced: Traced = torch.load(out, weights_only=False)
            _raise_for_error(traced, rank)
            found.append(traced)
    return found


def _start(job_file: Path, folder: Path, rank: int, every_rank: bool) -> subprocess.Popen[str]:
    env = dict(os.environ)
    # the child finds shapecheck and the user's modules where this process does
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, "-m", "shapecheck._rank_child", str(job_file), str(rank),
               str(folder / f"rank{rank}.pt"), "all" if every_rank else "own"]  # fmt: skip
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _raise_for_error(traced: Traced, rank: int) -> None:
    error = traced.error
    if error is None:
        return
    add_note(error, f"shapecheck: raised on rank {rank}, in its own process:\n{traced.traceback}")
    raise error


def _target(build: object) -> tuple[str, str, str | None]:
    """(module, qualified name, script file) of ``build``, after checking that a fresh process
    can import it by that name."""
    hint = (
        "explain_ranks runs each rank in a fresh process, which imports build by name: "
        "define it with def at the top level of a module (or of the script you run)."
    )
    if not inspect.isfunction(build):
        raise UsageError(f"build must be a function build(mesh), got {type(build).__name__}. "
                         + hint)  # fmt: skip
    module, qualname = build.__module__, build.__qualname__
    if "<" in qualname or "." in qualname:
        raise UsageError(f"build is {qualname!r}, not a top-level function. " + hint)
    if module == "__main__":
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if main_file is None:
            raise UsageError(
                f"build ({qualname}) was defined in an interactive session or notebook. " + hint
            )
        return module, qualname, os.path.abspath(main_file)
    try:
        found = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"build cannot be imported as {module}.{qualname} ({error}). "
                         + hint) from error  # fmt: skip
    if found is not build:
        raise UsageError(f"{module}.{qualname} is not the build function passed. " + hint)
    return module, qualname, None


def _mesh(world_size: object, mesh_shape: object, names: object) -> Shape:
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise UsageError(f"world_size must be an int >= 1, got {world_size!r}.")
    shape = (world_size,) if mesh_shape is None else mesh_shape
    if (
        not isinstance(shape, (tuple, list))
        or not all(isinstance(n, int) and n >= 1 for n in shape)
        or math.prod(shape) != world_size
    ):
        raise UsageError(
            f"mesh_shape must be a tuple of ints whose product is world_size={world_size}, "
            f"got {mesh_shape!r}."
        )
    if names is not None and (
        not isinstance(names, (tuple, list)) or len(names) != len(shape)
        or not all(isinstance(n, str) for n in names)
    ):  # fmt: skip
        raise UsageError(
            f"mesh_dim_names must name each of the {len(shape)} mesh dims, got {names!r}."
        )
    return tuple(shape)
