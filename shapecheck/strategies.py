"""Hypothesis strategies: shapes and tensors from specs, batch sizes, small random models.

Requires hypothesis (``pip install torch-shapecheck[test]``). Tensor values come from a
``torch.Generator`` seeded by a drawn integer, so drawing is fast and never touches torch's
global RNG; hypothesis shrinks the shape and the seed, not single elements.

Example:
    >>> from hypothesis import given
    >>> from shapecheck import strategies as sst
    >>> @given(sst.tensors("B 3 H W", H=8, W=8))
    ... def test_conv_keeps_size(x): ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from hypothesis import strategies as st
from torch import nn

from ._errors import UsageError
from ._inputs import parse_dtype
from ._spec import Spec, SpecLike, parse_spec

__all__ = ["Architecture", "architectures", "batch_sizes", "shapes", "tensors"]

DimStrategy = int | st.SearchStrategy[int]
#: Sizes drawn for symbols without a strategy, for ``_`` and for each dim of a ``*`` run.
DEFAULT_DIM = st.integers(1, 8)
_MAX_REST = 3  # a ``*`` run draws 0 to 3 dims


def batch_sizes(min_size: int = 1, max_size: int = 16) -> st.SearchStrategy[int]:
    """Batch sizes that favour the edge cases 1, 2 and odd sizes; shrinks towards 1.

    Example:
        >>> from hypothesis import given
        >>> @given(batch_sizes())
        ... def test_any_batch(b): assert b >= 1
    """
    if not 1 <= min_size <= max_size:
        raise UsageError(f"need 1 <= min_size <= max_size, got {min_size} and {max_size}.")
    edges = [b for b in (1, 2, 3, 5, 7) if min_size <= b <= max_size]
    drawn = st.integers(min_size, max_size)
    return st.one_of(st.sampled_from(edges), drawn) if edges else drawn


def shapes(spec: SpecLike, **dims: DimStrategy) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes matching ``spec``; each symbol is drawn once per shape (``"N N"`` is square).

    Symbols take an int or a strategy (``H=st.integers(8, 32)``), else ``DEFAULT_DIM``.

    Example:
        >>> from hypothesis import given, strategies as st
        >>> @given(shapes("B 3 H H", H=st.integers(4, 8)))
        ... def test_square(shape): assert shape[2] == shape[3]
    """
    parsed = parse_spec(spec)
    symbols = {name: _dim_strategy(name, dims.get(name)) for name in parsed.symbols}
    unknown = sorted(set(dims) - set(symbols))
    if unknown:
        raise UsageError(
            f"{', '.join(unknown)} not in the spec {parsed}; its symbols are "
            f"{', '.join(symbols) or 'none'}."
        )
    return _draw_shape(parsed, symbols)


def _dim_strategy(name: str, value: DimStrategy | None) -> st.SearchStrategy[int]:
    if value is None:
        return DEFAULT_DIM
    if isinstance(value, st.SearchStrategy):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{name} must be an int >= 0 or a strategy of ints, got {value!r}.")
    return st.just(value)


@st.composite
def _draw_shape(
    draw: st.DrawFn, spec: Spec, symbols: Mapping[str, st.SearchStrategy[int]]
) -> tuple[int, ...]:
    values = {name: draw(strategy) for name, strategy in symbols.items()}
    shape: list[int] = []
    for dim in spec.dims:
        if dim.kind == "size":
            shape.append(dim.size)
        elif dim.kind == "symbol":
            shape.append(values[dim.name])
        elif dim.kind == "any":
            shape.append(draw(DEFAULT_DIM))
        else:
            shape += draw(st.lists(DEFAULT_DIM, max_size=_MAX_REST))
    return tuple(shape)


def tensors(
    spec: SpecLike, dtype: torch.dtype | str = torch.float32, **dims: DimStrategy
) -> st.SearchStrategy[torch.Tensor]:
    """Tensors whose shape matches ``spec``: floats ~ N(0, 1), integers in [0, 10), bools.

    Example:
        >>> from hypothesis import given
        >>> @given(tensors("B 16", dtype="float64", B=st.integers(1, 4)))
        ... def test_linear(x): assert x.dtype == torch.float64
    """
    parsed_dtype = parse_dtype(dtype)
    seeds = st.integers(0, 2**32 - 1)
    return st.builds(lambda s, seed: _filled(s, parsed_dtype, seed), shapes(spec, **dims), seeds)


def _filled(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, generator=generator).to(dtype)
    return torch.randint(0, 10, shape, generator=generator).to(dtype)


