"""Dry runs: the same forward on fake tensors, so no activation memory and no compute.

Parameters and buffers are swapped in as fake tensors with ``torch.func.functional_call``; the
model itself is untouched. A device that this machine lacks (``cuda`` on a CPU-only build) is
simulated on the ``meta`` device and reported under its declared name.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.func import functional_call
from torch.nn.modules.lazy import LazyModuleMixin
from torch.utils._pytree import tree_map

from ._inputs import FLAT, layout_of, version_of
from ._lazy import is_uninitialized
from ._paths import ModelWalk

__all__ = ["DryRun", "available", "is_meta_model"]

_FAKE_LOGGER = logging.getLogger("torch._subclasses.fake_tensor")


def is_meta_model(model: nn.Module | ModelWalk) -> bool:
    """True when the model's weights live on the meta device (built without memory)."""
    return any(t.is_meta for t in model.parameters()) or any(t.is_meta for t in model.buffers())


def available(device: torch.device) -> bool:
    """True when this machine can hold real tensors on ``device``."""
    if device.type in ("cpu", "meta"):
        return True
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    return bool(is_available and is_available())


class DryRun:
    """Where fake tensors live, and how the forward is prepared for them."""

    def __init__(self, device: torch.device | None) -> None:
        self.device = device
        self.device_alias: dict[str, str] = {}
        self.originals: dict[int, int] = {}
        self.target = device
        if device is not None and not available(device):
            self.target = torch.device("meta")
            self.device_alias["meta"] = str(device)

    @contextmanager
    def prepare(
        self, walk: ModelWalk, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Iterator[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]:
        """Enter fake mode; yield the forward to call and the fake inputs."""
        model = walk.root
        if self.target is None and is_meta_model(walk):
            self.target = torch.device("meta")
        named = _named_state(walk)
        cached = _cached(model, self.target, [t for _, t in named])
        mode = cached.mode
        state, self.originals = cached.swap(named, self._fake)
        fake_args, fake_kwargs = _fake_inputs(
            (args, kwargs), lambda v: cached.input_of(v, self._fake_input, mode)
        )
        # fake mode logs every failing meta kernel (``disabled``, not setLevel: that clears the
        # level caches of every logger in the process)
        quiet, _FAKE_LOGGER.disabled = _FAKE_LOGGER.disabled, True
        lazy = [m for m in walk.modules() if isinstance(m, LazyModuleMixin)]
        for module in lazy:  # explain passes a copy of lazy models; materialise its weights
            module.initialize_parameters = _outside_fake(  # type: ignore[method-assign]
                module.initialize_parameters)  # fmt: skip
        try:
            with mode:
                yield (lambda *a, **k: functional_call(model, state, a, k, strict=False,
                                                       tie_weights=False)), \
                    fake_args, fake_kwargs  # fmt: skip
        finally:
            _FAKE_LOGGER.disabled = quiet
            for module in lazy:
                vars(module).pop("initialize_parameters", None)

    def _fake_input(self, mode: FakeTensorMode, tensor: torch.Tensor) -> torch.Tensor:
        """An input's fake; a ``meta`` input stands for one of its shape on the run's device."""
        target = self.target or torch.device("cpu")
        if tensor.device.type != "meta" or target.type == "meta":
            return self._fake(mode, tensor)
        with mode:
            fake = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype,
                                       device=target)  # fmt: skip
        return fake.requires_grad_(tensor.requires_grad)

    def _fake(self, mode: FakeTensorMode, tensor: torch.Tensor) -> torch.Tensor:
        target = self.target
        if target is not None and target.type == "meta":
            source = tensor.detach().to("meta")
            return mode.from_tensor(source.requires_grad_(tensor.requires_grad))
        fake: torch.Tensor = mode.from_tensor(tensor)
        if target is not None and fake.device != target:
            with mode:
                fake = fake.to(target)
        return fake


