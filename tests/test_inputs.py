"""Bad arguments get a UsageError naming the bad value and what is accepted; good ones work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import shapecheck
from shapecheck import UsageError


@pytest.fixture
def model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))


def test_usage_error_is_a_value_error():
    assert issubclass(UsageError, ValueError)
    assert issubclass(UsageError, shapecheck.ShapecheckError)


@pytest.mark.parametrize(
    ("bad", "names", "accepted"),
    [
        (nn.Linear, "Linear", "pass an instance"),
        (lambda x: x, "function", "nn.Module"),
        ("resnet18", "str", "nn.Module instance"),
        (None, "NoneType", "nn.Module instance"),
    ],
    ids=["class", "function", "string", "none"],
)
def test_non_module_model(bad: object, names: str, accepted: str):
    with pytest.raises(UsageError) as caught:
        shapecheck.explain(bad, torch.randn(1, 3))  # type: ignore[arg-type]
    assert names in str(caught.value)
    assert accepted in str(caught.value)


def test_numpy_input_names_the_conversion(model: nn.Module):
    with pytest.raises(UsageError, match=r"input 0 is a numpy ndarray.*torch\.from_numpy"):
        shapecheck.explain(model, np.zeros((1, 3, 32, 32), dtype=np.float32))


def test_numpy_inside_a_dict_is_named_by_its_key(model: nn.Module):
    with pytest.raises(UsageError, match=r"input 0\['image'\] is a numpy"):
        shapecheck.explain(model, {"image": np.zeros((1, 3, 32, 32))})


@pytest.mark.parametrize("shape", [[1, 3, 32, 32], (1, 3, 32, 32)], ids=["list", "tuple"])
def test_a_shape_given_as_input_points_to_input_size(model: nn.Module, shape: object):
    with pytest.raises(UsageError) as caught:
        shapecheck.explain(model, shape)
    text = str(caught.value)
    assert "(1, 3, 32, 32)" in text
    assert "input_size=(1, 3, 32, 32)" in text


@pytest.mark.parametrize(
    "size", [(1, 3, 0, 32), (1, -3, 32, 32), [(1, 3, 32, 32), (0, 4)]], ids=["zero", "neg", "list"]
)
def test_non_positive_sizes(model: nn.Module, size: object):
    with pytest.raises(UsageError, match=r"non-positive.*>= 1"):
        shapecheck.explain(model, input_size=size)


@pytest.mark.parametrize("size", ["1,3,32,32", 5, [], (1.0, 3), [(1, 2), "x"]])
def test_input_size_that_is_not_a_shape(model: nn.Module, size: object):
    with pytest.raises(UsageError, match=r"input_size must be a shape such as \(1, 3, 32, 32\)"):
        shapecheck.explain(model, input_size=size)


@pytest.mark.parametrize("dtype", ["float33", "tensor", "Float32"])
def test_unknown_dtype_names(model: nn.Module, dtype: str):
    with pytest.raises(UsageError, match=rf"unknown dtype '{dtype}'.*'float32'"):
        shapecheck.explain(model, input_size=(1, 3, 32, 32), dtypes=dtype)


@pytest.mark.parametrize("dtype", [torch.dtype, 3], ids=["class", "int"])
def test_dtypes_of_the_wrong_kind(model: nn.Module, dtype: object):
    with pytest.raises(UsageError, match=rf"dtypes must be one dtype .*got {dtype!r}"):
        shapecheck.explain(model, input_size=(1, 3, 32, 32), dtypes=dtype)


def test_dtypes_count_must_match(model: nn.Module):
    with pytest.raises(UsageError, match="one dtype or a list of 1 dtypes"):
        shapecheck.explain(model, input_size=(1, 3, 32, 32), dtypes=["float32", "int64"])


@pytest.mark.parametrize("device", ["gpu", "cuda:x", 7])
def test_unknown_devices(model: nn.Module, device: object):
    with pytest.raises(UsageError) as caught:
        shapecheck.explain(model, input_size=(1, 3, 32, 32), device=device)  # type: ignore[arg-type]
    text = str(caught.value)
    assert "'cpu'" in text or "string or torch.device" in text
    if isinstance(device, str):
        assert repr(device) in text


def test_both_inputs_and_input_size(model: nn.Module):
    with pytest.raises(UsageError, match="not both"):
        shapecheck.explain(model, torch.randn(1, 3, 32, 32), input_size=(1, 3, 32, 32))


def test_dtypes_without_input_size(model: nn.Module):
    with pytest.raises(UsageError, match="only applies together with input_size"):
        shapecheck.explain(model, torch.randn(1, 3, 32, 32), dtypes="float32")


@pytest.mark.parametrize("depth", [-1, 1.5, True, "2"])
def test_bad_depth(model: nn.Module, depth: object):
    with pytest.raises(UsageError, match="depth must be None or an int >= 0"):
        shapecheck.explain(model, torch.randn(1, 3, 32, 32), depth=depth)  # type: ignore[arg-type]


def test_input_size_makes_inputs_without_touching_the_global_rng(model: nn.Module):
    state = torch.get_rng_state()
    report = shapecheck.explain(model, input_size=torch.Size([2, 3, 32, 32]))
    assert report.ok
    assert report.input_shapes == [(2, 3, 32, 32)]
    assert torch.equal(state, torch.get_rng_state())


def test_input_size_with_several_inputs_and_integer_dtypes():
    class TextAndImage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.lin = nn.Linear(4, 4)

        def forward(self, tokens: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
            return self.embed(tokens).mean(1) + self.lin(feats)

    report = shapecheck.explain(TextAndImage(), input_size=[(2, 5), (2, 4)],
                                dtypes=["int64", torch.float32])  # fmt: skip
    assert report.ok, report
    assert [(t.shape, t.dtype) for t in report.inputs] == [((2, 5), "int64"), ((2, 4), "float32")]
    assert report.output_shapes == [(2, 4)]


def test_dtype_names_are_accepted_with_and_without_prefix(model: nn.Module):
    for name in ("float64", "torch.float64", torch.float64):
        report = shapecheck.explain(model.double(), input_size=(1, 3, 32, 32), dtypes=name)
        assert report.ok
        assert report.inputs[0].dtype == "float64"


def test_non_tensor_arguments_pass_through():
    class Scaled(nn.Module):
        def forward(self, x: torch.Tensor, k: int, name: str, flag: bool) -> torch.Tensor:
            return x * k if flag else x

    report = shapecheck.explain(Scaled(), torch.randn(2), 3, "x", True)
    assert report.ok
    assert report.output_shapes == [(2,)]


# -- what learners pass by mistake (issue 13) ---------------------------------------------------


@pytest.mark.parametrize("label", [0, torch.tensor(1)], ids=["int", "tensor"])
def test_a_dataset_item_pair_says_to_pass_the_image_with_a_batch_dim(model: nn.Module, label):
    img = torch.randn(3, 32, 32)
    with pytest.raises(UsageError) as caught:
        shapecheck.explain(model, (img, label))
    text = str(caught.value)
    assert "input 0 is an (input, label) pair" in text
    assert "(3, 32, 32)" in text
    assert "explain(model, img.unsqueeze(0))" in text


@pytest.mark.parametrize("data", [[[0.1, 0.2], [0.3, 0.4]], [0.5, 0.25], [[1, 2], [3, 4]]],
                         ids=["nested-floats", "floats", "nested-ints"])  # fmt: skip
def test_lists_of_numbers_say_to_make_a_tensor(model: nn.Module, data: object):
    with pytest.raises(UsageError, match=r"nested list of numbers, not a tensor.*torch\.tensor"):
        shapecheck.explain(model, data)


def test_no_input_at_all_says_how_to_give_one(model: nn.Module):
    with pytest.raises(UsageError) as caught:
        shapecheck.explain(model)
    assert "no input given, and Sequential.forward(input) needs input" in str(caught.value)
    assert "input_size=(1, 3, 32, 32)" in str(caught.value)


def test_a_forward_that_needs_no_input_runs_without_one():
    class Constant(nn.Module):
        def forward(self) -> torch.Tensor:
            return torch.ones(2, 3)

    assert shapecheck.explain(Constant()).output_shapes == [(2, 3)]


def test_a_loss_class_says_to_pass_an_instance(model: nn.Module):
    with pytest.raises(UsageError, match=r"the class CrossEntropyLoss; .*nn\.CrossEntropyLoss\(\)"):
        shapecheck.explain(model, torch.randn(1, 3, 32, 32), loss_fn=nn.CrossEntropyLoss,
                           target=torch.tensor([0]))  # fmt: skip


def test_target_and_loss_come_together(model: nn.Module):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(UsageError, match="target= is only used with loss_fn="):
        shapecheck.explain(model, x, target=torch.tensor([0]))
    with pytest.raises(UsageError, match="loss_fn= needs target="):
        shapecheck.explain(model, x, loss_fn=nn.CrossEntropyLoss())


@pytest.mark.parametrize("name", ["dry_run", "flops", "fold"])
@pytest.mark.parametrize("value", ["no", 1, None])
def test_flags_must_be_bools(model: nn.Module, name: str, value: object):
    with pytest.raises(UsageError, match=rf"{name} must be True or False, got {value!r}"):
        shapecheck.explain(model, torch.randn(1, 3, 32, 32), **{name: value})


@pytest.mark.parametrize(("typo", "meant"), [("input_sizes", "input_size"), ("dryrun", "dry_run"),
                                             ("dtype", "dtypes"), ("loss", "loss_fn")])  # fmt: skip
def test_a_misspelled_keyword_suggests_the_right_one_before_anything_runs(
    model: nn.Module, typo: str, meant: str
):
    with pytest.raises(UsageError, match=rf"no keyword {typo}=; did you mean {meant}=\?"):
        shapecheck.explain(model, torch.randn(1, 3, 32, 32), **{typo: (1, 3, 32, 32)})


class _WithOptions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0, **extra: object) -> torch.Tensor:
        out: torch.Tensor = self.lin(x) * scale
        return out


def test_keywords_forward_takes_go_to_forward_and_others_are_refused(model: nn.Module):
    x = torch.randn(3, 4)
    assert shapecheck.explain(_WithOptions(), x, scale=2.0).ok
    assert shapecheck.explain(_WithOptions(), x, colour="red").ok  # **extra takes any name
    with pytest.raises(UsageError, match="did you mean input_size="):  # but not a near-typo
        shapecheck.explain(_WithOptions(), x, input_sizes=(3, 4))
    with pytest.raises(UsageError, match=r"Sequential.forward\(input\) takes no keyword 'scale'"):
        shapecheck.explain(model, torch.randn(1, 3, 32, 32), scale=2.0)


def test_an_input_size_too_big_for_the_machine_suggests_a_dry_run():
    pooled = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(4, 2))  # fmt: skip
    with pytest.raises(UsageError) as caught:
        shapecheck.explain(pooled, input_size=(10**6, 3, 10**4, 10**4))
    text = str(caught.value)
    assert "more than this machine can spare" in text
    assert "pass dry_run=True" in text
    report = shapecheck.explain(pooled, input_size=(10**6, 3, 10**4, 10**4), dry_run=True)
    assert report.ok
    assert report.output_shapes == [(10**6, 2)]