# -- small random architectures ---------------------------------------------------------------
@dataclass(frozen=True)
class Architecture:
    """A small random ``nn.Sequential`` and its contract, for fuzzing code that handles models.

    ``layer_shapes`` are the per-sample output shapes (no batch dim) of each child, worked out
    by arithmetic when the model was drawn: an oracle independent of any tracing.
    """

    model: nn.Sequential
    input_spec: str
    output_spec: str
    sample_shape: tuple[int, ...]
    layer_shapes: tuple[tuple[int, ...], ...]

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A float input of ``batch`` samples (seeded; the global RNG is not touched)."""
        return _filled((batch, *self.sample_shape), torch.float32, seed=batch)


_ACTIVATIONS: list[Callable[[], nn.Module]] = [nn.ReLU, nn.Tanh, nn.GELU, nn.Identity]


class _Builder:
    """Collects layers and their per-sample output shapes while a model is drawn."""

    def __init__(self, sample_shape: tuple[int, ...]) -> None:
        self.input_shape = sample_shape
        self.shape = sample_shape
        self.layers: list[nn.Module] = []
        self.shapes: list[tuple[int, ...]] = []

    def add(self, layer: nn.Module, shape: tuple[int, ...]) -> None:
        self.layers.append(layer)
        self.shapes.append(shape)
        self.shape = shape


def architectures(
    kind: Literal["cnn", "mlp", "any"] = "any", max_blocks: int = 3
) -> st.SearchStrategy[Architecture]:
    """Small CNNs (Conv2d, BatchNorm2d, MaxPool2d, Flatten, Linear) or MLPs.

    Example:
        >>> from hypothesis import given
        >>> @given(architectures("cnn"))
        ... def test_runs(arch): arch.model.eval()(arch.example_input(2))
    """
    if kind not in ("cnn", "mlp", "any"):
        raise UsageError(f"kind must be 'cnn', 'mlp' or 'any', got {kind!r}.")
    if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 1:
        raise UsageError(f"max_blocks must be an int >= 1, got {max_blocks!r}.")
    kinds = ["cnn", "mlp"] if kind == "any" else [kind]
    return st.sampled_from(kinds).flatmap(lambda k: _architecture(k, max_blocks))


@st.composite
def _architecture(draw: st.DrawFn, kind: str, max_blocks: int) -> Architecture:
    seed = draw(st.integers(0, 2**16))
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG is untouched
        torch.manual_seed(seed)
        builder = _draw_cnn(draw, max_blocks) if kind == "cnn" else _draw_mlp(draw, max_blocks)
    sample = builder.input_shape
    spec = "B " + " ".join(str(d) for d in sample)
    out = "B " + " ".join(str(d) for d in builder.shape)
    return Architecture(nn.Sequential(*builder.layers), spec, out, sample, tuple(builder.shapes))


def _draw_cnn(draw: st.DrawFn, max_blocks: int) -> _Builder:
    channels, height = draw(st.integers(1, 4)), draw(st.integers(4, 16))
    builder = _Builder((channels, height, draw(st.sampled_from([height, 4, 7]))))
    for _ in range(draw(st.integers(1, max_blocks))):
        _draw_conv_block(draw, builder)
    c, h, w = builder.shape
    builder.add(nn.Flatten(), (c * h * w,))
    out = draw(st.integers(1, 5))
    builder.add(nn.Linear(c * h * w, out), (out,))
    return builder


def _draw_conv_block(draw: st.DrawFn, builder: _Builder) -> None:
    c, h, w = builder.shape
    kernel = draw(st.sampled_from([1, 3, 5] if min(h, w) >= 5 else [1, 3]))
    padding = draw(st.sampled_from([0, kernel // 2])) if min(h, w) >= kernel else kernel // 2
    out = draw(st.integers(1, 8))
    h, w = h + 2 * padding - kernel + 1, w + 2 * padding - kernel + 1
    builder.add(nn.Conv2d(c, out, kernel, padding=padding), (out, h, w))
    if draw(st.booleans()):
        builder.add(nn.BatchNorm2d(out), (out, h, w))
    builder.add(draw(st.sampled_from(_ACTIVATIONS))(), (out, h, w))
    if min(h, w) >= 2 and draw(st.booleans()):
        builder.add(nn.MaxPool2d(2), (out, h // 2, w // 2))


def _draw_mlp(draw: st.DrawFn, max_blocks: int) -> _Builder:
    builder = _Builder((draw(st.integers(1, 16)),))
    for _ in range(draw(st.integers(1, max_blocks))):
        (features,) = builder.shape
        out = draw(st.integers(1, 16))
        builder.add(nn.Linear(features, out), (out,))
        norm = draw(st.sampled_from(["none", "layer", "batch"]))
        if norm != "none":
            builder.add(nn.LayerNorm(out) if norm == "layer" else nn.BatchNorm1d(out), (out,))
        builder.add(draw(st.sampled_from(_ACTIVATIONS))(), (out,))
        if draw(st.booleans()):
            builder.add(nn.Dropout(0.1), (out,))
    (features,) = builder.shape
    out = draw(st.integers(1, 5))
    builder.add(nn.Linear(features, out), (out,))
    return builder
