"""Memory of one training step: parameters, gradients, optimizer state, saved activations.

The activations are not guessed from layer outputs: :class:`SavedTensors` installs
``torch.autograd.graph.saved_tensors_hooks`` during the traced forward and records every tensor
autograd keeps for backward, each storage once. On fake tensors (a dry run) the same hooks see
fake tensors, so the figure costs no memory.

What the estimate leaves out: the allocator's caching and fragmentation, kernel workspaces
(cuDNN, cuBLAS, attention), the CUDA context, temporaries of the backward pass (gradients of
activations live briefly while saved tensors are freed), optimizer step scalars (kept on the
CPU), and anything the model allocates outside autograd. Saved tensors depend on the kernels
chosen, so they are exact for the device the trace ran on.
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn

from ._errors import UsageError
from ._lazy import is_uninitialized
from ._records import TrainingMemory
from ._sharding import local, local_nbytes

__all__ = ["OPTIMIZERS", "SavedTensors", "TrainingMemory", "check_optimizer", "training_memory"]

#: Per trainable parameter, how many same-sized tensors the optimizer keeps.
OPTIMIZERS: dict[str, int] = {"sgd": 0, "sgd-momentum": 1, "adam": 2, "adamw": 2}


def check_optimizer(optimizer: object) -> str | None:
    """``optimizer`` if it is None or a name we can size; a UsageError listing the names else."""
    if optimizer is None or (isinstance(optimizer, str) and optimizer in OPTIMIZERS):
        return optimizer
    valid = ", ".join(repr(name) for name in OPTIMIZERS)
    raise UsageError(f"optimizer must be None or one of {valid}, got {optimizer!r}.")


class SavedTensors:
    """While active, records the storages autograd saves for backward, each once.

    Parameters and buffers are told apart by storage. They are looked up at the first save,
    which happens inside the forward, so in a dry run they are the fake tensors swapped in.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        # storage key -> (bytes, storage): holding the storage keeps its key from being reused
        self.storages: dict[int, tuple[int, object]] = {}
        self.state_keys: set[int] | None = None
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    @property
    def nbytes(self) -> int:
        """Bytes of the saved storages that are not the model's parameters or buffers."""
        state = self.state_keys or set()
        return sum(size for key, (size, _) in self.storages.items() if key not in state)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if isinstance(tensor, nn.Parameter) or isinstance(tensor._base, nn.Parameter):
            # a weight (or its transpose): counted with the parameters. FSDP2 gathers whole
            # weights inside the forward, as new Parameters the state keys cannot know
            return tensor
        if self.state_keys is None:
            state = (*self.model.parameters(), *self.model.buffers())
            self.state_keys = {_storage(t)[0] for t in state}
        key, size, storage = _storage(tensor)
        self.storages.setdefault(key, (size, storage))
        return tensor  # the tensor itself: saving changes nothing about the run

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._hooks.__exit__(kind, error, traceback)


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _storage(tensor: torch.Tensor) -> tuple[int, int, object]:
    """(key, bytes, storage) of the memory behind ``tensor``, real, meta or fake alike."""
    tensor = local(tensor)  # a DTensor saved for backward: this rank's shard is what is kept
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return id(tensor), tensor.numel() * tensor.element_size(), tensor
    # _cdata is the StorageImpl's address: shared by every view; data_ptr() is 0 on meta.
    return storage._cdata, storage.nbytes(), storage


def training_memory(model: nn.Module, saved: SavedTensors, optimizer: str) -> TrainingMemory:
    """Parameters, gradients and optimizer state of the unique parameters, plus ``saved``.

    On a sharded model, this rank's: gradients and optimizer state are sharded as the
    parameters are (DTensor gradients; FSDP2 reduce-scatters into the sharded parameters).
    """
    params = trainable = 0
    for p in model.parameters():
        if is_uninitialized(p):
            continue
        size = local_nbytes(p)
        params += size
        trainable += size if p.requires_grad else 0
    buffers = sum(b.numel() * b.element_size() for b in model.buffers()
                  if not is_uninitialized(b))  # fmt: skip
    return TrainingMemory(
        optimizer=optimizer, params=params, buffers=buffers, grads=trainable,
        optimizer_state=OPTIMIZERS[optimizer] * trainable, saved=saved.nbytes,
    )  # fmt: skip
