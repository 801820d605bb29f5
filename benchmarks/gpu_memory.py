"""training_memory against torch.cuda.max_memory_allocated for one real training step.

Needs a CUDA device: ``python benchmarks/gpu_memory.py`` prints one Markdown row per model (seed
CNN at batch 4096, ResNet-50 at batch 64, the GPT-2-style decoder at 8x512). The step is
forward, backward with ``zero_grad(set_to_none=True)`` before it, and an optimizer step; the
peak is read after it. Not yet run: no session so far had a device.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchzoo as zoo

import shapecheck

Built = tuple[nn.Module, tuple[torch.Tensor, ...]]
CASES: dict[str, Callable[[], Built]] = {
    "seed_cnn b4096": lambda: zoo.seed_cnn(batch=4096),
    "resnet50 b64": lambda: zoo.resnet50(batch=64),
    "gpt2_small b8x512": lambda: zoo.gpt2_small(batch=8, seq=512),
}


def measure(name: str, optimizer: str = "adamw") -> str:
    model, inputs = CASES[name]()
    model, inputs = model.cuda(), tuple(t.cuda() for t in inputs)
    estimate = shapecheck.explain(model, *inputs, optimizer=optimizer).training_memory
    assert estimate is not None
    make = torch.optim.AdamW if optimizer == "adamw" else torch.optim.SGD
    opt = make(model.parameters())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    opt.zero_grad(set_to_none=True)
    model(*inputs).float().sum().backward()
    opt.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    ratio = estimate.total / peak
    return (f"| {name} | {estimate.total / 2**20:,.0f} | {peak / 2**20:,.0f} | {ratio:.3f} | "
            f"{estimate.saved / 2**20:,.0f} |")  # fmt: skip


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| model | training_memory MiB | max_memory_allocated MiB | ratio | saved MiB |")
    print("|---|---|---|---|---|")
    for name in CASES:
        print(measure(name))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
