"""The seed: the chapter-8 CIFAR-2 CNN of *Deep Learning with PyTorch*, without and with Flatten.

Public so that examples, docs and your own experiments can start from the bug this project
exists for.

Example:
    >>> import torch, shapecheck
    >>> from shapecheck.demo import seed_model, seed_model_fixed
    >>> shapecheck.explain(seed_model(), torch.randn(1, 3, 32, 32)).diagnoses[0].rule
    'missing-flatten'
    >>> seed_model_fixed()(torch.randn(4, 3, 32, 32)).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

from torch import nn

__all__ = ["seed_model", "seed_model_fixed"]


def seed_model() -> nn.Sequential:
    """The learner's model: no ``nn.Flatten()`` between the last MaxPool2d and the Linear."""
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


def seed_model_fixed() -> nn.Sequential:
    """The same model with the fix shapecheck proposes: ``nn.Flatten()`` at index 6."""
    layers = list(seed_model())
    return nn.Sequential(*layers[:6], nn.Flatten(), *layers[6:])
