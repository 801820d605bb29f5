"""Real models: no false alarms on healthy ones, the right answer on common failures, and no
surprises (inputs, RNG state, deep nesting, TorchScript).

Each model here is written from the architecture it stands for (GPT-2's Conv1D, Swin's window
partition, T5's shared embedding, BEiT's attention reading its child's weight, a ViT patch
embedding, a VGG-style stack); none comes from those libraries.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shapecheck


def _warnings(model: nn.Module, *args: object) -> list[str]:
    report = shapecheck.explain(model, *args)
    assert report.ok, report
    return [w.rule for w in report.warnings]


# -- no false warnings ----------------------------------------------------------------------------
class _Conv1D(nn.Module):
    """GPT-2's Conv1D: a Linear over (batch·seq) rows, ``view(-1, n)`` and back."""

    def __init__(self, nx: int, nf: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))
        self.nf = nf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = (*x.size()[:-1], self.nf)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class _GPT2Block(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.ln, self.c_fc, self.c_proj = nn.LayerNorm(d), _Conv1D(d, 4 * d), _Conv1D(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c_proj(F.gelu(self.c_fc(self.ln(x))))


def _windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """Swin's window partition: (B, H, W, C) -> (B·H/w·W/w, w, w, C)."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, w, w, c)


def _unwindows(x: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    b = int(x.shape[0] / (h * wd / w / w))
    x = x.view(b, h // w, wd // w, w, w, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, wd, -1)


class _SwinStage(nn.Module):
    def __init__(self, c: int = 8, window: int = 4) -> None:
        super().__init__()
        self.window, self.mix = window, nn.Linear(c, c)
        self.head = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        mixed = self.mix(_windows(x, self.window))
        out: torch.Tensor = self.head(_unwindows(mixed, self.window, h, w).mean((1, 2)))
        return out


class _Seq2Seq(nn.Module):
    """T5-style: ``shared`` is never called; its weight is the encoder's and the decoder's
    ``embed_tokens.weight``."""

    def __init__(self, vocab: int = 20, d: int = 8) -> None:
        super().__init__()
        self.shared = nn.Embedding(vocab, d)
        self.enc_embed, self.dec_embed = nn.Embedding(vocab, d), nn.Embedding(vocab, d)
        self.enc_embed.weight = self.shared.weight
        self.dec_embed.weight = self.shared.weight
        self.mix = nn.Linear(d, d)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        memory = self.mix(self.enc_embed(src)).mean(1, keepdim=True)
        return self.dec_embed(tgt) + memory


class _BeitAttention(nn.Module):
    """BEiT-style: the parent reads ``self.qkv.weight`` with F.linear, never calling qkv."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(d))
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat([self.q_bias, torch.zeros(2 * self.q_bias.numel())])
        q, k, v = F.linear(x, self.qkv.weight, bias).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        out: torch.Tensor = self.proj(attn @ v)
        return out


class _Detector(nn.Module):
    """Takes a list of images (as detection models do) and flattens anchors per image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        batch = torch.stack(images)
        anchors = self.conv(batch).permute(0, 2, 3, 1).reshape(-1, 4)  # all images' anchors
        return list(anchors.view(len(images), -1, 4))


def test_no_warnings_on_models_whose_views_undo_themselves() -> None:
    assert _warnings(_GPT2Block(), torch.randn(2, 5, 16)) == []
    assert _warnings(_SwinStage(), torch.randn(2, 8, 8, 8)) == []
    assert _warnings(_Detector(), [torch.randn(3, 8, 8), torch.randn(3, 8, 8)]) == []


def test_the_book_net_on_64_pixel_images_still_warns() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 16 * 16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = F.max_pool2d(torch.tanh(self.conv(x)), 2)
            return self.fc(out.view(-1, 8 * 16 * 16))

    assert _warnings(Net(), torch.randn(3, 3, 64, 64)) == ["view-batch"]
    assert _warnings(Net(), torch.randn(3, 3, 32, 32)) == []


def test_weights_shared_or_read_directly_are_not_unused() -> None:
    ids = torch.randint(0, 20, (2, 5))
    assert _warnings(_Seq2Seq(), ids, ids) == []
    assert _warnings(_BeitAttention(), torch.randn(2, 5, 8)) == []
    spare = _BeitAttention()
    spare.extra = nn.Linear(8, 8)  # really unused: still reported
    assert _warnings(spare, torch.randn(2, 5, 8)) == ["unused-module"]


# -- common failures, answered in one step ------------------------------------------------------
def _vgg() -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in ((3, 8), (8, 16), (16, 32), (32, 32), (32, 64)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def test_an_8_pixel_image_into_a_vgg_style_net_gets_the_size_for_the_whole_model() -> None:
    report = shapecheck.explain(_vgg(), torch.randn(2, 3, 8, 8))
    first = report.diagnoses[0]
    assert (first.rule, len(first.plan), first.verified) == ("input-too-small", 1, True)
    assert "the smallest input that gets through the whole model is (32, 32)" in first.message
    assert first.output_shapes_after_fix == [(2, 10)]


def test_an_integer_image_into_float_ops_is_cast_and_scaled() -> None:
    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.mean(dim=(2, 3)))

    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    first = shapecheck.explain(Pooled(), pixels).diagnoses[0]
    assert (first.rule, first.verified) == ("dtype", True)
    assert first.fix.startswith("x = x.float() / 255")
    assert "cannot take integer (uint8) input" in first.message


def test_heads_that_do_not_divide_the_features_get_the_arithmetic() -> None:
    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(12, 12)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            return self.qkv(x).view(b, t, 5, -1)  # 5 heads for 12 features

    report = shapecheck.explain(Split(), torch.randn(2, 3, 12))
    first = report.diagnoses[0]
    assert first.rule == "view-size"
    assert "-1 would have to be 72 / 30 = 2.4: not a whole number" in first.message


# -- no surprises ------------------------------------------------------------------------------
class _WritesItsInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.relu = nn.Linear(4, 4), nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        y[0] = 7.0
        random.seed(5)  # reseeds Python's RNG, as some data pipelines do
        return self.fc(self.relu(x)) + y


def test_the_callers_inputs_and_pythons_random_state_are_left_as_they_were() -> None:
    x, y = torch.randn(2, 4), torch.randn(2, 4)
    x_before, y_before, state = x.clone(), y.clone(), random.getstate()
    for dry_run in (False, True):
        report = shapecheck.explain(_WritesItsInputs(), x, y, dry_run=dry_run)
        assert report.ok
        assert torch.equal(x, x_before)
        assert torch.equal(y, y_before)
        assert random.getstate() == state
    relu_first = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 2))
    shapecheck.explain(relu_first, x)
    assert torch.equal(x, x_before)


def test_nesting_as_deep_as_pytorch_runs_is_explained() -> None:
    model: nn.Module = nn.Linear(4, 4)
    for _ in range(200):
        model = nn.Sequential(model)
    x = torch.randn(2, 4)
    assert model(x).shape == (2, 4)  # PyTorch itself runs it
    report = shapecheck.explain(model, x)
    assert report.ok, report.failure
    assert len(report.layers) == 201


def _scripted(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # torch.jit.script is deprecated in recent torch
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted: nn.Module = torch.jit.script(module)
    return scripted


def test_a_torchscript_model_is_a_usage_error_and_a_scripted_submodule_is_no_alarm() -> None:
    scripted = _scripted(nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(shapecheck.UsageError, match=r"TorchScript module.*pass the nn.Module"):
        shapecheck.explain(scripted, torch.randn(2, 4))

    class Host(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.fc = _scripted(nn.Linear(4, 3)), nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.fc(self.inner(x))
            return out

    report = shapecheck.explain(Host(), torch.randn(2, 4))
    assert report.ok, report.failure
    assert report.warnings == []


def test_a_fix_that_needs_a_huge_layer_is_tried_on_shapes_only_in_a_dry_run() -> None:
    """Resizing a Linear to 10**12 inputs would take 8 TB: the dry run tries it on ``meta``
    weights (shapes only, and says so); apply would build it for real."""
    report = shapecheck.explain(nn.Linear(16, 2), input_size=(4, 10**12), dry_run=True)
    first = report.diagnoses[0]
    assert (first.rule, first.verified, first.verified_by) == (
        "linear-in-features",
        True,
        "dry run",
    )
    assert first.output_shapes_after_fix == [(4, 2)]
