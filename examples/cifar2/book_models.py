"""The book's models as printed, bugs included, for shapecheck to diagnose.

Do not train these; ``models.py`` has the corrected versions.

- ``seed_sequential``: the seed notebook's Sequential, with no flatten before the first Linear,
  so ``model(img.unsqueeze(0))`` fails with "mat1 and mat2 shapes cannot be multiplied
  (64x8 and 512x32)".
- ``BookNet``: ``out.view(-1, 8 * 8 * 8)`` works for 32 x 32 inputs but on a 64 x 64 batch of 2 it
  returns 8 rows instead of 2: the batch dimension changes without an error.
- ``BookNetResDeep``: ``nn.Sequential(*(n_blocks * [ResBlock(...)]))`` puts one block instance in
  every position, so 100 "blocks" share 9,280 parameters (75,810 in total, not 994,530).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from models import ResBlock
from torch import nn

__all__ = ["BookNet", "BookNetResDeep", "seed_sequential"]


def seed_sequential() -> nn.Sequential:
    """The seed notebook's CNN (In [17]): a 4-D feature map reaches ``nn.Linear(512, 32)``."""
    return nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 8, kernel_size=3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Linear(8 * 8 * 8, 32),
        nn.Tanh(),
        nn.Linear(32, 2),
    )


class BookNet(nn.Module):
    """The book's ``Net``, flattening with ``out.view(-1, 8 * 8 * 8)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(torch.tanh(self.conv1(x)), 2)
        out = F.max_pool2d(torch.tanh(self.conv2(out)), 2)
        out = out.view(-1, 8 * 8 * 8)
        out = torch.tanh(self.fc1(out))
        logits: torch.Tensor = self.fc2(out)
        return logits


class BookNetResDeep(nn.Module):
    """The book's ``NetResDeep``: one ``ResBlock`` instance repeated ``n_blocks`` times."""

    def __init__(self, n_chans1: int = 32, n_blocks: int = 100) -> None:
        super().__init__()
        self.n_chans1 = n_chans1
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        self.resblocks = nn.Sequential(*(n_blocks * [ResBlock(n_chans=n_chans1)]))
        self.fc1 = nn.Linear(8 * 8 * n_chans1, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        out = self.resblocks(out)
        out = F.max_pool2d(out, 2)
        out = out.view(-1, 8 * 8 * self.n_chans1)
        out = torch.relu(self.fc1(out))
        logits: torch.Tensor = self.fc2(out)
        return logits
