"""Test helpers: a zoo of small models of many kinds, independent shape capture, fix appliers.

Each zoo entry builds a fresh model and its example inputs; ``torchinfo_total`` says what
torchinfo 1.8 is expected to count when that differs from the true unique parameter count, and
why. Nothing here uses shapecheck to compute an expected value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shapecheck import Diagnosis
from shapecheck._fixes import View
from shapecheck._repair import planned
from shapecheck._trace import run_trace

# -- independent references ---------------------------------------------------------------------


def unique_params(model: nn.Module) -> int:
    """Every parameter tensor counted once, by identity (tied weights once), lazy ones not."""
    seen: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None and not isinstance(p, nn.parameter.UninitializedParameter):
                seen[id(p)] = p.numel()
    return sum(seen.values())


def tensor_shapes(obj: object) -> list[tuple[int, ...]]:
    """Shapes of the tensors in a nested output, in order (dict values in insertion order).

    A nested (ragged) tensor has no shape; it shows as ``(-1,)``.
    """
    if isinstance(obj, torch.Tensor):
        return [(-1,)] if obj.is_nested else [tuple(obj.shape)]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in tensor_shapes(v)]
    if isinstance(obj, (tuple, list)):
        return [s for v in obj for s in tensor_shapes(v)]
    return []


@dataclass
class Captured:
    """What plain forward hooks saw: (path, output shapes) per module call in call order (no
    shapes for a call that raised), and the innermost module that raised."""

    calls: list[tuple[str, list[tuple[int, ...]]]] = field(default_factory=list)
    failed: str | None = None
    error: BaseException | None = None
    output: Any = None


def capture(model: nn.Module, *args: Any, **kwargs: Any) -> Captured:
    """Run ``model`` for real with my own hooks (not shapecheck's) and record every call.

    ``failed`` is the innermost module whose forward was running when the exception was raised.
    """
    seen = Captured()
    running: list[tuple[str, int]] = []  # (name, index in seen.calls) of calls still running
    handles = []

    def pre(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any) -> None:
            running.append((name, len(seen.calls)))
            seen.calls.append((name, []))  # in call order, like a table; filled in on return

        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            _, index = running.pop()
            if output is None and seen.failed is None:
                seen.failed = name
            elif output is not None:
                seen.calls[index] = (name, tensor_shapes(output))

        return hook

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name), always_call=True))
    try:
        with torch.no_grad():
            seen.output = model(*args, **kwargs)
    except Exception as error:
        seen.error = error
    finally:
        for handle in handles:
            handle.remove()
    return seen


# -- applying a diagnosis' fix for real ---------------------------------------------------------


@contextmanager
def fixed(model: nn.Module, args: tuple[Any, ...], diagnosis: Diagnosis,
          target: Any = None) -> Iterator[View]:  # fmt: skip
    """The view of ``model`` with every step of ``diagnosis``'s plan, for the block."""
    with planned(View(model, args, {}, target=target),
                 tuple(s.change for s in diagnosis.plan)) as view:  # fmt: skip
        yield view


def run_fixed(applied: View) -> Any:
    """A REAL forward of a fixed view: real tensors, real kernels.

    Module edits are plain modules, so the view is simply called. A rewritten functional call
    (``view-batch``) only exists inside a trace, so that case runs through the real-mode tracer.
    """
    if applied.rewrites:
        trace = run_trace(applied.model, applied.args, applied.kwargs, dry_run=False,
                          rewrites=applied.rewrites)  # fmt: skip
        if trace.failure is not None:
            raise trace.failure.exception
        return trace.output
    with torch.no_grad():
        return applied.model(*applied.args, **applied.kwargs)


# -- the zoo ------------------------------------------------------------------------------------


class Block(nn.Module):
    """A ResNet basic block: two 3x3 convs with BatchNorm and an identity / 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8))
        self.layer2 = nn.Sequential(Block(8, 16, stride=2), Block(16, 16))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer2(self.layer1(self.stem(x))))


class BookNet(nn.Module):
    """The book's functional ``Net`` (Deep Learning with PyTorch, ch. 8)."""

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
        return self.fc2(out)


class LSTMTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 12)
        self.lstm = nn.LSTM(12, 16, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(32, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embed(tokens))
        return self.out(hidden)


class GRUWithState(nn.Module):
    """Returns a tuple (sequence output, final hidden state)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 10, batch_first=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = self.gru(x)
        return out, h


class TiedLM(nn.Module):
    """Embedding and output projection share one weight tensor (weight tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.body = nn.Linear(16, 16)
        self.decoder = nn.Linear(16, 40, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.relu(self.body(self.embed(tokens))))


class TwoTowers(nn.Module):
    """Dict input, dict output with a nested tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.text = nn.EmbeddingBag(30, 16)
        self.joint = nn.Linear(16 + 16, 3)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        a = self.image(batch["image"])
        b = self.text(batch["tokens"])
        joint = torch.cat([a, b], dim=1)
        return {"logits": self.joint(joint), "features": (a, b)}


class SharedTwice(nn.Module):
    """One Linear called twice in a forward (two rows, parameters counted once)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.proj(x)))


