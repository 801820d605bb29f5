"""``fake_world``: one rank of a distributed job, on one CPU, for the user's own sharding code.

PyTorch's fake process group answers every collective with tensors of the right shapes and no
communication, so ``init_device_mesh``, ``parallelize_module`` and ``fully_shard`` run as they
would on that rank. ``torch.distributed`` internals are imported here only, on first use.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from ._compat import require_torch
from ._errors import UsageError

__all__ = ["DTENSOR_TORCH", "fake_world"]

#: The first torch with the public ``torch.distributed.tensor`` (DTensor, ParallelStyles).
DTENSOR_TORCH = "2.5"

# world size -> the rank first brought up with it in this process. DTensor caches sharding
# decisions (and the local shapes they imply) without the rank in the key: a second rank of the
# same world in the same process can reuse the first rank's shapes and fail where the real rank
# would not (an uneven last shard). One rank per world size per process keeps answers true.
_RANK_OF_WORLD: dict[int, int] = {}


@contextmanager
def fake_world(world_size: int = 8, rank: int = 0) -> Iterator[None]:
    """Be ``rank`` of ``world_size`` processes, on this CPU, for the block.

    Brings up PyTorch's fake process group (collectives are no-ops with the right shapes), so
    your own ``init_device_mesh("cpu", ...)``, ``parallelize_module`` and ``fully_shard``
    code runs as on that rank, and tears it down at the end. ``explain`` inside the block
    shows what this rank holds and computes. DTensor caches sharding decisions without the
    rank, so one process can be one rank of a world size only: for several ranks use
    :func:`shapecheck.explain_ranks`, which runs each in a process of its own.

    Raises:
        UsageError: a bad world size or rank, a process group already initialised, another
            rank of the same world size brought up before in this process, or a torch older
            than 2.5.

    Example:
        >>> import torch, shapecheck
        >>> from torch.distributed.device_mesh import init_device_mesh
        >>> from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module
        >>> with shapecheck.fake_world(world_size=4, rank=0):
        ...     mesh = init_device_mesh("cpu", (4,))
        ...     layer = parallelize_module(torch.nn.Linear(8, 16), mesh, ColwiseParallel())
        ...     report = shapecheck.explain(layer, torch.randn(2, 8))
        >>> report.output_shapes, report.layers[0].outputs[0].global_shape
        ([(2, 4)], (2, 16))
    """
    _check(world_size, rank)
    require_torch(DTENSOR_TORCH, "shapecheck.fake_world")
    import torch.distributed as dist

    if dist.is_initialized():
        raise UsageError(
            f"a process group is already initialised (backend {dist.get_backend()!r}, rank "
            f"{dist.get_rank()} of {dist.get_world_size()}); fake_world brings up its own: "
            "use it outside init_process_group, or call destroy_process_group() first."
        )
    _claim(world_size, rank)
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers "fake"

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        with warnings.catch_warnings():
            # torch 2.5-2.8 warn at every weight initialised on a CPU mesh; the shapes are
            # what a fake world is for, and its random values are not
            warnings.filterwarnings("ignore", message="DTensor random operators may not have "
                                    "complete support on cpu device mesh")  # fmt: skip
            yield
    finally:
        dist.destroy_process_group()


def _check(world_size: object, rank: object) -> None:
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise UsageError(f"world_size must be an int >= 1, got {world_size!r}.")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
        raise UsageError(
            f"rank must be an int in 0..{world_size - 1} for world_size={world_size}, got {rank!r}."
        )


def _claim(world_size: int, rank: int) -> None:
    first = _RANK_OF_WORLD.setdefault(world_size, rank)
    if first != rank:
        raise UsageError(
            f"this process was rank {first} of a world of {world_size} before; DTensor keeps "
            "sharding decisions cached without the rank, so rank "
            f"{rank} here could get rank {first}'s local shapes. Use one process per rank: "
            "shapecheck.explain_ranks(build, *inputs, world_size=...) runs each in its own."
        )
