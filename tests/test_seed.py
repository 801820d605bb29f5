"""The seed notebook's facts (../shared/seed/README.md), reproduced exactly by explain()."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from zoo import conv_out, fixed, run_fixed

import shapecheck
from shapecheck.demo import seed_model, seed_model_fixed

SEED_SHAPES = [(1, 16, 32, 32), (1, 16, 32, 32), (1, 16, 16, 16), (1, 8, 16, 16), (1, 8, 16, 16),
               (1, 8, 8, 8)]  # fmt: skip
PER_TENSOR = [432, 16, 1152, 8, 16384, 32, 64, 2]


@pytest.fixture
def image() -> torch.Tensor:
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(params=[False, True], ids=["real", "dry"])
def dry_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_seed_fails_at_the_linear_with_the_partial_table(image: torch.Tensor, dry_run: bool):
    report = shapecheck.explain(seed_model(), image, dry_run=dry_run)
    assert report.ok is False
    assert report.failure is not None
    assert (report.failure.path, report.failure.type) == ("6", "Linear")
    assert report.failure.input_shapes == [(1, 8, 8, 8)]
    modules = {x.path: x for x in report.layers if x.kind == "module"}
    assert [modules[str(i)].output_shapes for i in range(6)] == [[s] for s in SEED_SHAPES]
    assert modules["6"].failed
    assert modules["6"].output_shapes == []
    assert modules[""].failed  # the root's forward raised too
    assert {"7", "8"}.isdisjoint(modules)  # never reached
    assert report.layer("0").input_shapes == [(1, 3, 32, 32)]


def test_seed_totals_and_per_tensor_counts(image: torch.Tensor):
    model = seed_model()
    report = shapecheck.explain(model, image)
    assert [p.numel() for p in model.parameters()] == PER_TENSOR
    assert report.total_params == sum(PER_TENSOR) == 18_090
    assert report.trainable_params == 18_090
    assert report.param_bytes_by_dtype == {"float32": 18_090 * 4}
    # each module row owns its weight and bias: 432+16, 1152+8, 16384+32 (and 64+2 once fixed)
    owned = {x.path: x.params for x in report.layers if x.kind == "module"}
    assert (owned["0"], owned["3"], owned["6"]) == (448, 1160, 16416)
    fixed_report = shapecheck.explain(seed_model_fixed(), image)
    owned_fixed = [x.params for x in fixed_report.layers if x.kind == "module" and x.params]
    pairs = [a + b for a, b in zip(PER_TENSOR[::2], PER_TENSOR[1::2], strict=True)]
    assert owned_fixed == pairs


def test_seed_quotes_pytorchs_own_message(image: torch.Tensor):
    model = seed_model()
    with pytest.raises(RuntimeError) as real:
        model(image)
    report = shapecheck.explain(model, image)
    assert report.failure is not None
    assert "64x8 and 512x32" in str(real.value)
    assert report.failure.message == str(real.value).splitlines()[0]
    assert type(report.failure.exception) is type(real.value)
    assert "mat1 and mat2 shapes cannot be multiplied (64x8 and 512x32)" in str(report)


def test_seed_first_diagnosis_is_a_verified_missing_flatten(image: torch.Tensor, dry_run: bool):
    report = shapecheck.explain(seed_model(), image, dry_run=dry_run)
    first = report.diagnoses[0]
    assert (first.rule, first.path, first.verified) == ("missing-flatten", "6", True)
    assert first.output_shapes_after_fix == [(1, 2)]
    assert "nn.Flatten()" in first.fix
    assert "8*8*8 = 512" in first.message


def test_applying_the_seed_fix_really_runs(image: torch.Tensor):
    model = seed_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = shapecheck.explain(model, image).diagnoses[0]
    with fixed(model, (image,), first) as applied:
        out = run_fixed(applied)
        assert any(isinstance(m, nn.Flatten) for m in applied.model.modules())
    assert tuple(out.shape) == (1, 2)
    # the same numbers as the hand-fixed model that shares these weights
    by_hand = nn.Sequential(*list(model)[:6], nn.Flatten(), *list(model)[6:])
    torch.testing.assert_close(out, by_hand(image))
    # the fix was applied to a view: the user's model is as it was, and still broken
    assert not any(isinstance(m, nn.Flatten) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="64x8 and 512x32"):
        model(image)


def test_fixed_seed_runs_end_to_end(image: torch.Tensor, dry_run: bool):
    report = shapecheck.explain(seed_model_fixed(), image, dry_run=dry_run)
    assert report.ok
    assert report.failure is None
    assert report.diagnoses == []
    assert report.output_shapes == [(1, 2)]
    assert report.layer("6").type == "Flatten"
    assert report.layer("6").output_shapes == [(1, 512)]
    assert report.total_params == 18_090


@pytest.mark.parametrize(
    ("conv", "expected"),
    [
        (lambda: nn.Conv2d(3, 16, kernel_size=3), (1, 16, 30, 30)),
        (lambda: nn.Conv2d(3, 16, kernel_size=3, padding=1), (1, 16, 32, 32)),
        (lambda: nn.Conv2d(3, 1, kernel_size=3, padding=1), (1, 1, 32, 32)),
    ],
    ids=["conv", "conv-padding1", "conv-one-channel"],
)
def test_seed_conv_facts(conv, expected: tuple[int, ...], image: torch.Tensor):
    module = conv()
    report = shapecheck.explain(module, image)
    assert report.output_shapes == [expected]
    padding = module.padding[0]
    assert expected[-1] == conv_out(32, 3, padding=padding)  # the textbook formula agrees
    # weight [out, 3, 3, 3] and bias [out]: the notebook's [16, 3, 3, 3]/[16] and [1, 3, 3, 3]/[1]
    out = expected[1]
    assert (tuple(module.weight.shape), tuple(module.bias.shape)) == ((out, 3, 3, 3), (out,))
    assert report.total_params == math.prod((out, 3, 3, 3)) + out


def test_seed_maxpool_halves(image: torch.Tensor):
    report = shapecheck.explain(nn.MaxPool2d(2), torch.randn(1, 16, 32, 32))
    assert report.output_shapes == [(1, 16, 16, 16)]
    assert report.total_params == 0
    assert report.layers[0].summary == "MaxPool2d(k=2)"


def test_seed_summary_names_hyperparameters(image: torch.Tensor):
    report = shapecheck.explain(seed_model_fixed(), image)
    summaries = [x.summary for x in report.layers if x.kind == "module" and x.path]
    assert summaries[:2] == ["Conv2d(3→16, k=3, p=1)", "Tanh"]
    assert "Linear(512→32)" in summaries
