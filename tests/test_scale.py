"""Scale: a ~65-billion-parameter model on the meta device, and dry runs that allocate nothing.

Speed and peak memory are benchmark figures (benchmarks/run.py), not tests; here the models are
so large that any real allocation of their weights or activations could not succeed on this
machine, so finishing at all shows nothing was allocated.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import shapecheck

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import benchzoo as zoo


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.fixture(scope="module")
def giant() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return zoo.transformer_60b(batch=1, seq=2048)


def test_the_60b_meta_model_is_explained_without_storage(
    giant: tuple[nn.Module, tuple[torch.Tensor, ...]],
) -> None:
    model, inputs = giant
    report = shapecheck.explain(model, *inputs, flops=True, optimizer="adam")
    assert report.ok
    assert report.dry_run
    assert report.total_params == zoo.n_params(model) > 60e9
    assert report.output_shapes == [(1, 2048, 32000)]
    assert report.param_bytes > _physical_memory()  # 259 GB of float32 weights: never real
    assert all(p.device.type == "meta" for p in model.parameters())
    memory = report.training_memory
    assert memory is not None
    assert memory.optimizer_state == 2 * memory.params
    assert memory.saved > 0
    assert sum(1 for x in report.layers if x.type == "DecoderBlock") == 80


def test_the_60b_flops_equal_flop_counter_mode_on_meta(
    giant: tuple[nn.Module, tuple[torch.Tensor, ...]],
) -> None:
    model, inputs = giant
    report = shapecheck.explain(model, *inputs, flops=True)
    with FlopCounterMode(display=False) as oracle, torch.no_grad():
        model(*inputs)
    assert report.total_flops == oracle.get_total_flops()
    # Roughly 2 FLOPs a parameter a token, plus attention: the right order of magnitude.
    assert 2 * report.total_params * 2048 < (report.total_flops or 0) < 4 * 2048 * 65e9


def test_a_real_cpu_model_dry_run_allocates_no_activations() -> None:
    # Upsampling 16x then a 64-channel conv: the conv's output alone would be ~275 GB.
    model = nn.Sequential(nn.Upsample(scale_factor=16), nn.Conv2d(3, 64, 3, padding=1), nn.ReLU())
    report = shapecheck.explain(model, torch.randn(64, 3, 256, 256), dry_run=True, flops=True,
                                optimizer="sgd")  # fmt: skip
    assert report.ok
    assert report.layer("1").output_bytes > _physical_memory()
    assert report.layer("1").flops == 2 * 64 * 64 * 4096 * 4096 * 3 * 3 * 3
    memory = report.training_memory
    assert memory is not None
    assert memory.saved > _physical_memory()
    assert next(model.parameters()).device.type == "cpu"
