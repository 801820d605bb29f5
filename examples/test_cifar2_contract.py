"""The CIFAR-2 CNN's shape contract, one shapecheck assertion at a time.

Run it with ``pytest examples/test_cifar2_contract.py`` (the shapecheck plugin is loaded by its
entry point). The model is the book's chapter-8 CNN with the ``nn.Flatten()`` that shapecheck
proposes: 18,090 parameters, (B, 3, 32, 32) -> (B, 2) for any batch size B.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from torch import nn

from shapecheck import strategies as sst
from shapecheck.demo import seed_model_fixed
from shapecheck.testing import (
    assert_batch_polymorphic,
    assert_output_shape,
    assert_param_count,
    assert_runs,
    assert_shapes,
)


@pytest.fixture
def model() -> nn.Module:
    return seed_model_fixed()


def test_the_forward_runs(model: nn.Module) -> None:
    # On failure the message is the whole explanation: the table, the failing layer, the fix.
    report = assert_runs(model, torch.randn(4, 3, 32, 32))
    assert report.output_shapes == [(4, 2)]


def test_output_shape(model: nn.Module) -> None:
    x = torch.randn(4, 3, 32, 32)
    assert_output_shape(model, x, input_spec="B 3 H W", spec="B 2")


def test_layer_shapes(model: nn.Module) -> None:
    # B, H and W bind from the input and must agree everywhere; _ is any one dim.
    assert_shapes(
        model,
        torch.randn(4, 3, 32, 32),
        input_spec="B 3 H W",
        expected={"0": "B 16 H W", "2": "B 16 _ _", "5": "B 8 8 8", "6": "B 512", "": "B 2"},
    )


def test_parameter_count(model: nn.Module) -> None:
    # "7" counts its subtree: Linear(512, 32) has 512 * 32 + 32 parameters.
    assert_param_count(model, total=18_090, trainable=18_090, per_layer={"7": 16_416})


def test_any_batch_size(model: nn.Module) -> None:
    # Batch sizes 1, 2, 3 and a few drawn by hypothesis; also checks that no sample's output
    # depends on the other samples (the bug x.view(-1, 512) makes on 64 x 64 images).
    checked = assert_batch_polymorphic(model, "B 3 32 32", "B 2", max_examples=5)
    assert checked[:3] == [1, 2, 3]


@pytest.mark.shapes(input="B 3 32 32", output="B 2")
def test_contract_by_marker() -> nn.Module:
    # The plugin checks the returned model like assert_batch_polymorphic; the number of drawn
    # batch sizes is set by pytest --shapecheck-examples=N.
    return seed_model_fixed()


def test_layer_table_snapshot(model: nn.Module, shape_snapshot) -> None:  # type: ignore[no-untyped-def]
    # Compared with __shapes__/test_cifar2_contract/test_layer_table_snapshot.txt;
    # pytest --shapecheck-update writes it after an intended architecture change.
    shape_snapshot(model, torch.randn(2, 3, 32, 32))


@settings(max_examples=10, deadline=None)
@given(sst.tensors("B 3 32 32", B=sst.batch_sizes(1, 8)))
def test_images_of_any_batch(x: torch.Tensor) -> None:
    out = seed_model_fixed().eval()(x)
    assert out.shape == (x.shape[0], 2)