def _signature(tensor: torch.Tensor) -> tuple[Any, ...]:
    """What a fake copies of a tensor; a change in any of it needs a new fake. An inference
    tensor keeps no version to tell an in-place write by: its fake is never reused."""
    version = version_of(tensor)
    return (object() if version is None else version, tensor.shape, tensor.stride(),
            tensor.dtype, tensor.device, tensor.requires_grad)  # fmt: skip


_Kept = tuple[weakref.ref[torch.Tensor], tuple[Any, ...], torch.Tensor]
#: Makes the fake of a tensor in a fake mode: ``make(mode, tensor)``.
_Make = Callable[[FakeTensorMode, torch.Tensor], torch.Tensor]
#: Inputs whose fakes are kept per model and device (a loop over batches makes new ones).
_KEPT_INPUTS = 16


class _Fakes:
    """The fake weights of one model for one device, the fake mode they belong to, and the
    fakes of the inputs it was last given."""

    def __init__(self) -> None:
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.fakes: dict[int, _Kept] = {}
        #: tensor id -> ``[its fake, the fake's version when last checked, its layout when
        #: made]`` (replaced with the fake, as ``fakes`` is)
        self.layouts: dict[int, list[Any]] = {}
        #: input id -> (the input, its signature, its fake, the fake's signature when made)
        self.inputs: OrderedDict[int, tuple[_Kept, tuple[Any, ...]]] = OrderedDict()
        #: the last :meth:`swap`: (each slot's name and tensor id, the state, the originals)
        self._swap: tuple[tuple[tuple[str, int], ...], dict[str, torch.Tensor],
                          dict[int, int]] | None = None  # fmt: skip

    def unchanged(self, tensors: list[torch.Tensor]) -> bool:
        """True when every tensor has its fake here, made from the tensor as it is now, and
        no forward since has changed the fake."""
        for tensor in tensors:
            known = self.fakes.get(id(tensor))
            if known is None or known[0]() is not tensor or known[1] != _signature(tensor):
                return not self.fakes  # a first dry run fills an empty cache
        return self._fakes_as_made()

    def _fakes_as_made(self) -> bool:
        """False when a forward changed a kept fake's layout in place (``self.buf.unsqueeze_(0)``)
        or gave it new data (``.data =``, which leaves the version as it was); a fake written
        only in its (absent) values stays. An inference tensor's fake keeps no version: its
        shape is compared."""
        with torch._C.DisableTorchFunction():  # a fake's methods, without its Python dispatch
            for kept in self.layouts.values():
                fake, version, layout = kept
                if (version is not None and fake._version != version) or \
                        fake.shape != layout[1]:  # fmt: skip
                    if layout_of(fake) != layout:
                        return False
                    kept[1] = version_of(fake)
        return True

    def swap(
        self, named: list[tuple[str, torch.Tensor]], make: _Make
    ) -> tuple[dict[str, torch.Tensor], dict[int, int]]:
        """The state to call the model with (each slot's name -> its fake; one fake per
        tensor, so tied weights stay tied), and the id of each fake -> the id of the weight it
        stands for (what the trace saw is the fake). The same as last time while the model's
        slots hold the same tensors (``unchanged`` said their fakes still hold)."""
        slots = tuple([(name, id(t)) for name, t in named])
        last = self._swap
        if last is not None and last[0] == slots:
            return dict(last[1]), last[2]
        fakes: dict[int, torch.Tensor] = {}
        for _, t in named:
            if id(t) not in fakes:
                fakes[id(t)] = self.fake_of(t, make, self.mode)
        state = {name: fakes[id(t)] for name, t in named}
        originals = {id(fake): real for real, fake in fakes.items()}
        self._swap = (slots, state, originals)
        return dict(state), originals

    def fake_of(self, tensor: torch.Tensor, make: _Make, mode: FakeTensorMode) -> torch.Tensor:
        """The fake made for ``tensor`` last time, else ``make(mode, tensor)`` (kept for next
        time). A lazy module's tensor not made yet stands for itself (it has no shape to copy)."""
        if is_uninitialized(tensor):
            return tensor
        known = self.fakes.get(id(tensor))
        if known is not None and known[0]() is tensor:
            return known[2]
        fake = make(mode, tensor)
        self.fakes[id(tensor)] = (weakref.ref(tensor), _signature(tensor), fake)
        self.layouts[id(tensor)] = [fake, version_of(fake), layout_of(fake)]
        return fake

    def input_of(self, tensor: torch.Tensor, make: _Make, mode: FakeTensorMode) -> torch.Tensor:
        """An input's fake: the one made last time when neither the input nor that fake has
        changed since (a forward that writes into its input in place changes the fake too)."""
        known = self.inputs.get(id(tensor))
        if known is not None:
            (ref, signature, fake), made = known
            if ref() is tensor and signature == _signature(tensor) and made == _signature(fake):
                self.inputs.move_to_end(id(tensor))
                return fake
        # from an alias: the fake mode's own memo would hand back the fake of last time
        fake = make(mode, tensor.detach().requires_grad_(tensor.requires_grad))
        self.inputs[id(tensor)] = (
            (weakref.ref(tensor), _signature(tensor), fake),
            _signature(fake),
        )
        while len(self.inputs) > _KEPT_INPUTS:
            self.inputs.popitem(last=False)
        return fake


