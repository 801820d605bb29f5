"""FLOPs against hand counts: shapecheck's counter on the benchmark models, real, dry and meta.

Run ``python benchmarks/flops_check.py`` (about a minute); it prints a Markdown table. The hand
counts are written from the layer sizes alone, in torch's convention: forward only, a
multiply-add is 2 FLOPs, only products count (convolutions, linears, attention's two products,
the matmuls of recurrent layers; a causal mask does not halve attention); bias additions, norms,
activations, pooling and embeddings are 0.

Columns: ``explain`` real (CPU kernels), ``dry`` (fake tensors on CPU: the same kernels, no
compute) and ``meta`` (``device="meta"``: meta kernels, where SDPA and LSTM decompose into
matmuls); ``alone`` is :class:`~shapecheck._flops.FlopCounter` around a plain ``no_grad``
forward, which takes the fused fast paths that eval-mode transformer layers take outside
explain; ``FlopCounterMode`` is torch's counter alone, for contrast.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchzoo as zoo

import shapecheck
from shapecheck._flops import FlopCounter

#: model, its inputs, the hand count of its forward FLOPs
Built = tuple[nn.Module, tuple[torch.Tensor, ...], int]


# -- hand counts ----------------------------------------------------------------------------------
def conv(batch: int, c_in: int, c_out: int, kernel: int, out: int) -> int:
    """A square convolution: each of batch*c_out*out*out outputs is c_in*k*k multiply-adds."""
    return 2 * batch * c_out * out * out * c_in * kernel * kernel


def seed_cnn_hand(batch: int) -> int:
    # conv 3->16 3x3 at 32x32, conv 16->8 3x3 at 16x16, linear 512->32, linear 32->2
    return (conv(batch, 3, 16, 3, 32) + conv(batch, 16, 8, 3, 16)
            + 2 * batch * 512 * 32 + 2 * batch * 32 * 2)  # fmt: skip


def resnet50_hand(batch: int, size: int, classes: int = 1000) -> int:
    """ResNet-50 v1.5: a 7x7/2 stem, a 3x3/2 max-pool, bottlenecks (1x1, 3x3 with the stride,
    1x1 x4) with a 1x1 strided shortcut where the shape changes, then fc 2048 -> classes."""
    side = (size + 2 * 3 - 7) // 2 + 1
    total = conv(batch, 3, 64, 7, side)
    side = (side + 2 * 1 - 3) // 2 + 1
    inplanes = 64
    for index, blocks in enumerate((3, 4, 6, 3)):
        planes = 64 * 2**index
        for block in range(blocks):
            stride = 2 if index > 0 and block == 0 else 1
            out = (side + 2 * 1 - 3) // stride + 1
            total += conv(batch, inplanes, planes, 1, side) + conv(batch, planes, planes, 3, out)
            total += conv(batch, planes, 4 * planes, 1, out)
            if stride != 1 or inplanes != 4 * planes:
                total += conv(batch, inplanes, 4 * planes, 1, out)
            inplanes, side = 4 * planes, out
    return total + 2 * batch * inplanes * classes


def attention(batch: int, seq: int, d: int) -> int:
    """Self-attention over all heads: scores q @ k^T and weights @ v, 2*seq*seq*d each."""
    return batch * 4 * seq * seq * d


def decoder_hand(layers: int, d: int, vocab: int, batch: int, seq: int) -> int:
    # per token and block: qkv 3d*d, proj d*d, MLP 4d*d twice = 12*d*d multiply-adds; the tied
    # head d*vocab once at the end
    tokens = batch * seq
    block = 2 * tokens * 12 * d * d + attention(batch, seq, d)
    return layers * block + 2 * tokens * d * vocab


def lstm_tagger_hand(batch: int, seq: int, d: int = 256, hidden: int = 512, tags: int = 20) -> int:
    # 4 gates; layer 1 meets w_ih (4h, d) and w_hh (4h, h), layer 2 both (4h, h); the head h->tags
    tokens = batch * seq
    recurrent = 4 * hidden * (d + hidden) + 4 * hidden * (hidden + hidden)
    return 2 * tokens * (recurrent + hidden * tags)


def encoder_hand(layers: int, d: int, ff: int, batch: int, seq: int) -> int:
    # per token and layer: in-proj 3d*d, out-proj d*d, feed-forward d*ff twice
    block = 2 * batch * seq * (4 * d * d + 2 * d * ff) + attention(batch, seq, d)
    return layers * block


# -- models ---------------------------------------------------------------------------------------
def encoder(
    layers: int, d: int, heads: int, ff: int, batch: int, seq: int, *, train: bool
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """nn.TransformerEncoder, batch first (what its eval fast path needs), dropout 0.1."""
    layer = nn.TransformerEncoderLayer(d, heads, ff, batch_first=True)
    model = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    return model.train(train), (torch.randn(batch, seq, d),)


def _eval(built: tuple[nn.Module, tuple[torch.Tensor, ...]], hand: int) -> Built:
    model, inputs = built
    return model.eval(), inputs, hand


def _encoder(layers: int, d: int, heads: int, ff: int, batch: int, seq: int, train: bool) -> Built:
    model, inputs = encoder(layers, d, heads, ff, batch, seq, train=train)
    return model, inputs, encoder_hand(layers, d, ff, batch, seq)


#: the table's configs (benchmarks/run.py's, and the transformer encoder in eval and train)
CONFIGS: dict[str, Callable[[], Built]] = {
    "seed_cnn b64": lambda: _eval(zoo.seed_cnn(64), seed_cnn_hand(64)),
    "resnet50 b1": lambda: _eval(zoo.resnet50(1), resnet50_hand(1, 224)),
    "gpt2_small b1x128": lambda: _eval(zoo.gpt2_small(1, 128),
                                       decoder_hand(12, 768, 50257, 1, 128)),
    "lstm b8x64": lambda: _eval(zoo.lstm(8, 64), lstm_tagger_hand(8, 64)),
    "encoder 6x512 b8x128 eval": lambda: _encoder(6, 512, 8, 2048, 8, 128, train=False),
    "encoder 6x512 b8x128 train": lambda: _encoder(6, 512, 8, 2048, 8, 128, train=True),
}  # fmt: skip
#: the same models, small enough for the test suite
SMALL: dict[str, Callable[[], Built]] = {
    "seed_cnn": lambda: _eval(zoo.seed_cnn(2), seed_cnn_hand(2)),
    "resnet50": lambda: _eval(zoo.resnet50(2, 32), resnet50_hand(2, 32)),
    "decoder": lambda: _eval(zoo.decoder(2, 64, 4, vocab=100, seq=8),
                             decoder_hand(2, 64, 100, 1, 8)),
    "lstm": lambda: _eval(zoo.lstm(2, 8), lstm_tagger_hand(2, 8)),
    "encoder_eval": lambda: _encoder(2, 64, 4, 96, 2, 6, train=False),
    "encoder_train": lambda: _encoder(2, 64, 4, 96, 2, 6, train=True),
}  # fmt: skip


# -- measuring ------------------------------------------------------------------------------------
def explained(model: nn.Module, inputs: tuple[Any, ...], **options: Any) -> tuple[int, set[str]]:
    """explain's total and the ops its counter left uncounted (``report.flops_uncounted``)."""
    report = shapecheck.explain(model, *inputs, flops=True, **options)
    if not report.ok or report.total_flops is None or report.flops_uncounted is None:
        raise RuntimeError(f"explain did not count this model:\n{report}")
    return report.total_flops, set(report.flops_uncounted)


