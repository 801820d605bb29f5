"""A generator of broken models: small real architectures with one injected mistake, in any of
four dtypes. Shared by ``test_verified.py`` (a CI-sized sample) and
``benchmarks/repair_check.py`` (the long run). Nothing here uses shapecheck.

Families: CNN stacks (conv, BatchNorm, pooling, flatten, linear), MLPs (LayerNorm/BatchNorm1d),
custom forwards with ``view``/``permute``, attention written by hand, residual blocks with an add
or a ``torch.cat`` skip, embedding + LSTM/GRU taggers, and attention over embeddings. Mistakes:
a missing flatten; a wrong ``in_features``/``in_channels``/``num_features``/``normalized_shape``/
``input_size``/``embed_dim``; a channels-last, unbatched, integer or wrongly sized input, or one
of another dtype; an input too small; a ``view`` that guesses the batch, does not divide or views
a transposed tensor; heads that do not divide the features; ids beyond the vocabulary; an odd
size into a U-Net skip; a shortcut without its projection; a recurrent layout mistake.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
Draw = Callable[[st.SearchStrategy[Any]], Any]


@dataclass
class Case:
    """One broken model, its example inputs, what was injected and in which dtype."""

    model: nn.Module
    args: tuple[Any, ...]
    family: str
    mistake: str
    dtype: torch.dtype

    def describe(self) -> str:
        shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in self.args]
        return f"{self.family}/{self.mistake} in {self.dtype}: {shapes}\n{self.model!r}"


def _floats(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype)


def _cnn(draw: Draw, dtype: torch.dtype) -> Case:
    mistake = draw(
        st.sampled_from(
            [
                "no-flatten",
                "in-features",
                "conv-channels",
                "bn-features",
                "channels-last",
                "unbatched",
                "input-dtype",
                "too-small",
            ]
        )
    )
    c_in, size, blocks = draw(st.sampled_from([1, 3])), draw(st.sampled_from([8, 12, 16])), 2
    batch = draw(st.integers(1, 4))
    layers: list[nn.Module] = []
    c, s = c_in, size
    for block in range(blocks):
        out = draw(st.integers(2, 6))
        wrong_in = c + 1 if mistake == "conv-channels" and block == 1 else c
        layers += [nn.Conv2d(wrong_in, out, 3, padding=1)]
        if draw(st.booleans()):
            layers.append(nn.BatchNorm2d(out + 1 if mistake == "bn-features" else out))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        c, s = out, s // 2
    features = c * s * s
    if mistake != "no-flatten":
        layers.append(nn.Flatten())
    layers.append(nn.Linear(features + (3 if mistake == "in-features" else 0), 5))
    layers += [nn.Tanh(), nn.Linear(5, 2)]
    model = nn.Sequential(*layers).to(dtype)
    x = torch.randn(batch, c_in, size, size)
    if mistake == "channels-last":
        x = x.permute(0, 2, 3, 1)
    elif mistake == "unbatched":
        x = x[0]
    elif mistake == "too-small":
        x = torch.randn(batch, c_in, 1, 1)
    x_dtype = (
        draw(st.sampled_from([d for d in DTYPES if d != dtype]))
        if mistake == "input-dtype"
        else dtype
    )
    return Case(model, (_floats(x, x_dtype),), "cnn", mistake, dtype)


def _mlp(draw: Draw, dtype: torch.dtype) -> Case:
    mistake = draw(st.sampled_from(["in-features", "layer-norm", "batch-norm", "input-dtype"]))
    features, hidden = draw(st.integers(3, 12)), draw(st.integers(3, 12))
    norm: nn.Module = nn.LayerNorm(hidden + (1 if mistake == "layer-norm" else 0))
    if mistake == "batch-norm" or (draw(st.booleans()) and mistake != "layer-norm"):
        norm = nn.BatchNorm1d(hidden + (1 if mistake == "batch-norm" else 0))
    wrong = features + (2 if mistake == "in-features" else 0)
    model = nn.Sequential(nn.Linear(wrong, hidden), norm, nn.GELU(), nn.Linear(hidden, 3))
    x = torch.randn(draw(st.integers(2, 5)), features)
    x_dtype = (
        draw(st.sampled_from([d for d in DTYPES if d != dtype]))
        if mistake == "input-dtype"
        else dtype
    )
    return Case(model.to(dtype), (x.to(x_dtype),), "mlp", mistake, dtype)


class _ViewNet(nn.Module):
    """The book's Net: a custom forward that flattens with ``view``."""

    def __init__(self, size: int, guess: bool, permute: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * (size // 2) ** 2, 2)
        self.size, self.guess, self.permute = size, guess, permute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.permute:
            x = x.permute(0, 3, 1, 2)  # written for channels-last images
        out = torch.max_pool2d(torch.relu(self.conv(x)), 2)
        n = 4 * (self.size // 2) ** 2
        out = out.view(-1, n) if self.guess else out.view(out.size(0), -1)
        return self.fc(out)


class _Heads(nn.Module):
    """Self-attention written by hand: heads split with view, merged back with view."""

    def __init__(self, heads: int, dim: int, split: int) -> None:
        super().__init__()
        self.heads, self.split, self.qkv = heads, split, nn.Linear(heads * dim, 3 * heads * dim)
        self.out = nn.Linear(heads * dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (y.view(b, t, self.split, -1).transpose(1, 2) for y in self.qkv(x).chunk(3, -1))
        att = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v  # (b, heads, t, dim)
        return self.out(att.transpose(1, 2).view(b, t, c))  # a view of a transposed tensor


class _Classifier(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.fc(x), dim=1)


class _Stem(nn.Module):
    """A patch embedding that checks the image size it was built for, as ViTs do."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.proj, self.head = nn.Conv2d(3, 8, 4, stride=4), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.img_size, f"Input width ({x.shape[-1]}) doesn't match model"
        return self.head(self.proj(x).flatten(2).mean(-1))


def _attention_by_hand(draw: Draw, dtype: torch.dtype) -> Case:
    mistake = draw(
        st.sampled_from(
            ["merge-view", "heads-split", "softmax-unbatched", "image-size", "uint8-image"]
        )
    )
    heads, dim = draw(st.integers(2, 4)), draw(st.integers(2, 4))
    if mistake in ("merge-view", "heads-split"):
        split = heads + 1 if mistake == "heads-split" else heads
        x = torch.randn(draw(st.integers(1, 3)), draw(st.integers(2, 5)), heads * dim)
        return Case(_Heads(heads, dim, split).to(dtype), (x.to(dtype),), "by-hand", mistake, dtype)
    if mistake == "softmax-unbatched":
        features = draw(st.integers(2, 8))
        model: nn.Module = _Classifier(features)
        return Case(model.to(dtype), (torch.randn(features).to(dtype),), "by-hand", mistake, dtype)
    size = 4 * draw(st.integers(2, 5))
    model = _Stem(size)
    if mistake == "image-size":
        x = torch.randn(draw(st.integers(1, 3)), 3, size + 4, size + 4).to(dtype)
    else:
        x = torch.randint(0, 256, (draw(st.integers(1, 3)), 3, size, size), dtype=torch.uint8)
    return Case(model.to(dtype), (x,), "by-hand", mistake, dtype)


def _custom(draw: Draw, dtype: torch.dtype) -> Case:
    mistake = draw(st.sampled_from(["view-guess", "view-size", "permute"]))
    size = draw(st.sampled_from([8, 16]))
    model = _ViewNet(size, guess=mistake != "view-size", permute=mistake == "permute")
    batch = draw(st.integers(1, 4))
    fed = size * 2 if mistake == "view-guess" else size + 2 if mistake == "view-size" else size
    x = torch.randn(batch, 3, fed, fed)  # NCHW: wrong for the permuting forward
    return Case(model.to(dtype), (x.to(dtype),), "custom", mistake, dtype)


class _Residual(nn.Module):
    """conv-bn-relu-conv-bn with an identity or 1x1 shortcut, added or concatenated."""

    def __init__(self, c_in: int, c_out: int, stride: int, project: bool, join: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = (
            nn.Conv2d(c_in, c_out, 1, stride=stride) if project else nn.Identity()
        )
        self.join = join
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_out * (2 if join == "cat" else 1), 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        skip = self.shortcut(x)
        out = torch.cat([out, skip], dim=1) if self.join == "cat" else torch.relu(out + skip)
        return self.head(out)


class _UNet(nn.Module):
    """Down, up and a concatenating skip: odd sizes break the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.inc = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1))
        self.up = nn.Upsample(scale_factor=2)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.inc(x)
        return self.out(torch.cat([a, self.up(self.down(a))], dim=1))


def _skips(draw: Draw, dtype: torch.dtype) -> Case:
    mistake = draw(st.sampled_from(["no-projection", "stride-one-branch", "odd-unet", "unbatched"]))
    batch, size = draw(st.integers(1, 3)), draw(st.sampled_from([8, 12]))
    if mistake == "odd-unet":
        model: nn.Module = _UNet()
        x = torch.randn(batch, 3, size + 1, size + 1)
    else:
        join = draw(st.sampled_from(["add", "cat"]))
        c_out = draw(st.integers(4, 8))
        stride = 2 if mistake == "stride-one-branch" else 1
        project = mistake == "unbatched"  # an unbatched image into a correct block
        model = _Residual(3, c_out, stride, project, join)
        x = torch.randn(batch, 3, size, size)
        if mistake == "unbatched":
            x = x[0]
    return Case(model.to(dtype), (x.to(dtype),), "skip", mistake, dtype)


class _Tagger(nn.Module):
    def __init__(self, vocab: int, dim: int, rnn_in: int, kind: str, batch_first: bool) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(rnn_in, 6, batch_first=batch_first)
        self.out = nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        seq, _ = self.rnn(self.emb(ids))
        return self.out(seq)


def _tagger(draw: Draw, dtype: torch.dtype) -> Case:
    mistake = draw(st.sampled_from(["vocab", "rnn-input-size"]))
    vocab, dim = draw(st.integers(5, 20)), draw(st.integers(3, 8))
    kind = draw(st.sampled_from(["lstm", "gru"]))
    rnn_in = dim + 1 if mistake == "rnn-input-size" else dim
    model = _Tagger(vocab, dim, rnn_in, kind, batch_first=True)
    top = vocab + draw(st.integers(0, 5)) if mistake == "vocab" else vocab - 1
    batch, steps = draw(st.integers(1, 3)), draw(st.integers(2, 6))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 1000)))
    ids = torch.randint(0, vocab, (batch, steps), generator=generator)
    ids[0, 0] = top
    return Case(model.to(dtype), (ids,), "tagger", mistake, dtype)


