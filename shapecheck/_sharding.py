"""What a sharded model holds on this rank: DTensors read as records, without importing them.

A DTensor can only exist once ``torch.distributed.tensor`` has been imported (by the user's
``parallelize_module`` or ``fully_shard``), so everything here looks it up in ``sys.modules``:
on a plain model the check is one dictionary lookup per trace, and shapecheck never imports
``torch.distributed.tensor`` itself (``import torch`` already brings ``torch.distributed``).

Per-rank sizes are read from the parameters as they are before the forward: FSDP2 gathers the
whole parameters inside it and frees them after, so hooks inside the forward see global ones.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._lazy import is_uninitialized
from ._paths import ModelWalk
from ._records import Shape

__all__ = [
    "ModuleShard",
    "World",
    "dtensor_type",
    "fsdp_modules",
    "is_sharded",
    "kept_sharded",
    "local",
    "local_nbytes",
    "mesh_of",
    "module_shards",
    "parallelized",
    "placement_text",
    "rank_param_bytes",
    "settle",
    "shard_sizes",
    "sharded_view",
    "world_of",
]

_FSDP_HOMES = ("torch.distributed.fsdp", "torch.distributed._composable.fsdp")


def shard_sizes(whole: int, ways: int) -> list[int]:
    """What each of ``ways`` ranks holds of a dim of ``whole`` sharded as DTensor does
    (torch.chunk: full chunks of ceil(whole / ways), the remainder, then empty shards).

    >>> shard_sizes(1001, 4), shard_sizes(5, 4)
    ([251, 251, 251, 248], [2, 2, 1, 0])
    """
    chunk = -(-whole // ways)
    return [max(0, min(chunk, whole - r * chunk)) for r in range(ways)]


def dtensor_type() -> type | None:
    """The DTensor class, or None while nothing has imported it (then no DTensor exists)."""
    found = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    return found if isinstance(found, type) else None


def _fsdp_type() -> type | None:
    for home in _FSDP_HOMES:
        found = getattr(sys.modules.get(home), "FSDPModule", None)
        if isinstance(found, type):
            return found
    return None


def placement_text(placement: object) -> str:
    """``S(0)``, ``R``, ``P(sum)``; a strided shard as ``S(0, sf=2)`` (its split factor)."""
    split = getattr(placement, "split_factor", None)
    if split is not None:
        return f"S({getattr(placement, 'dim', '?')}, sf={split})"
    return str(placement)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; any other tensor as it is."""
    dtensor = dtensor_type()
    if dtensor is not None and isinstance(tensor, dtensor):
        shard: torch.Tensor = tensor._local_tensor  # type: ignore[attr-defined]
        return shard
    return tensor


def local_nbytes(tensor: torch.Tensor) -> int:
    """Bytes this rank holds of ``tensor``."""
    shard = local(tensor)
    return shard.numel() * shard.element_size()


def sharded_view(tensor: Any) -> tuple[torch.Tensor, Shape, tuple[str, ...], Shape]:
    """(local tensor, global shape, placements as text, mesh shape) of a DTensor."""
    spec = tensor._spec
    placements = tuple(placement_text(p) for p in spec.placements)
    return tensor._local_tensor, tuple(tensor.shape), placements, tuple(spec.mesh.shape)


def mesh_of(module: nn.Module) -> Any:
    """The DeviceMesh of a module's first DTensor parameter; None when it holds none."""
    dtensor = dtensor_type()
    found = (p for p in module.parameters() if dtensor is not None and isinstance(p, dtensor))
    return getattr(next(found, None), "device_mesh", None)


def parallelized(module: nn.Module, like: nn.Module, style: str) -> nn.Module:
    """``module`` parallelised with the ParallelStyle named ``style`` on ``like``'s mesh."""
    from torch.distributed.tensor import parallel

    styles = {
        "ColwiseParallel": parallel.ColwiseParallel,
        "RowwiseParallel": parallel.RowwiseParallel,
    }
    return parallel.parallelize_module(module, mesh_of(like), styles[style]())


def is_sharded(model: nn.Module | ModelWalk) -> bool:
    """True when the model holds DTensor parameters or FSDP2 modules."""
    dtensor, fsdp = dtensor_type(), _fsdp_type()
    if dtensor is None and fsdp is None:
        return False
    if fsdp is not None and any(isinstance(m, fsdp) for m in model.modules()):
        return True
    return dtensor is not None and any(isinstance(p, dtensor) for p in model.parameters())


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The FSDP2 modules of ``model`` (none unless ``fully_shard`` was imported)."""
    fsdp = _fsdp_type()
    return [] if fsdp is None else [m for m in model.modules() if isinstance(m, fsdp)]


@contextmanager
def kept_sharded(model: nn.Module) -> Iterator[None]:
    """FSDP2 modules resharded when the block ends: a forward leaves the root's parameters
    gathered (it keeps them for the backward), which would change the model explained."""
    modules = fsdp_modules(model)
    try:
        yield
    finally:
        for module in modules:
            module.reshard()  # type: ignore[operator]


def settle(output: Any) -> None:
    """Wait for the collectives still pending in a forward's output (a RowwiseParallel layer
    returns its all-reduce unwaited): torch warns at exit about collectives never waited."""
    pending = getattr(sys.modules.get("torch.distributed._functional_collectives"),
                      "AsyncCollectiveTensor", None)  # fmt: skip
    if isinstance(pending, type):
        from torch.utils._pytree import tree_leaves

        for leaf in tree_leaves(output):
            if isinstance(leaf, pending):
                leaf.wait()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ModuleShard:
    """What this rank holds of one module's own parameters."""

    params: int
    nbytes: int
    placements: tuple[tuple[str, tuple[str, ...]], ...]


def module_shards(modules: Iterable[nn.Module]) -> dict[int, ModuleShard]:
    """Per module id, this rank's elements and bytes of the parameters it owns directly, and
    each DTensor parameter's placements (read before the forward; lazy modules left out)."""
    dtensor = dtensor_type()
    found = {}
    for module in modules:
        params = nbytes = 0
        placements = []
        for name, p in module._parameters.items():
            if p is None or is_uninitialized(p):
                continue
            shard = local(p)
            params += shard.numel()
            nbytes += shard.numel() * shard.element_size()
            if dtensor is not None and isinstance(p, dtensor):
                placements.append((name, sharded_view(p)[2]))
        found[id(module)] = ModuleShard(params, nbytes, tuple(placements))
    return found


def rank_param_bytes(model: nn.Module | ModelWalk) -> int:
    """Bytes of this rank's shards of the unique parameters."""
    return sum(local_nbytes(p) for p in model.parameters() if not is_uninitialized(p))


@dataclass(frozen=True)
class World:
    """This process's place in the process group, and the mesh its parameters live on."""

    rank: int
    world_size: int
    mesh_shape: Shape | None
    #: bytes of this rank's parameter shards
    param_bytes: int


def world_of(model: nn.Module | ModelWalk) -> World | None:
    """Rank, world size and the largest mesh of a sharded model; None for a plain one."""
    if not is_sharded(model):
        return None
    import torch.distributed as dist  # imported by ``import torch`` already

    if not dist.is_initialized():
        return None
    dtensor = dtensor_type()
    meshes = [
        tuple(p.device_mesh.shape)  # type: ignore[attr-defined]
        for p in model.parameters()
        if dtensor is not None and isinstance(p, dtensor)
    ]
    mesh = max(meshes, key=math.prod, default=None)
    return World(dist.get_rank(), dist.get_world_size(), mesh, rank_param_bytes(model))
