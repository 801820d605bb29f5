"""``Diagnosis.apply``: a verified fix kept in a copy of the model; the user's model untouched."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

import shapecheck
from shapecheck import ShapecheckError, UsageError
from shapecheck.demo import seed_model


def _state(model: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, state: tuple[str, dict[str, torch.Tensor]]) -> bool:
    text, tensors = state
    now = model.state_dict()
    return repr(model) == text and all(torch.equal(now[k], v) for k, v in tensors.items())


def test_the_seed_fix_is_kept_in_a_new_model() -> None:
    model = seed_model()
    before = _state(model)
    report = shapecheck.explain(model, torch.randn(1, 3, 32, 32))
    fixed = report.diagnoses[0].apply(model)
    assert isinstance(fixed, nn.Sequential)
    assert [type(m).__name__ for m in fixed] == [
        "Conv2d", "Tanh", "MaxPool2d", "Conv2d", "Tanh", "MaxPool2d", "Flatten", "Linear", "Tanh",
        "Linear",
    ]  # fmt: skip
    assert fixed(torch.randn(5, 3, 32, 32)).shape == (5, 2)
    assert _same_state(model, before)
    assert len(model) == 9
    # the copy keeps the trained weights but shares nothing with the original
    assert torch.equal(fixed[7].weight, model[6].weight)
    assert all(p is not q for p in fixed.parameters() for q in model.parameters())


def test_training_the_fixed_copy_leaves_the_original_alone() -> None:
    model = seed_model()
    before = _state(model)
    fixed = shapecheck.explain(model, torch.randn(2, 3, 32, 32)).diagnoses[0].apply(model)
    optimizer = torch.optim.SGD(fixed.parameters(), lr=0.1)
    nn.functional.cross_entropy(
        fixed(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 0, 1])
    ).backward()
    optimizer.step()
    assert not torch.equal(fixed[0].weight, model[0].weight)
    assert _same_state(model, before)


class _NoFlatten(nn.Module):
    """A custom module whose forward forgets to flatten before the Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.relu(self.conv(x)))
        return out


def test_a_custom_module_gets_its_fix_kept_too() -> None:
    model, x = _NoFlatten(), torch.randn(2, 3, 8, 8)
    first = shapecheck.explain(model, x).diagnoses[0]
    assert first.rule == "missing-flatten"
    fixed = first.apply(model)
    assert [tuple(fixed(x).shape)] == first.output_shapes_after_fix == [(2, 5)]
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        model(x)  # the original still has the bug
    # the same layers under the same names: checkpoints of the original load into the copy
    assert repr(fixed) == repr(model)
    fixed.load_state_dict(model.state_dict())
    assert len(model.fc._forward_pre_hooks) == 0  # the fix lives in the copy only


def test_a_fix_to_the_input_is_refused_with_the_code_to_write() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    report = shapecheck.explain(model, torch.randn(3, 32, 32))
    first = report.diagnoses[0]
    assert first.rule == "missing-batch-dim"
    assert first.verified
    with pytest.raises(ShapecheckError, match=r"changes the input(.|\n)*unsqueeze\(0\)"):
        first.apply(model)


def test_a_warning_is_only_a_suggestion() -> None:
    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    report = shapecheck.explain(model, torch.randn(2, 4))
    assert [w.rule for w in report.warnings] == ["reused-module"]
    with pytest.raises(ShapecheckError, match="suggestion"):
        report.warnings[0].apply(model)


def test_an_unverified_fix_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    first = shapecheck.explain(model, torch.randn(1, 3, 32, 32)).diagnoses  # runs: no diagnoses
    assert first == []
    broken = shapecheck.explain(seed_model(), torch.randn(1, 3, 32, 32)).diagnoses[0]
    unverified = shapecheck.Diagnosis((replace(broken.plan[0], outcome=None),))
    with pytest.raises(ShapecheckError, match="not verified"):
        unverified.apply(seed_model())


def test_a_model_without_the_named_layer_is_a_usage_error() -> None:
    diagnosis = shapecheck.explain(seed_model(), torch.randn(1, 3, 32, 32)).diagnoses[0]
    with pytest.raises(UsageError, match="pass the model that explain"):
        diagnosis.apply(nn.Linear(3, 3))


def test_the_structured_fix_stays_out_of_the_json() -> None:
    report = shapecheck.explain(seed_model(), torch.randn(1, 3, 32, 32))
    data = json.loads(json.dumps(report.to_dict()))
    assert "change" not in data["diagnoses"][0]
    assert data["diagnoses"][0]["fix"] == report.diagnoses[0].fix


@pytest.mark.parametrize("norm", [nn.ReLU, nn.LazyBatchNorm2d], ids=["relu", "lazy-batchnorm"])
def test_a_lazy_model_gets_its_fix_kept(norm: type[nn.Module]) -> None:
    # a LazyBatchNorm's running statistics are buffers torch itself cannot deep-copy yet
    model = nn.Sequential(nn.LazyConv2d(4, 3), norm(), nn.LazyLinear(5), nn.Linear(4, 2))
    x = torch.randn(2, 3, 8, 8)
    first = shapecheck.explain(model, x).diagnoses[0]
    assert first.verified
    fixed = first.apply(model)
    assert [tuple(fixed(x).shape)] == first.output_shapes_after_fix
    assert isinstance(model[0], nn.LazyConv2d)  # explain traced a copy; the model stays lazy
