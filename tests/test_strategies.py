"""shapecheck.strategies: drawn shapes and tensors fit their spec; drawn models really run."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import shapecheck
from shapecheck import UsageError, strategies
from shapecheck._spec import Bindings, match, parse_spec
from shapecheck.strategies import Architecture, architectures, batch_sizes, shapes, tensors
from shapecheck.testing import assert_batch_polymorphic


@settings(max_examples=40)
@given(shapes("B 3 H H * _", H=st.integers(2, 5)))
def test_drawn_shapes_match_their_spec_and_symbols_repeat(shape: tuple[int, ...]) -> None:
    assert match(parse_spec("B 3 H H * _"), shape, "x", Bindings()) is None
    assert 2 <= shape[2] == shape[3] <= 5
    assert 5 <= len(shape) <= 8


@settings(max_examples=20)
@given(
    tensors("B 4", dtype="float64", B=3),
    tensors("N", dtype=torch.int64),
    tensors("_", dtype=torch.bool),
)
def test_drawn_tensors_have_the_spec_shape_and_dtype(
    x: torch.Tensor, ids: torch.Tensor, flags: torch.Tensor
) -> None:
    assert x.shape == (3, 4)
    assert x.dtype == torch.float64
    assert ids.dtype == torch.int64
    assert ((ids >= 0) & (ids < 10)).all()
    assert flags.dtype == torch.bool
    assert flags.dim() == 1


@settings(max_examples=30)
@given(batch_sizes(2, 9))
def test_batch_sizes_stay_in_range(size: int) -> None:
    assert 2 <= size <= 9


def test_drawing_tensors_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()

    @settings(max_examples=5)
    @given(tensors("B 8"), architectures())
    def draw(x: torch.Tensor, arch: Architecture) -> None:
        pass

    draw()
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: shapes("B 3", H=4), r"H not in the spec \(B, 3\); its symbols are B"),
        (lambda: shapes("B 3", B=-1), r"B must be an int >= 0 or a strategy"),
        (lambda: shapes("B 3 H?"), r"A valid spec"),
        (lambda: tensors("B", dtype="floaty"), r"unknown dtype"),
        (lambda: batch_sizes(0, 4), r"need 1 <= min_size <= max_size"),
        (lambda: architectures("rnn"), r"kind must be 'cnn', 'mlp' or 'any'"),  # type: ignore[arg-type]
        (lambda: architectures(max_blocks=0), r"max_blocks must be an int >= 1"),
    ],
)
def test_bad_arguments_are_usage_errors(call: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        call()  # type: ignore[operator]


@settings(max_examples=15)
@given(architectures(max_blocks=3), batch_sizes(1, 5))
def test_drawn_models_run_with_the_shapes_worked_out_by_arithmetic(
    arch: Architecture, batch: int
) -> None:
    report = shapecheck.explain(arch.model.eval(), arch.example_input(batch))
    assert report.ok, str(report)
    children = [x for x in report.layers if x.kind == "module" and x.depth == 1]
    assert [x.output_shapes[0] for x in children] == [(batch, *s) for s in arch.layer_shapes]
    assert report.output_shapes == [(batch, *arch.layer_shapes[-1])]
    assert arch.output_spec == "B " + " ".join(map(str, arch.layer_shapes[-1]))


@settings(max_examples=5)
@given(architectures("cnn", max_blocks=2))
def test_drawn_cnns_are_batch_polymorphic(arch: Architecture) -> None:
    assert "Conv2d" in str(arch.model)
    assert_batch_polymorphic(arch.model, arch.input_spec, arch.output_spec, [1, 3])


def test_public_api_is_exactly_all() -> None:
    public = {n for n, v in vars(strategies).items() if not n.startswith("_")}
    public = {
        n
        for n in public
        if getattr(getattr(strategies, n), "__module__", "") == strategies.__name__
    }
    assert set(strategies.__all__) == public