def measure(build: Callable[[], Built]) -> dict[str, Any]:
    torch.manual_seed(0)
    model, inputs, hand = build()
    row: dict[str, Any] = {"hand": hand, "uncounted": set()}
    start = time.perf_counter()
    for column, options in (("real", {}), ("dry", {"dry_run": True}),
                            ("meta", {"dry_run": True, "device": "meta"})):  # fmt: skip
        row[column], uncounted = explained(model, inputs, **options)
        row["uncounted"] |= uncounted
    with torch.no_grad(), FlopCounter() as alone:
        model(*inputs)
    row["alone"], row["uncounted"] = alone.total, row["uncounted"] | set(alone.uncounted)
    with torch.no_grad(), FlopCounterMode(display=False) as torch_only:
        model(*inputs)
    row["flop_counter_mode"] = torch_only.get_total_flops()
    row["seconds"] = time.perf_counter() - start
    return row


def _off(value: int, hand: int) -> str:
    return f"{value:,} ({(value - hand) / hand:+.2%})"


def render(rows: dict[str, dict[str, Any]]) -> list[str]:
    columns = ("real", "dry", "meta", "alone", "flop_counter_mode")
    lines = [
        "| model | hand count | explain real | explain dry | explain meta | counter alone "
        "| uncounted | FlopCounterMode (torch) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        cells = [_off(row[c], row["hand"]) for c in columns]
        uncounted = ", ".join(sorted(row["uncounted"])) or "none"
        lines.append(f"| {name} | {row['hand']:,} | " + " | ".join(cells[:4])
                     + f" | {uncounted} | {cells[4]} |")  # fmt: skip
    worst = max(abs(row[c] - row["hand"]) / row["hand"] for row in rows.values()
                for c in columns[:4])  # fmt: skip
    lines.append(f"\nlargest difference from a hand count (shapecheck's columns): {worst:.4%}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="the test suite's small models")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    configs = SMALL if options.small else CONFIGS
    rows = {}
    for name, build in configs.items():
        print(f"measuring {name} ...", file=sys.stderr)
        rows[name] = measure(build)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("\n".join(render(rows)))


if __name__ == "__main__":
    main()
