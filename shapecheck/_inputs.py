"""Turn what the user passed to ``explain`` into example inputs, or say clearly what is wrong."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._pytree import tree_map

from ._errors import UsageError

__all__ = [
    "call_tensors",
    "is_compiled",
    "layout_of",
    "make_inputs",
    "parse_device",
    "parse_dtype",
    "realise",
    "require_module",
    "tensors_in",
    "unwrapped",
    "version_of",
]  # fmt: skip

_PASS_THROUGH = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device)


def version_of(tensor: torch.Tensor) -> int | None:
    """The tensor's version counter, which every in-place write bumps; None for an inference
    tensor (made under ``torch.inference_mode()``), which keeps none."""
    return None if tensor.is_inference() else getattr(tensor, "_version", 0)


def layout_of(tensor: torch.Tensor) -> tuple[Any, ...]:
    """Where a tensor's elements sit in its storage: (offset, shape, strides). An in-place
    ``unsqueeze_`` changes it and bumps the version; ``.data =`` changes it and does not."""
    return tensor.storage_offset(), tensor.shape, tensor.stride()


def require_module(model: object) -> nn.Module:
    """Return ``model`` if it is an ``nn.Module``, else raise a UsageError saying what to pass."""
    if isinstance(model, nn.Module):
        return model
    hint = ""
    if isinstance(model, type) and issubclass(model, nn.Module):
        hint = f" You passed the class {model.__name__}; pass an instance: {model.__name__}(...)."
    elif callable(model):
        hint = " Plain functions are not traced; wrap the code in an nn.Module."
    raise UsageError(f"model must be a torch.nn.Module instance, got {type(model).__name__}.{hint}")


def is_compiled(model: nn.Module) -> bool:
    """A ``torch.compile`` wrapper (known by name: importing torch._dynamo is slow)."""
    return type(model).__name__ == "OptimizedModule"


def unwrapped(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile(module)``, ``nn.DataParallel`` or
    ``DistributedDataParallel``: its layers, paths and shapes are the ones traced and fixed
    (the wrappers only change how and where they run)."""
    if is_compiled(model):
        inner = getattr(model, "_orig_mod", None)
    elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        inner = model.module
    else:
        return model
    return unwrapped(inner) if isinstance(inner, nn.Module) else model


def parse_dtype(value: object) -> torch.dtype:
    """Accept a ``torch.dtype`` or its name (``"float32"``, ``"torch.int64"``)."""
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        candidate = getattr(torch, value.removeprefix("torch."), None)
        if isinstance(candidate, torch.dtype):
            return candidate
    raise UsageError(
        f"unknown dtype {value!r}: use a torch.dtype or a name such as "
        "'float32', 'float16', 'bfloat16', 'float64', 'int64', 'int32', 'uint8', 'bool'."
    )


def parse_device(value: object) -> torch.device | None:
    """Accept None, a ``torch.device`` or a device string (``"cpu"``, ``"cuda:0"``, ``"meta"``)."""
    if value is None or isinstance(value, torch.device):
        return value
    if isinstance(value, str):
        try:
            return torch.device(value)
        except RuntimeError as exc:
            raise UsageError(
                f"unknown device {value!r}: use 'cpu', 'cuda', 'cuda:N', 'mps' or 'meta'."
            ) from exc
    raise UsageError(f"device must be a string or torch.device, got {type(value).__name__}.")


#: Argument types that never hold a tensor: collecting a call's tensors skips them at once.
_LEAVES = frozenset({
    int, float, bool, complex, str, type(None), type(Ellipsis), slice, torch.dtype,
    torch.device, torch.Size, torch.layout, torch.memory_format,
})  # fmt: skip

#: Exact tensor types (a dry run's are fakes) that are one tensor and never a wrapper holding
#: others (a DTensor): the hot paths take them without an ``isinstance`` walk.
PLAIN_TENSORS = frozenset({torch.Tensor, nn.Parameter, FakeTensor})
#: Argument types that are one tensor or hold none: no pytree walk needed to find tensors.
FLAT = PLAIN_TENSORS | _LEAVES


