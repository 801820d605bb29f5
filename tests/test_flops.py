"""FLOPs per layer: totals and per-module figures equal torch's FlopCounterMode on real models."""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import shapecheck
from shapecheck._flops import FlopCounter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import benchzoo as zoo

Factory = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]

ZOO: dict[str, Factory] = {
    "seed_cnn": lambda: zoo.seed_cnn(batch=2),
    "resnet50": lambda: zoo.resnet50(batch=2, size=32),  # 2: train-mode BN on 1x1 maps
    "gpt2_small": lambda: zoo.gpt2_small(batch=1, seq=16),
    "lstm": lambda: zoo.lstm(batch=2, seq=8),
    "decoder_meta": lambda: zoo.decoder(2, 64, 4, vocab=100, seq=8, device="meta"),
}


@pytest.fixture(scope="module", params=sorted(ZOO))
def built(request: pytest.FixtureRequest) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return ZOO[request.param]()


def _oracle(model: nn.Module, inputs: tuple[Any, ...]) -> FlopCounterMode:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return counter


def _per_path(report: shapecheck.Report) -> dict[str, int]:
    """Module FLOPs summed over calls, named as FlopCounterMode names them (``Root.path``)."""
    sums: dict[str, int] = defaultdict(int)
    for layer in report.layers:
        if layer.kind == "module":
            assert layer.flops is not None
            name = report.model_type + (f".{layer.path}" if layer.path else "")
            sums[name] += layer.flops
    return dict(sums)


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry"])
def test_totals_and_per_module_flops_equal_flop_counter_mode(
    built: tuple[nn.Module, tuple[torch.Tensor, ...]], dry_run: bool
) -> None:
    model, inputs = built
    report = shapecheck.explain(model, *inputs, flops=True, dry_run=dry_run)
    oracle = _oracle(model, inputs)
    assert report.ok
    assert report.total_flops == oracle.get_total_flops()
    expected = {k: sum(v.values()) for k, v in oracle.get_flop_counts().items() if k != "Global"}
    counted = _per_path(report)
    assert {k: v for k, v in counted.items() if v} == expected
    assert report.layers[0].flops == report.total_flops  # the root includes everything


def test_flops_are_inclusive_of_children_and_functional_ops() -> None:
    model, inputs = zoo.resnet50(batch=2, size=32)
    report = shapecheck.explain(model, *inputs, flops=True)
    assert report.ok
    for layer in report.layers:
        children = [x for x in report.layers if x.parent == layer.index]
        if children and layer.type in {"Sequential", "ResNet"}:  # no ops of their own
            assert layer.flops == sum(x.flops or 0 for x in children), layer.path
    conv = report.layer("conv1")
    # 2 * (out elements) * (in channels * kernel area): conv1 maps 3 -> 64 channels, 7x7, 16x16 out
    assert conv.flops == 2 * 2 * 64 * 16 * 16 * 3 * 7 * 7


def test_functional_ops_get_their_own_flops() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(6, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x @ self.weight).sum(dim=1)

    report = shapecheck.explain(Functional(), torch.randn(3, 6), flops=True)
    matmul = next(x for x in report.layers if x.kind == "function" and x.flops)
    assert matmul.flops == 2 * 3 * 6 * 4
    assert report.total_flops == matmul.flops


def test_without_flops_nothing_is_counted_and_the_table_has_no_flops_column() -> None:
    model, inputs = zoo.seed_cnn()
    plain = shapecheck.explain(model, *inputs)
    counted = shapecheck.explain(model, *inputs, flops=True)
    assert plain.total_flops is None
    assert all(x.flops is None for x in plain.layers)
    assert "FLOPs" not in str(plain).splitlines()[1]
    assert "FLOPs" in str(counted).splitlines()[1]
    assert max(len(line) for line in str(counted).splitlines()) <= 100
    assert counted.to_dict()["total_flops"] == counted.total_flops
    assert counted.to_dict()["layers"][1]["flops"] == counted.layers[1].flops


def test_a_failing_forward_keeps_the_flops_counted_before_it() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(5, 2))
    report = shapecheck.explain(model, torch.randn(2, 8), flops=True)
    assert not report.ok
    assert report.layer("0").flops == 2 * 2 * 8 * 4
    assert report.total_flops == 2 * 2 * 8 * 4


def test_flop_counter_matches_flop_counter_mode_on_attention_on_meta() -> None:
    # On meta tensors SDPA runs its math decomposition, whose matmuls have formulas.
    q = torch.empty(2, 4, 32, 16, device="meta")
    with FlopCounter() as ours:
        nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    with FlopCounterMode(display=False) as theirs:
        nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert ours.total == theirs.get_total_flops() > 0
