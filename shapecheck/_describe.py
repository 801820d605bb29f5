"""Short descriptions of modules and calls: ``Conv2d(3→16, k=3, p=1)``, ``view(-1, 512)``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ._records import CallArguments, Written

__all__ = ["call_arguments", "describe_module"]


def _single(value: object) -> object:
    """(3, 3) -> 3, so the common square case reads short."""
    if isinstance(value, tuple) and value and all(v == value[0] for v in value):
        return value[0]
    return value


def _options(pairs: Sequence[tuple[str, object, object]]) -> str:
    """Comma-joined ``name=value`` for each value that differs from its default."""
    return ", ".join(f"{name}={_single(value)}" for name, value, default in pairs
                     if _single(value) != default)  # fmt: skip


def _conv(m: nn.modules.conv._ConvNd) -> str:
    # every conv call of a trace is described: the text is looked up by what it is made of
    made_of = (type(m).__name__, m.in_channels, m.out_channels, m.kernel_size, m.stride,
               m.padding, m.dilation, m.groups)  # fmt: skip
    try:
        return _conv_text(*made_of)
    except TypeError:  # a subclass that keeps a list there: no dict key, written each time
        return _conv_text.__wrapped__(*made_of)


@functools.lru_cache(maxsize=1024)
def _conv_text(name: str, c_in: int, c_out: int, kernel: tuple[int, ...], stride: object,
               padding: object, dilation: object, groups: int) -> str:  # fmt: skip
    padding = padding if isinstance(padding, str) else _single(padding)
    extra = _options([("s", stride, 1), ("p", padding, 0), ("d", dilation, 1), ("g", groups, 1)])
    return f"{name}({c_in}→{c_out}, k={_single(kernel)}{', ' + extra if extra else ''})"


def _pool(m: nn.Module) -> str:
    kernel = _single(getattr(m, "kernel_size", None))
    stride = _single(getattr(m, "stride", None))
    extra = _options([("s", stride, kernel), ("p", getattr(m, "padding", 0), 0)])
    return f"{type(m).__name__}(k={kernel}{', ' + extra if extra else ''})"


def _recurrent(m: nn.RNNBase) -> str:
    extra = _options([("layers", m.num_layers, 1), ("batch_first", m.batch_first, False),
                      ("bidirectional", m.bidirectional, False)])  # fmt: skip
    return f"{type(m).__name__}({m.input_size}→{m.hidden_size}{', ' + extra if extra else ''})"


_DESCRIBERS: list[tuple[type, Callable[..., str]]] = [
    (nn.Linear, lambda m: f"{type(m).__name__}({m.in_features}→{m.out_features})"),
    (nn.Bilinear, lambda m: f"Bilinear({m.in1_features}, {m.in2_features}→{m.out_features})"),
    (nn.modules.conv._ConvNd, _conv),
    (nn.modules.pooling._MaxPoolNd, _pool),
    (nn.modules.pooling._AvgPoolNd, _pool),
    (nn.modules.batchnorm._NormBase, lambda m: f"{type(m).__name__}({m.num_features})"),
    (nn.LayerNorm, lambda m: f"LayerNorm({_single(tuple(m.normalized_shape))})"),
    (nn.GroupNorm, lambda m: f"GroupNorm({m.num_groups}, {m.num_channels})"),
    (nn.Embedding, lambda m: f"Embedding({m.num_embeddings}, {m.embedding_dim})"),
    (nn.RNNBase, _recurrent),
    (nn.modules.dropout._DropoutNd, lambda m: f"{type(m).__name__}(p={m.p})"),
    (nn.MultiheadAttention,
     lambda m: f"MultiheadAttention({m.embed_dim}, heads={m.num_heads}"
               f"{', batch_first' if m.batch_first else ''})"),
    (nn.Flatten, lambda m: "Flatten" if (m.start_dim, m.end_dim) == (1, -1)
     else f"Flatten({m.start_dim}, {m.end_dim})"),
]  # fmt: skip


#: module class -> (its describer, or None for the class name alone; whether it is lazy),
#: found once per class: the tracer describes every module call. Bounded: torch.fx makes a
#: class for every GraphModule, and a long-running process must not keep them all.
_BY_CLASS: dict[type, tuple[Callable[..., str] | None, bool]] = {}
_KEPT_CLASSES = 4096


def describe_module(module: nn.Module) -> str:
    """The class name with the hyper-parameters that decide shapes."""
    cls = type(module)
    found = _BY_CLASS.get(cls)
    if found is None:
        found = _describer_of(cls)
        if len(_BY_CLASS) < _KEPT_CLASSES:
            _BY_CLASS[cls] = found
    describe, lazy = found
    if describe is None or (lazy and module.has_uninitialized_params()):  # type: ignore[operator]
        return cls.__name__
    try:
        return describe(module)
    except (AttributeError, TypeError):  # a subclass that renamed an attribute
        return cls.__name__


def _describer_of(cls: type) -> tuple[Callable[..., str] | None, bool]:
    lazy = issubclass(cls, nn.modules.lazy.LazyModuleMixin)
    return next((d for base, d in _DESCRIBERS if issubclass(cls, base)), None), lazy


def call_arguments(
    args: Sequence[object], kwargs: Mapping[str, object], func: Callable[..., object] | None = None
) -> CallArguments:
    """What a call's arguments after its first look like in code, kept without its tensors:
    ``view(-1, 512)`` keeps ``(-1, 512)``; a tensor stands as ``T``.

    Keyword arguments equal to ``func``'s defaults are left out (``F.max_pool2d`` passes them
    all). Made for every traced call: the common case (plain numbers) is a tuple slice.
    """
    positional = tuple(args[1:])  # args[0] is the tensor the call is about
    for value in positional:
        if type(value) not in _PLAIN:
            positional = tuple([_kept(v) for v in positional])
            break
    if not kwargs:
        return _new_call(CallArguments, (positional, ()))
    defaults = _defaults(func) if func is not None else {}
    keywords = tuple([
        (k, _kept(v)) for k, v in kwargs.items()
        if v is not None and v is not False and not _is_default(defaults, k, v)
    ])  # fmt: skip
    return _new_call(CallArguments, (positional, keywords))


#: ``CallArguments(...)`` without the Python-level ``__new__`` of a NamedTuple: made per call
_new_call = tuple.__new__


@functools.lru_cache(maxsize=512)
def _defaults(func: Callable[..., object]) -> dict[str, object]:
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return {}
    found = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    # F.max_pool2d and friends are (*args, **kwargs) dispatchers over two real functions
    for cell in getattr(func, "__closure__", None) or ():
        if inspect.isfunction(cell.cell_contents) and cell.cell_contents is not func:
            found = {**_defaults(cell.cell_contents), **found}
    return found


def _is_default(defaults: Mapping[str, object], name: str, value: object) -> bool:
    if name not in defaults or isinstance(value, torch.Tensor):
        return False
    try:
        return bool(defaults[name] == value)
    except Exception:  # an exotic __eq__; then show the argument
        return False


#: Argument types kept as they are: immutable, holding no tensor, written as ``repr`` writes
#: them (``torch.float16`` too)
_PLAIN = frozenset({int, float, bool, str, type(None), torch.dtype})


def _kept(value: object) -> object:
    """``value`` as :class:`CallArguments` keeps it: plain values as they are, the rest as the
    text a table shows for it (a tensor is ``T``)."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, torch.Tensor):
        return _TENSOR
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, torch.Tensor) for v in value):
            return Written(f"[{len(value)} tensors]")
        if isinstance(value, tuple) and all(type(v) in _PLAIN for v in value):
            return tuple(value)  # torch.Size and other tuples of numbers: a plain tuple
        return Written(repr(tuple(value)) if isinstance(value, tuple) else repr(list(value)))
    if isinstance(value, (int, float, bool, str)):
        return value
    if isinstance(value, torch.device):
        return Written(f"'{value}'")
    return Written(type(value).__name__)