def call_tensors(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
    """``tensors_in((args, kwargs))``, with a fast path for the flat arguments of most calls."""
    found: list[torch.Tensor] = []
    for arg in (*args, *kwargs.values()) if kwargs else args:
        kind = type(arg)
        if kind in PLAIN_TENSORS:
            found.append(arg)
        elif kind not in _LEAVES:
            _collect(arg, found, depth=2)  # the depth it has inside (args, kwargs)
    return found


def tensors_in(obj: object) -> list[torch.Tensor]:
    """The tensors inside any nesting of tuples, lists and dicts, in order."""
    if isinstance(obj, torch.Tensor):  # the common cases first: called for every traced call
        return [obj]
    found: list[torch.Tensor] = []
    _collect(obj, found, depth=0)
    return found


def _collect(obj: object, found: list[torch.Tensor], depth: int) -> None:
    kind = type(obj)
    if kind in _LEAVES:
        return
    if kind is tuple or kind is list:  # exact types: no isinstance against ABCs on the hot path
        items: Any = obj
    elif kind is dict:
        items = obj.values()  # type: ignore[attr-defined]
    elif isinstance(obj, torch.Tensor):
        found.append(obj)
        return
    elif isinstance(obj, Mapping):
        items = obj.values()
    elif isinstance(obj, (tuple, list)):
        items = obj
    else:
        return
    if depth > 8:
        return
    for item in items:
        if isinstance(item, torch.Tensor):
            found.append(item)
        else:
            _collect(item, found, depth + 1)


def make_inputs(
    inputs: Sequence[object],
    input_size: object,
    dtypes: object,
    device: torch.device | None,
    *,
    arguments: bool = False,
    shapes_only: bool = False,
) -> tuple[Any, ...]:
    """The positional inputs for one forward pass, validated and placed on ``device``.

    A tuple of ints is taken for a mistyped shape only when no tensor is passed with it and
    ``arguments`` is False (forward kwargs): CTCLoss takes lengths as tuples of ints.
    With ``shapes_only`` (a dry run), ``input_size`` makes ``meta`` tensors: shapes without
    memory, which the dry run places on its device.
    """
    if inputs and input_size is not None:
        raise UsageError("pass example inputs or input_size=, not both.")
    if input_size is not None:
        return _from_sizes(input_size, dtypes, torch.device("meta") if shapes_only else device)
    if dtypes is not None:
        raise UsageError("dtypes= only applies together with input_size=.")
    shapes_meant = not arguments and not tensors_in(list(inputs))
    for position, item in enumerate(inputs):
        _check_input(item, f"input {position}", shapes_meant)
    if device is None:
        return tuple(inputs)
    return tuple(_to_device(item, device) for item in inputs)


def _check_input(item: object, where: str, shapes_meant: bool = True) -> None:
    if isinstance(item, (torch.Tensor, *_PASS_THROUGH)):
        return
    _check_learner_input(item, where)
    if type(item).__module__ == "numpy":
        raise UsageError(
            f"{where} is a numpy {type(item).__name__}; convert it with torch.from_numpy(x) "
            "(and .float() for images)."
        )
    if (
        shapes_meant
        and isinstance(item, (tuple, list))
        and item
        and all(type(v) is int for v in item)
    ):
        raise UsageError(
            f"{where} is a {type(item).__name__} of ints {tuple(item)}; to describe a shape, "
            f"pass input_size={tuple(item)} instead of an example tensor."
        )
    if isinstance(item, Mapping):
        for key, value in item.items():
            _check_input(value, f"{where}[{key!r}]", shapes_meant)
    elif isinstance(item, (tuple, list)):
        for position, value in enumerate(item):
            _check_input(value, f"{where}[{position}]", shapes_meant)


def _is_label(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.dtype.is_floating_point
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(item: object, depth: int = 0) -> int:
    """How deep ``item`` nests lists of numbers (0: not numbers at all)."""
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        return depth
    if isinstance(item, (list, tuple)) and item and depth < 8:
        inner = [_numbers(v, depth + 1) for v in item]
        return max(inner) if all(inner) else 0
    return 0


def _check_learner_input(item: object, where: str) -> None:
    """What learners pass by mistake: a dataset item ``(img, label)``, lists of numbers."""
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor) \
            and _is_label(item[1]):  # fmt: skip
        dims = tuple(item[0].shape)
        raise UsageError(
            f"{where} is an (input, label) pair, as a dataset item is: a tensor {dims} and "
            f"the label {item[1]!r}. Pass the input alone, with a batch dim: "
            "img, label = dataset[0]; explain(model, img.unsqueeze(0)) (or a batch from your "
            "DataLoader: imgs, labels = next(iter(loader)); explain(model, imgs))."
        )
    depth = _numbers(item)
    if depth > 1 or (depth == 1 and any(isinstance(v, float) for v in item)):  # type: ignore[attr-defined]
        raise UsageError(
            f"{where} is a nested list of numbers, not a tensor; make one: "
            "torch.tensor(data, dtype=torch.float32) (or pass its shape as input_size=...)."
        )


def _to_device(item: object, device: torch.device) -> object:
    if isinstance(item, torch.Tensor):
        return item if device.type == "meta" and item.device == device else item.to(device)
    if isinstance(item, Mapping):
        return {key: _to_device(value, device) for key, value in item.items()}
    if isinstance(item, list):
        return [_to_device(value, device) for value in item]
    if isinstance(item, tuple) and not hasattr(item, "_fields"):
        return tuple(_to_device(value, device) for value in item)
    return item


def _from_sizes(input_size: object, dtypes: object, device: torch.device | None) -> tuple[Any, ...]:
    sizes = _parse_sizes(input_size)
    dtype_list = _parse_dtypes(dtypes, len(sizes))
    if device is None or device.type != "meta":
        _check_allocatable(sizes, dtype_list, device)
    generator = torch.Generator().manual_seed(0)  # never touches the global RNG
    try:
        return tuple(
            _example(size, dtype, generator, device)
            for size, dtype in zip(sizes, dtype_list, strict=True)
        )
    except (MemoryError, RuntimeError) as error:  # the allocator refused: the same advice
        raise UsageError(_too_big(sizes, _bytes(sizes, dtype_list), None, device)) from error


def _example(
    size: tuple[int, ...],
    dtype: torch.dtype,
    generator: torch.Generator,
    device: torch.device | None,
) -> torch.Tensor:
    """Example data of one shape: normal noise, or zeros for integers (a valid Embedding id)."""
    if device is not None and device.type == "meta":
        return torch.empty(size, dtype=dtype, device=device)
    if dtype.is_floating_point or dtype.is_complex:
        tensor = torch.randn(size, generator=generator).to(dtype)
    else:
        tensor = torch.zeros(size, dtype=dtype)
    return tensor if device is None else tensor.to(device)


def memory_of(device: torch.device | None) -> int | None:
    """Bytes this machine has on ``device`` (free memory of a GPU, all RAM for the CPU)."""
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    if device is not None and device.type != "cpu":
        return None
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # not a POSIX system
        return None


def _check_allocatable(
    sizes: list[tuple[int, ...]], dtypes: list[torch.dtype], device: torch.device | None
) -> None:
    """Example inputs larger than the machine: say that a dry run needs no memory for them."""
    need = _bytes(sizes, dtypes)
    have = memory_of(device)
    if have is not None and need > have // 2:
        raise UsageError(_too_big(sizes, need, have, device))


def _bytes(sizes: list[tuple[int, ...]], dtypes: list[torch.dtype]) -> int:
    return sum(math.prod(s) * torch.empty((), dtype=d).element_size()
               for s, d in zip(sizes, dtypes, strict=True))  # fmt: skip


def _too_big(
    sizes: list[tuple[int, ...]], need: int, have: int | None, device: torch.device | None
) -> str:
    from ._text import nbytes

    shown = ", ".join(str(s) for s in sizes)
    spare = "could not be allocated" if have is None else \
        f"is more than this machine can spare ({nbytes(have)} on {device or 'cpu'})"  # fmt: skip
    return (
        f"input_size {shown} needs {nbytes(need)} for its example data, which {spare}; pass "
        "dry_run=True (--dry-run on the command line) to explain the shapes on fake tensors, "
        "which take no memory."
    )


def realise(obj: Any, device: torch.device | None) -> Any:
    """``obj`` with every ``meta`` tensor replaced by example data on ``device`` (a real run
    where a dry run with shape-only inputs cannot go on)."""
    generator = torch.Generator().manual_seed(0)

    def real(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.device.type == "meta":
            return _example(tuple(value.shape), value.dtype, generator, device)
        return value

    return tree_map(real, obj)


def _parse_sizes(input_size: object) -> list[tuple[int, ...]]:
    if isinstance(input_size, torch.Size) or _is_int_sequence(input_size):
        sizes: list[tuple[int, ...]] = [tuple(input_size)]  # type: ignore[arg-type]
    elif (
        isinstance(input_size, (tuple, list))
        and input_size
        and all(isinstance(s, torch.Size) or _is_int_sequence(s) for s in input_size)
    ):
        sizes = [tuple(s) for s in input_size]
    else:
        raise UsageError(
            f"input_size must be a shape such as (1, 3, 32, 32) or a list of shapes "
            f"[(1, 10), (1, 20)], got {input_size!r}."
        )
    for size in sizes:
        if any(d <= 0 for d in size):
            raise UsageError(f"input_size {size} has a non-positive size; every dim must be >= 1.")
    return sizes


def _is_int_sequence(value: object) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) > 0
        and all(isinstance(d, int) and not isinstance(d, bool) for d in value)
    )


def _parse_dtypes(dtypes: object, count: int) -> list[torch.dtype]:
    if dtypes is None:
        return [torch.float32] * count
    if isinstance(dtypes, (torch.dtype, str)):
        return [parse_dtype(dtypes)] * count
    if isinstance(dtypes, (tuple, list)) and len(dtypes) == count:
        return [parse_dtype(d) for d in dtypes]
    raise UsageError(
        f"dtypes must be one dtype or a list of {count} dtypes (one per input_size entry), "
        f"got {dtypes!r}."
    )
