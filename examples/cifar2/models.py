"""The chapter-8 models of *Deep Learning with PyTorch*, corrected.

Same layers and parameter counts as the book, with three fixes: the Sequential has the
``nn.Flatten()`` it was missing, ``forward`` flattens with ``flatten(1)`` (the book's
``view(-1, 512)`` silently changes the batch size on other input sizes), and NetResDeep builds
independent residual blocks (the book repeats one instance). The originals are in
``book_models.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODELS",
    "ModelSpec",
    "Net",
    "NetBatchNorm",
    "NetDepth",
    "NetDropout",
    "NetRes",
    "NetResDeep",
    "NetWidth",
    "ResBlock",
    "build_model",
    "count_params",
    "seq_model",
]


def seq_model() -> nn.Sequential:
    """The seed notebook's Sequential CNN with ``nn.Flatten()`` inserted at index 6."""
    return nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 8, kernel_size=3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 32),
        nn.Tanh(),
        nn.Linear(32, 2),
    )


class Net(nn.Module):
    """Two conv + tanh + max-pool stages, then 512 -> 32 -> 2 (the book's ``Net``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(torch.tanh(self.conv1(x)), 2)
        out = F.max_pool2d(torch.tanh(self.conv2(out)), 2)
        out = torch.tanh(self.fc1(out.flatten(1)))
        logits: torch.Tensor = self.fc2(out)
        return logits


class NetWidth(nn.Module):
    """``Net`` with ``n_chans1`` (32) and ``n_chans1 // 2`` channels."""

    def __init__(self, n_chans1: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(n_chans1, n_chans1 // 2, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * n_chans1 // 2, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(torch.tanh(self.conv1(x)), 2)
        out = F.max_pool2d(torch.tanh(self.conv2(out)), 2)
        out = torch.tanh(self.fc1(out.flatten(1)))
        logits: torch.Tensor = self.fc2(out)
        return logits


class NetDropout(nn.Module):
    """``NetWidth`` with ``Dropout2d(p=0.4)`` after each conv stage."""

    def __init__(self, n_chans1: int = 32, p: float = 0.4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        self.conv1_dropout = nn.Dropout2d(p=p)
        self.conv2 = nn.Conv2d(n_chans1, n_chans1 // 2, kernel_size=3, padding=1)
        self.conv2_dropout = nn.Dropout2d(p=p)
        self.fc1 = nn.Linear(8 * 8 * n_chans1 // 2, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1_dropout(F.max_pool2d(torch.tanh(self.conv1(x)), 2))
        out = self.conv2_dropout(F.max_pool2d(torch.tanh(self.conv2(out)), 2))
        out = torch.tanh(self.fc1(out.flatten(1)))
        logits: torch.Tensor = self.fc2(out)
        return logits


class NetBatchNorm(nn.Module):
    """``NetWidth`` with ``BatchNorm2d`` between each conv and its tanh."""

    def __init__(self, n_chans1: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        self.conv1_batchnorm = nn.BatchNorm2d(num_features=n_chans1)
        self.conv2 = nn.Conv2d(n_chans1, n_chans1 // 2, kernel_size=3, padding=1)
        self.conv2_batchnorm = nn.BatchNorm2d(num_features=n_chans1 // 2)
        self.fc1 = nn.Linear(8 * 8 * n_chans1 // 2, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(torch.tanh(self.conv1_batchnorm(self.conv1(x))), 2)
        out = F.max_pool2d(torch.tanh(self.conv2_batchnorm(self.conv2(out))), 2)
        out = torch.tanh(self.fc1(out.flatten(1)))
        logits: torch.Tensor = self.fc2(out)
        return logits


class NetDepth(nn.Module):
    """Three conv + ReLU + max-pool stages (32, 16, 16 channels), then 256 -> 32 -> 2."""

    def __init__(self, n_chans1: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(n_chans1, n_chans1 // 2, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(n_chans1 // 2, n_chans1 // 2, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(4 * 4 * n_chans1 // 2, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        out = F.max_pool2d(torch.relu(self.conv2(out)), 2)
        out = F.max_pool2d(torch.relu(self.conv3(out)), 2)
        out = torch.relu(self.fc1(out.flatten(1)))
        logits: torch.Tensor = self.fc2(out)
        return logits


class NetRes(NetDepth):
    """``NetDepth`` with a skip connection around the third conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        out = F.max_pool2d(torch.relu(self.conv2(out)), 2)
        out = F.max_pool2d(torch.relu(self.conv3(out)) + out, 2)
        out = torch.relu(self.fc1(out.flatten(1)))
        logits: torch.Tensor = self.fc2(out)
        return logits


class ResBlock(nn.Module):
    """conv (no bias) -> batch norm -> ReLU, plus the input; the book's initialisation."""

    def __init__(self, n_chans: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_chans, n_chans, kernel_size=3, padding=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(num_features=n_chans)
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
        nn.init.constant_(self.batch_norm.weight, 0.5)
        nn.init.zeros_(self.batch_norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.batch_norm(self.conv(x))) + x


class NetResDeep(nn.Module):
    """conv 3 -> 32, ``n_blocks`` independent ``ResBlock``s at 16 x 16, then 2048 -> 32 -> 2."""

    def __init__(self, n_chans1: int = 32, n_blocks: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        # One new block per position; the book's `n_blocks * [ResBlock(...)]` repeats one.
        self.resblocks = nn.Sequential(*(ResBlock(n_chans1) for _ in range(n_blocks)))
        self.fc1 = nn.Linear(8 * 8 * n_chans1, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        out = F.max_pool2d(self.resblocks(out), 2)
        out = torch.relu(self.fc1(out.flatten(1)))
        logits: torch.Tensor = self.fc2(out)
        return logits


@dataclass(frozen=True)
class ModelSpec:
    """How to build one variant and the book's recipe for it."""

    build: Callable[[int], nn.Module]  # takes the number of residual blocks (resdeep only)
    lr: float = 1e-2
    l2_lambda: float = 0.0


MODELS: dict[str, ModelSpec] = {
    "seq": ModelSpec(lambda _: seq_model()),
    "net": ModelSpec(lambda _: Net()),
    "width": ModelSpec(lambda _: NetWidth()),
    "l2": ModelSpec(lambda _: Net(), l2_lambda=1e-3),
    "dropout": ModelSpec(lambda _: NetDropout()),
    "batchnorm": ModelSpec(lambda _: NetBatchNorm()),
    "depth": ModelSpec(lambda _: NetDepth()),
    "res": ModelSpec(lambda _: NetRes()),
    "resdeep": ModelSpec(lambda blocks: NetResDeep(n_blocks=blocks), lr=3e-3),
}


def build_model(name: str, blocks: int = 100) -> nn.Module:
    """Build the variant ``name`` (one of ``MODELS``); ``blocks`` applies to ``resdeep``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name].build(blocks)


def count_params(model: nn.Module) -> int:
    """Number of distinct parameters: a tensor reused by several modules counts once."""
    return sum(p.numel() for p in model.parameters())
