"""shapecheck.testing: the assertions on real models, their messages (golden files), and misuse.

Regenerate the golden messages with ``SHAPECHECK_UPDATE_GOLDEN=1 pytest tests/test_testing.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shapecheck.testing
from shapecheck import UsageError
from shapecheck._compat import torch_at_least
from shapecheck.demo import seed_model, seed_model_fixed
from shapecheck.testing import (
    FALLBACK_BATCH_SIZES,
    assert_batch_polymorphic,
    assert_output_shape,
    assert_param_count,
    assert_runs,
    assert_shapes,
)

GOLDEN = Path(__file__).parent / "golden" / "testing"


def check_golden(name: str, text: str) -> None:
    """Compare with tests/golden/testing/<name>.txt; rewrite it only when asked to."""
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("SHAPECHECK_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    assert path.exists(), f"no golden file {path}; run with SHAPECHECK_UPDATE_GOLDEN=1"
    assert text + "\n" == path.read_text(encoding="utf-8")


def failure(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(AssertionError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return str(info.value)


class Reshape(nn.Module):
    """``x.view(*shape)`` as a layer, as people write it before they know nn.Flatten."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*self.shape)


class BookNet(nn.Module):
    """The book's Net: ``out.view(-1, 512)`` is right for 32 x 32 images only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(512, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(torch.tanh(self.conv1(x)), 2)
        out = F.max_pool2d(torch.tanh(self.conv2(out)), 2)
        out = out.view(-1, 8 * 8 * 8)
        return self.fc2(torch.tanh(self.fc1(out)))


class TimeMajor(nn.Module):
    """(B, T, F) -> (B, 4): a time-major step that uses view where transpose was meant."""

    def __init__(self, fixed: bool) -> None:
        super().__init__()
        self.fixed = fixed
        self.proj = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, f = x.shape
        steps = x.transpose(0, 1) if self.fixed else x.view(t, b, f)  # (T, B, F)
        return torch.tanh(self.proj(steps)).mean(0)


# -- assert_runs ------------------------------------------------------------------------------
def test_assert_runs_returns_the_report_of_a_model_that_runs() -> None:
    report = assert_runs(seed_model_fixed(), torch.randn(2, 3, 32, 32))
    assert report.output_shapes == [(2, 2)]


def test_assert_runs_fails_with_the_table_the_failing_layer_and_the_diagnosis() -> None:
    with pytest.raises(AssertionError) as info:
        assert_runs(seed_model(), torch.randn(1, 3, 32, 32))
    message = str(info.value)
    assert message.startswith("the forward pass raised RuntimeError in layer '6' (Linear)")
    assert "diagnosis: missing-flatten" in message
    assert "  5  MaxPool2d(k=2)" in message
    assert "(1, 8, 8, 8)" in message
    assert "expected  (*, 512)" in message
    assert "insert nn.Flatten() at index 6" in message
    assert "PyTorch   mat1 and mat2 shapes cannot be multiplied (1x512" not in message
    assert "PyTorch   mat1 and mat2 shapes cannot be multiplied (64x8 and 512x32)" in message


# -- assert_shapes / assert_output_shape: symbol binding (golden messages) ------------------------
def test_assert_shapes_passes_when_symbols_bind_consistently() -> None:
    report = assert_shapes(
        seed_model_fixed(),
        torch.randn(3, 3, 32, 32),
        input_spec="B 3 H W",
        expected={"0": "B 16 H W", "3": ("B", 8, "_", "_"), "6": "B 512", "": "B 2"},
    )
    assert report.ok


def test_batch_bound_from_the_input_is_reported_against_the_layer_that_breaks_it() -> None:
    model = nn.Sequential(*list(seed_model())[:6], Reshape(-1, 32), nn.Linear(32, 2))
    message = failure(
        assert_shapes,
        model,
        torch.randn(4, 3, 32, 32),
        input_spec="B 3 32 32",
        expected={"5": "B 8 8 8", "6": "B 32", "": "B 2"},
    )
    assert "B=4 from input 0 dim 0, but layer '6' has 64 at dim 0" in message
    check_golden("batch_from_input", message)


def test_a_symbol_bound_by_an_earlier_layer_is_named_in_the_later_mismatch() -> None:
    message = failure(
        assert_shapes,
        BookNet(),
        torch.randn(2, 3, 64, 64),
        expected={"conv2": "B 8 H W", "fc1": "B 32", "fc2": "N 2"},
    )
    assert "B=2 from layer 'conv2' dim 0, but layer 'fc1' has 8 at dim 0" in message
    assert "layer 'fc2' (Linear) does not match" not in message  # N is free: it matches
    assert "N=8 (layer 'fc2' dim 0)" in " ".join(message.split())  # the line may wrap
    check_golden("batch_from_layer", message)


def test_several_broken_entries_are_all_listed_with_their_arithmetic() -> None:
    message = failure(
        assert_shapes,
        seed_model_fixed(),
        torch.randn(2, 3, 32, 32),
        input_spec="B C H W",
        expected={"3": "B 8 H W", "6": "B C 8 8", "9": "B 3", "fc": "B 2"},
    )
    check_golden("several_entries", message)
    assert "H=32 from input 0 dim 2, but layer '3' has 16 at dim 2" in message
    assert "layer '6' is 2-D (2, 512), but the spec (B, C, 8, 8) needs 4 dims" in message
    assert "layer '9' has 2 at dim 1, the spec says 3" in message
    assert "layer 'fc' did not run in the forward pass" in message


def test_assert_output_shape_checks_every_output_tensor_of_a_tuple() -> None:
    lstm = nn.LSTM(5, 7, batch_first=True)
    x = torch.randn(3, 4, 5)
    assert_output_shape(lstm, x, input_spec="B T 5", spec=["B T 7", "1 B 7", "1 B 7"])
    message = failure(assert_output_shape, lstm, x, input_spec="B T 5", spec=["B T 7", "1 T 7"])
    assert "the output gave 3 tensor(s) (3, 4, 7) (1, 3, 7) (1, 3, 7), the spec lists 2" in message
    message = failure(
        assert_output_shape, lstm, x, input_spec="B T 5", spec=["B T 7"] + ["1 T 7"] * 2
    )
    assert "T=4 from input 0 dim 1, but output 1 has 3 at dim 1" in message


def test_an_input_spec_that_does_not_describe_the_input_is_a_usage_error() -> None:
    model, x = seed_model_fixed(), torch.randn(1, 3, 32, 32)
    with pytest.raises(
        UsageError, match=r"input 0 is 4-D \(1, 3, 32, 32\), but the spec \(B, 3, H\)"
    ):
        assert_output_shape(model, x, input_spec="B 3 H", spec="B 2")
    with pytest.raises(UsageError, match=r"input 0 has 3 at dim 1, the spec says 1"):
        assert_output_shape(model, x, input_spec="B 1 H W", spec="B 2")
    with pytest.raises(UsageError, match=r"input_spec has 2 spec\(s\) for 1 input tensor"):
        assert_output_shape(model, x, input_spec=["B 3 H W", "B"], spec="B 2")
    with pytest.raises(UsageError, match=r"A valid spec"):
        assert_output_shape(model, x, spec="B 2.0")


# -- assert_param_count -------------------------------------------------------------------------
def test_assert_param_count_on_the_cifar2_model() -> None:
    assert_param_count(seed_model_fixed(), total=18_090, trainable=18_090, per_layer={"7": 16_416})


def test_assert_param_count_reports_the_difference_and_the_breakdown() -> None:
    model = seed_model_fixed()
    model[0].weight.requires_grad_(False)
    message = failure(assert_param_count, model, total=18_000, trainable=18_090,
                      per_layer={"7": 16_416, "9": 60, "fc": 1})  # fmt: skip
    check_golden("param_count", message)
    assert "total        18,090, expected 18,000 (+90)" in message
    assert "trainable    17,658, expected 18,090 (-432)" in message
    assert "layer '9'    66, expected 60 (+6)" in message
    assert "layer 'fc'   no such module" in message
    assert "layer '7'" not in message.splitlines()[3]  # a count that matches is not listed


def test_tied_weights_count_once() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert_param_count(model, total=20, per_layer={"0": 20, "2": 20})


def test_assert_param_count_rejects_nothing_to_check_and_bad_counts() -> None:
    with pytest.raises(UsageError, match="needs total=, trainable= or per_layer="):
        assert_param_count(seed_model_fixed())
    with pytest.raises(UsageError, match=r"must be an int >= 0, got -1"):
        assert_param_count(seed_model_fixed(), total=-1)


# -- assert_batch_polymorphic -------------------------------------------------------------------
def test_the_fixed_cifar2_model_is_batch_polymorphic_on_1_odd_and_drawn_sizes() -> None:
    checked = assert_batch_polymorphic(seed_model_fixed(), "B 3 32 32", "B 2", max_examples=4)
    assert checked[:3] == [1, 2, 3]
    assert len(checked) > 3
    assert all(b >= 1 for b in checked)


def test_view_minus_one_512_on_64x64_images_is_caught() -> None:
    message = failure(assert_batch_polymorphic, BookNet(), "B 3 64 64", "B 2", max_examples=2)
    assert message.startswith("at batch size 1: shape contract broken")
    assert "B=1 from input 0 dim 0, but the output has 4 at dim 0" in message
    assert "· view(-1, 512)" in message  # the table shows the op that changed the batch


def test_view_that_merges_two_samples_per_row_is_caught() -> None:
    model = nn.Sequential(*list(seed_model())[:6], Reshape(-1, 512), nn.Linear(512, 2))
    message = failure(assert_batch_polymorphic, model, "B 3 32 16", "B 2", [2, 4])
    assert "B=2 from input 0 dim 0, but the output has 1 at dim 0" in message


def test_view_used_for_transpose_mixes_samples_and_is_caught_by_independence() -> None:
    message = failure(assert_batch_polymorphic, TimeMajor(fixed=False), "B T 6", "B 4", [1, 5], T=3)
    assert message.startswith("at batch size 5: sample 4's output changed when only the other")
    assert "output 0  (5, 4): sample 4 moved by up to" in message
    assert "first     the output of the model" in message  # inside, tensors are time-major
    assert "x.view(T, B, ...) where x.transpose(0, 1) was meant" in message
    assert assert_batch_polymorphic(TimeMajor(fixed=True), "B T 6", "B 4", [1, 5], T=3) == [1, 5]


def test_the_first_layer_whose_output_mixes_samples_is_named() -> None:
    class Center(nn.Module):  # a hand-made "normalisation" over the batch
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x - x.mean(0)

    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), Center(), nn.Linear(4, 2))
    message = failure(assert_batch_polymorphic, model, "B 3", "B 2", [3])
    assert "first     the output of layer '2' (Center)" in message
    assert "still ok  the input of layer '2' (Center)" in message


def test_batchnorm_passes_in_eval_mode_and_the_model_is_left_as_it_was() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
        nn.BatchNorm1d(3), nn.Dropout(0.5),
    )  # fmt: skip
    model.train()
    stats = [b.clone() for b in model.buffers()]
    assert_batch_polymorphic(model, "B 3 8 8", "B 3", [1, 2, 7])
    assert all(m.training for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers(), strict=True))


def test_batch_polymorphic_with_several_integer_inputs_and_a_time_symbol() -> None:
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(2, 5)
            self.out = nn.Linear(5, 3)

        def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.out(self.embed(tokens)) * mask.unsqueeze(-1)

    checked = assert_batch_polymorphic(
        Tagger(), ["B T", "B T"], "B T 3", dtype=[torch.int64, torch.float32], T=4, max_examples=0
    )
    assert checked == [1, 2, 3]


def test_without_hypothesis_a_fixed_list_of_batch_sizes_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # makes `import hypothesis` fail
    checked = assert_batch_polymorphic(nn.Linear(3, 2), "B 3", "B 2")
    assert checked == list(FALLBACK_BATCH_SIZES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"input_spec": "N 3", "output_spec": "N 2"},
            r"batch symbol B is not in input_spec \(N, 3\)",
        ),
        (
            {"input_spec": "B H", "output_spec": "B 2"},
            r"uses the symbol H with no size: pass H=<int>",
        ),
        ({"input_spec": "B _", "output_spec": "B 2"}, r"cannot make a tensor"),
        ({"input_spec": "B 3", "output_spec": "B 2", "batch_sizes": [0]}, r"ints >= 1, got \[0\]"),
        ({"input_spec": "B 3", "output_spec": "B 2", "max_examples": -1}, r"max_examples must"),
        ({"input_spec": "B 3", "output_spec": "B 2", "dtype": "floaty"}, r"unknown dtype"),
    ],
)
def test_batch_polymorphic_misuse_is_a_usage_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        assert_batch_polymorphic(nn.Linear(3, 2), **kwargs)  # type: ignore[arg-type]


# -- module surface -----------------------------------------------------------------------------
def test_public_api_is_exactly_all() -> None:
    public = {n for n in vars(shapecheck.testing) if n.startswith("assert_")}
    assert set(shapecheck.testing.__all__) == public
    assert "testing" not in shapecheck.__all__
    assert "strategies" not in shapecheck.__all__


def test_plugin_loads_without_torch_and_testing_without_hypothesis() -> None:
    code = (
        "import sys\n"
        "import shapecheck.pytest_plugin\n"
        "assert 'torch' not in sys.modules, 'the plugin imported torch'\n"
        "import shapecheck.testing\n"
        "assert 'hypothesis' not in sys.modules, 'shapecheck.testing imported hypothesis'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- assert_contract ------------------------------------------------------------------------------
@pytest.mark.skipif(not torch_at_least("2.13"), reason="contracts need torch >= 2.13")
def test_assert_contract_passes_for_the_cifar2_model_and_returns_the_contract() -> None:
    found = shapecheck.testing.assert_contract(seed_model_fixed(), "B 3 H W", "B 2",
                                               torch.randn(4, 3, 32, 32))  # fmt: skip
    assert found.output == ("B", 2)


@pytest.mark.skipif(not torch_at_least("2.13"), reason="contracts need torch >= 2.13")
def test_assert_contract_fails_with_the_contract_when_the_view_mixes_the_batch() -> None:
    from zoo import BookNet

    with pytest.raises(AssertionError) as failed:
        shapecheck.testing.assert_contract(BookNet(), "B 3 H W", "B 2", B=4, H=32, W=32)
    message = str(failed.value)
    assert message.startswith("input-size contract broken")
    assert "dim 0 is (B*(H//4)*(W//4))//64, not B for every size" in message
    assert "the batch is not kept" in message
    assert "  · view              ((B*(H//4)*(W//4))//64, 512)" in message


@pytest.mark.skipif(not torch_at_least("2.13"), reason="contracts need torch >= 2.13")
def test_assert_contract_binds_a_new_output_symbol_once() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    shapecheck.testing.assert_contract(model, "B 3 4", "B N", (2, 3, 4))
    with pytest.raises(AssertionError, match="dim 0 is B, not 5"):
        shapecheck.testing.assert_contract(model, "B 3 4", "5 N", (2, 3, 4))