class _Attention(nn.Module):
    """A projection into self-attention with a key padding mask made for (batch, steps)."""

    def __init__(self, features: int, embed: int, heads: int, batch_first: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(5, features)
        self.attn = nn.MultiheadAttention(embed, heads, batch_first=batch_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        mask = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
        out, _ = self.attn(y, y, y, key_padding_mask=mask)
        return out


def _attention(draw: Draw, dtype: torch.dtype) -> Case:
    mistake = draw(st.sampled_from(["embed-dim", "layout"]))
    heads = draw(st.sampled_from([1, 2, 4]))
    embed = heads * draw(st.integers(2, 4))
    features = embed + heads if mistake == "embed-dim" else embed
    model = _Attention(features, embed, heads, batch_first=True)
    batch, steps = draw(st.integers(2, 3)), draw(st.integers(4, 6))
    x = torch.randn(batch, steps, 5)
    if mistake == "layout":  # batch-first data and mask into a sequence-first attention
        model = _Attention(features, embed, heads, batch_first=False)
    return Case(model.to(dtype), (x.to(dtype),), "attention", mistake, dtype)


_FAMILIES: list[Callable[[Draw, torch.dtype], Case]] = [
    _cnn,
    _mlp,
    _custom,
    _skips,
    _tagger,
    _attention,
    _attention_by_hand,
]


@st.composite
def broken_cases(draw: Draw, dtypes: tuple[torch.dtype, ...] = DTYPES) -> Case:
    """One broken model of a drawn family and dtype, its weights seeded by a drawn integer."""
    family = draw(st.sampled_from(_FAMILIES))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**16))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return family(draw, dtype)
