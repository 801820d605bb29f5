"""Benchmark models, written here so no torchvision is needed.

Each factory returns ``(model, example_inputs)``; ``device="meta"`` builds weights without memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Bottleneck",
    "DecoderBlock",
    "ResNet",
    "chain",
    "decoder",
    "gpt2_small",
    "lstm",
    "n_params",
    "resnet50",
    "seed_cnn",
    "transformer_60b",
]  # fmt: skip


def seed_cnn(batch: int = 1) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The seed: the CIFAR-2 CNN of *Deep Learning with PyTorch*, with its Flatten."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(16, 8, kernel_size=3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 32), nn.Tanh(), nn.Linear(32, 2),
    )  # fmt: skip
    return model, (torch.randn(batch, 3, 32, 32),)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 reduce, 3x3 (stride here), 1x1 expand, plus the shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        width, out = planes, planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet(nn.Module):
    """ResNet-50 as in torchvision (v1.5), 25,557,032 parameters with 1000 classes."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, inplanes = [], 64
        for index, blocks in enumerate(layers):
            planes = 64 * 2**index
            stride = 1 if index == 0 else 2
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(batch: int = 1, size: int = 224) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return ResNet(), (torch.randn(batch, 3, size, size),)


class DecoderBlock(nn.Module):
    """Pre-norm GPT-2 block: causal self-attention (SDPA) and a 4x GELU MLP."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.act = nn.GELU(approximate="tanh")
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (t.view(batch, time, self.heads, d // self.heads).transpose(1, 2)
                   for t in (q, k, v))  # fmt: skip
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, time, d))
        return x + self.out(self.act(self.fc(self.ln2(x))))


class Decoder(nn.Module):
    """A GPT-2-style decoder: token and position embeddings, blocks, final norm, tied head."""

    def __init__(self, layers: int, d: int, heads: int, vocab: int, context: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(DecoderBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight  # tied, as in GPT-2

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def decoder(
    layers: int, d: int, heads: int, *, vocab: int = 50257, context: int = 1024,
    batch: int = 1, seq: int = 64, device: str | None = None,
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:  # fmt: skip
    """A decoder of any size; on ``device="meta"`` it costs no memory however large."""
    with torch.device(device or "cpu"):
        model = Decoder(layers, d, heads, vocab, context)
    return model, (torch.zeros(batch, seq, dtype=torch.long, device=device),)


def gpt2_small(batch: int = 1, seq: int = 64) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """12 layers, d=768, 12 heads, vocab 50257, context 1024: 124,439,808 parameters (tied)."""
    return decoder(12, 768, 12, batch=batch, seq=seq)


def transformer_60b(batch: int = 1, seq: int = 2048) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """80 layers, d=8192, 64 heads, vocab 32000 on the meta device: ~64.7 billion parameters."""
    return decoder(80, 8192, 64, vocab=32000, context=4096, batch=batch, seq=seq, device="meta")


class LSTMTagger(nn.Module):
    """Embedding, a 2-layer LSTM and a per-step classifier."""

    def __init__(self, vocab: int = 10000, d: int = 256, hidden: int = 512, tags: int = 20) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.lstm = nn.LSTM(d, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


def lstm(batch: int = 8, seq: int = 64) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return LSTMTagger(), (torch.zeros(batch, seq, dtype=torch.long),)


def chain(layers: int, width: int = 8) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``layers`` Linear+ReLU blocks: the scaling series, where the tracer's cost dominates."""
    blocks = [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(layers)]
    return nn.Sequential(*blocks), (torch.randn(1, width),)


def n_params(model: nn.Module) -> int:
    """Unique parameters (tied weights once)."""
    return sum(p.numel() for p in model.parameters())