class UNetish(nn.Module):
    """Down, up and a concatenating skip."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.out = nn.Conv2d(5, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(torch.relu(self.mid(self.down(x))))
        return self.out(torch.cat([x, y], dim=1))


class WithKwargs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor, *, scale: float = 1.0, bias: torch.Tensor | None = None):
        y = self.lin(x) * scale
        return y if bias is None else y + bias


@dataclass(frozen=True)
class Entry:
    """A zoo model: ``build()`` gives (model, args, kwargs)."""

    name: str
    build: Callable[[], tuple[nn.Module, tuple[Any, ...], dict[str, Any]]]
    #: torchinfo's total_params when it differs from the unique count, with the reason
    torchinfo_total: Callable[[nn.Module], int] | None = None
    why: str = ""


def _g() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _img(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_g())


def _frozen() -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 4))
    for p in model[0].parameters():
        p.requires_grad_(False)
    return model, (_img(2, 3, 8, 8),), {}


def _lazy() -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    return (
        nn.Sequential(nn.LazyConv2d(4, 3), nn.Flatten(), nn.LazyLinear(3)),
        (_img(2, 3, 6, 6),),
        {},
    )


def _reused_positions() -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    block = nn.Sequential(nn.Linear(5, 5), nn.Tanh())
    return nn.Sequential(block, block, block, nn.Linear(5, 1)), (_img(3, 5),), {}


def _tied_sum(model: nn.Module) -> int:
    # torchinfo adds each module's parameters: the shared tensor is counted by both owners
    return sum(p.numel() for m in model.modules() for p in m._parameters.values() if p is not None)


def _transformer() -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    return model, (_img(2, 7, 16),), {}


ZOO: list[Entry] = [
    Entry("seed-fixed", lambda: (_seed_fixed(), (_img(1, 3, 32, 32),), {})),
    Entry("book-net", lambda: (BookNet(), (_img(4, 3, 32, 32),), {})),
    Entry("resnet", lambda: (TinyResNet().train(), (_img(2, 3, 16, 16),), {})),
    Entry("lstm", lambda: (LSTMTagger(), (torch.randint(0, 50, (3, 9), generator=_g()),), {})),
    Entry("gru-tuple-out", lambda: (GRUWithState(), (_img(2, 5, 6),), {})),
    Entry("transformer-encoder", _transformer),
    Entry(
        "tied-weights",
        lambda: (TiedLM(), (torch.randint(0, 40, (2, 6), generator=_g()),), {}),
        torchinfo_total=_tied_sum,
        why="torchinfo sums each module's parameters, so the shared weight counts twice",
    ),
    Entry("frozen", _frozen),
    Entry("lazy", _lazy),
    Entry(
        "dict-in-out",
        lambda: (
            TwoTowers(),
            ({"image": _img(2, 3, 8, 8), "tokens": torch.randint(0, 30, (2, 5), generator=_g())},),
            {},
        ),
    ),
    Entry("called-twice", lambda: (SharedTwice(), (_img(3, 8),), {})),
    Entry("reused-positions", _reused_positions),
    Entry("unet-skip", lambda: (UNetish(), (_img(1, 1, 8, 8),), {})),
    Entry("kwargs", lambda: (WithKwargs(), (_img(2, 6),), {"scale": 0.5, "bias": torch.ones(4)})),
    Entry(
        "mha",
        lambda: (
            nn.MultiheadAttention(8, 2, batch_first=True),
            (_img(2, 3, 8), _img(2, 4, 8), _img(2, 4, 8)),
            {},
        ),
    ),
    Entry(
        "groupnorm-conv1d",
        lambda: (
            nn.Sequential(
                nn.Conv1d(2, 8, 5, padding=2),
                nn.GroupNorm(2, 8),
                nn.SiLU(),
                nn.AdaptiveMaxPool1d(3),
                nn.Flatten(),
                nn.Dropout(0.5),
                nn.Linear(24, 2),
            ),
            (_img(4, 2, 20),),
            {},
        ),
    ),
    Entry("bilinear-prelu", lambda: (_Bilinear(), (_img(3, 4), _img(3, 5)), {})),
]


class _Bilinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bil = nn.Bilinear(4, 5, 6)
        self.act = nn.PReLU(6)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.act(self.bil(a, b))


def _seed_fixed() -> nn.Module:
    from shapecheck.demo import seed_model_fixed

    return seed_model_fixed()


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """The textbook formula, used to build expectations independently of the code under test."""
    return math.floor((size + 2 * padding - kernel) / stride) + 1