_TENSOR = Written("T")


def module_code(module: nn.Module) -> str:
    """The module as a constructor call a user would write: ``nn.Conv2d(16, 8, 3, padding=1)``."""
    name = type(module).__name__
    if isinstance(module, nn.Linear):
        bias = "" if module.bias is not None else ", bias=False"
        return f"nn.{name}({module.in_features}, {module.out_features}{bias})"
    if isinstance(module, nn.modules.conv._ConvNd):
        extra = _options([
            ("stride", module.stride, 1), ("padding", module.padding, 0),
            ("dilation", module.dilation, 1), ("groups", module.groups, 1),
        ])  # fmt: skip
        core = f"{module.in_channels}, {module.out_channels}, {_single(module.kernel_size)}"
        return f"nn.{name}({core}{', ' + extra if extra else ''})"
    if isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        kernel = _single(module.kernel_size)
        extra = _options(
            [("stride", _single(module.stride), kernel), ("padding", module.padding, 0)]
        )
        return f"nn.{name}({kernel}{', ' + extra if extra else ''})"
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return f"nn.{name}({module.num_features})"
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return f"nn.{name}({module.p})"
    if type(module).__module__.startswith("torch.nn") and not module._modules:
        return f"nn.{name}()" if not module.extra_repr() else f"nn.{name}({module.extra_repr()})"
    return f"{name}(...)"