#: Fake weights kept between dry runs of the same model (converting them is about half of a
#: small model's dry run). Fakes hold no data; at most this many models are kept, each by a
#: weak reference, so nothing here keeps a model alive.
_KEPT = 8
_FAKES: OrderedDict[tuple[int, str], tuple[weakref.ref[nn.Module], _Fakes]] = OrderedDict()


def _cached(model: nn.Module, target: torch.device | None, tensors: list[torch.Tensor]) -> _Fakes:
    """The fakes of ``model`` for ``target``, kept from an earlier dry run when none of its
    tensors changed since; else all new, in a new fake mode (the mode remembers each fake it
    made for a tensor, so one changed weight means starting over)."""
    key = (id(model), str(target))
    found = _FAKES.get(key)
    if found is not None and found[0]() is model and found[1].unchanged(tensors):
        _FAKES.move_to_end(key)
        return found[1]
    fakes = _Fakes()
    _FAKES[key] = (weakref.ref(model), fakes)
    while len(_FAKES) > _KEPT:
        _FAKES.popitem(last=False)
    return fakes


def _fake_inputs(inputs: Any, fake: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``inputs`` (the ``(args, kwargs)`` pair) with every tensor replaced by ``fake(tensor)``;
    flat arguments without the cost of a pytree walk."""
    args, kwargs = inputs
    if all(type(a) in FLAT for a in args) and all(type(v) in FLAT for v in kwargs.values()):
        swap = [fake(a) if isinstance(a, torch.Tensor) else a for a in args]
        return tuple(swap), {k: fake(v) if isinstance(v, torch.Tensor) else v
                             for k, v in kwargs.items()}  # fmt: skip
    return tree_map(lambda v: fake(v) if isinstance(v, torch.Tensor) else v, inputs)


def _outside_fake(initialize: Callable[..., None]) -> Callable[..., None]:
    """Lazy weights made inside fake mode end up half fake; make them real (reads shapes only)."""

    def materialise(*args: Any, **kwargs: Any) -> None:
        with unset_fake_temporarily(), torch.no_grad():
            initialize(*args, **kwargs)

    return materialise


def _named_state(walk: ModelWalk) -> list[tuple[str, torch.Tensor]]:
    """Every (module, attribute) slot once, tied tensors under each owner's name.

    functional_call's own tie_weights swaps a module shared at several paths once per path and
    restores in the same order, leaving fakes in the model; here each slot is swapped once.
    """
    return [
        (f"{prefix}.{name}" if prefix else name, t)
        for prefix, module in walk.named
        for name, t in (*module._parameters.items(), *module._buffers.items())
        if t is not None
    ]
