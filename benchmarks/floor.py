"""explain against the floor: the least any hook-based tracer can cost, measured in one run.

    python benchmarks/floor.py            # ~5 minutes here; --rounds N, --quick

Floor = a forward with no-op pre and post hooks on every module and a no-op TorchFunctionMode
(what shapecheck's recorder hooks into). Fake floor = the same under a FakeTensorMode, the
weights already fake (a dry run's least cost, once its fakes are kept). Ratios are paired:
the median over interleaved rounds of (a / b) measured in the same round. Also: the time per
recorded row above the floor (all of explain's cost over its rows); the cost of one module
call and of one functional op above the floor, apart from the fixed cost (the slope between
two sizes of a series made of one kind of call); and the first explain in a fresh process
(cold, imports included, torch already imported). Prints markdown for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchzoo as zoo  # noqa: E402

import shapecheck  # noqa: E402

Built = tuple[nn.Module, tuple[torch.Tensor, ...]]


class _Noop(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


@contextmanager
def _noop_hooks(model: nn.Module) -> Any:
    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, k: None, with_kwargs=True))
        handles.append(module.register_forward_hook(lambda m, a, k, o: None, with_kwargs=True,
                                                    always_call=True))  # fmt: skip
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def floor(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    with _noop_hooks(model), torch.no_grad(), _Noop():
        return model(*inputs)


def fake_floor_of(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], Any]:
    """The fake floor, its fakes made once (as a repeated dry run keeps them)."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    state = {name: mode.from_tensor(t) for name, t in
             (*model.named_parameters(), *model.named_buffers())}  # fmt: skip
    fakes = tuple(mode.from_tensor(t) for t in inputs)

    def run() -> Any:
        with _noop_hooks(model), torch.no_grad(), mode, _Noop():
            return functional_call(model, state, fakes, strict=False)

    return run


def llama_style(batch: int = 1, seq: int = 32) -> Built:
    """A plain-torch 2-layer Llama-style decoder: RMSNorm, attention, SwiGLU MLP."""

    class RMSNorm(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    class Block(nn.Module):
        def __init__(self, d: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
            self.gate, self.up = nn.Linear(d, 4 * d, bias=False), nn.Linear(d, 4 * d, bias=False)
            self.down = nn.Linear(4 * d, d, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, d = x.shape
            h = self.norm1(x)
            q, k, v = (p(h).view(b, t, self.heads, -1).transpose(1, 2)
                       for p in (self.q, self.k, self.v))  # fmt: skip
            att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
            h = self.norm2(x)
            out: torch.Tensor = x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))
            return out

    class Llama(nn.Module):
        def __init__(self, vocab: int = 512, d: int = 64, heads: int = 4, layers: int = 2) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
            self.norm, self.head = RMSNorm(d), nn.Linear(d, vocab, bias=False)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.embed(ids)
            for block in self.blocks:
                x = block(x)
            out: torch.Tensor = self.head(self.norm(x))
            return out

    return Llama(), (torch.randint(0, 512, (batch, seq)),)


def hf_tiny(kind: str) -> Callable[[], Built]:
    def build() -> Built:
        import transformers

        configs = {
            "llama": ("LlamaConfig", "LlamaModel", {"num_key_value_heads": 2}),
            "gpt2": ("GPT2Config", "GPT2Model", {"n_embd": 64, "n_layer": 2, "n_head": 4}),
            "bert": ("BertConfig", "BertModel", {}),
        }
        config_name, model_name, extra = configs[kind]
        sizes = {"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "intermediate_size": 128}  # fmt: skip
        config = getattr(transformers, config_name)(**sizes, **extra)
        return getattr(transformers, model_name)(config), (torch.randint(0, 512, (1, 32)),)

    return build


CONFIGS: dict[str, Callable[[], Built]] = {
    "seed_cnn b1": lambda: zoo.seed_cnn(batch=1),
    "llama-style 2 layers 1x32": llama_style,
    "resnet50 b1": lambda: zoo.resnet50(batch=1),
    "resnet50 b8": lambda: zoo.resnet50(batch=8),
    "gpt2_small b1x128": lambda: zoo.gpt2_small(batch=1, seq=128),
    "lstm b8x64": lambda: zoo.lstm(batch=8, seq=64),
}
HF = {"HF LlamaModel tiny": hf_tiny("llama"), "HF GPT2Model tiny": hf_tiny("gpt2"),
      "HF BertModel tiny": hf_tiny("bert")}  # fmt: skip
QUICK = ["seed_cnn b1", "llama-style 2 layers 1x32", "resnet50 b1"]


def tiny_configs() -> dict[str, Callable[[], Built]]:
    """The small models whose forward takes 1-2 ms: the Llama-style decoder, and the Hugging
    Face models from tiny configs when ``transformers`` is installed."""
    found: dict[str, Callable[[], Built]] = {"llama-style 2 layers 1x32": llama_style}
    try:
        import transformers  # noqa: F401
    except ImportError:
        return found
    return {**found, **HF}


def time_config(name: str, build: Callable[[], Built], rounds: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model, inputs = build()
    model.eval()
    variants: dict[str, Callable[[], Any]] = {
        "floor": lambda: floor(model, inputs),
        "explain": lambda: shapecheck.explain(model, *inputs),
        "fake floor": fake_floor_of(model, inputs),
        "explain dry": lambda: shapecheck.explain(model, *inputs, dry_run=True),
    }
    rows = len(shapecheck.explain(model, *inputs).layers)
    return {"times": interleaved(variants, rounds), "rows": rows}


def interleaved(runs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each run per round: one warm-up each (a dry run's first call also makes its
    fakes), then ``rounds`` rounds in one process, the order shuffled every round."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    order, rng = list(runs), random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def paired(times: dict[str, list[float]], top: str, bottom: str) -> float:
    """Median over rounds of top/bottom measured in the same round."""
    return statistics.median(a / b for a, b in zip(times[top], times[bottom], strict=True))


class _Ops(nn.Module):
    """A forward of ``n`` functional ops (``torch.tanh``): a row each, and one module row."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n):
            x = torch.tanh(x)
        return x


#: series of one kind of call, at two sizes: what explain costs per call above the floor
SERIES: dict[str, tuple[Callable[[int], Built], tuple[int, int]]] = {
    "module calls (Linear+ReLU blocks)": (zoo.chain, (32, 256)),
    "functional ops (torch.tanh in a forward)": (lambda n: (_Ops(n), (torch.randn(1, 8),)),
                                                 (64, 512)),
}  # fmt: skip


def per_call(build: Callable[[int], Built], sizes: tuple[int, int], rounds: int) -> dict[str, Any]:
    """µs per call above the floor (real) and above the fake floor (dry): the slope of the
    overhead between the two sizes; and the fixed part (the overhead left at no calls)."""
    overhead: dict[str, list[float]] = {"explain": [], "explain dry": []}
    calls = []
    for n in sizes:
        timed = time_config(f"{n}", functools.partial(build, n), rounds)
        t = timed["times"]
        calls.append(timed["rows"])
        med = {k: statistics.median(v) for k, v in t.items()}
        overhead["explain"].append(med["explain"] - med["floor"])
        overhead["explain dry"].append(med["explain dry"] - med["fake floor"])
    found: dict[str, Any] = {"rows": calls}
    for kind, (small, large) in overhead.items():
        slope = (large - small) / (calls[1] - calls[0])
        found[kind] = (slope * 1e6, (small - slope * calls[0]) * 1e3)
    return found


_COLD = """
import time, torch
from shapecheck.demo import seed_model_fixed
model, x = seed_model_fixed(), torch.randn(1, 3, 32, 32)
with torch.no_grad():
    model(x)  # torch's own first-call costs are not shapecheck's
start = time.perf_counter()
import shapecheck
shapecheck.explain(model, x)
print(time.perf_counter() - start)
"""


def cold_first_call(repeats: int) -> list[float]:
    """Seconds for ``import shapecheck`` + the first explain of the seed CNN, fresh processes.

    Bytecode is cached as in an installed package (a first process writes it; this is not
    counted), whatever ``PYTHONDONTWRITEBYTECODE`` says here.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    runs = [subprocess.run([sys.executable, "-c", _COLD], capture_output=True, text=True,
                           check=True, env=env) for _ in range(repeats + 1)]  # fmt: skip
    return [float(r.stdout.strip().splitlines()[-1]) for r in runs[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    torch.set_num_threads(1)
    configs = {k: CONFIGS[k] for k in QUICK} if options.quick else dict(CONFIGS)
    configs.update(tiny_configs())
    print("| config | rows | floor ms | explain ms | explain / floor | µs per row above floor "
          "| fake floor ms | explain dry ms | dry / fake floor |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, build in configs.items():
        print(f"timing {name} ...", file=sys.stderr)
        result = time_config(name, build, 3 if options.quick else options.rounds)
        t, rows = result["times"], result["rows"]
        med = {k: statistics.median(v) for k, v in t.items()}
        above = (med["explain"] - med["floor"]) / rows * 1e6
        print(f"| {name} | {rows} | {med['floor'] * 1e3:.2f} | {med['explain'] * 1e3:.2f} | "
              f"{paired(t, 'explain', 'floor'):.2f}× | {above:.1f} | "
              f"{med['fake floor'] * 1e3:.2f} | {med['explain dry'] * 1e3:.2f} | "
              f"{paired(t, 'explain dry', 'fake floor'):.2f}× |")  # fmt: skip
    print("\n| series (rows at the two sizes) | µs per call above the floor | fixed ms "
          "| dry: µs per call above the fake floor | dry: fixed ms |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, (build_n, sizes) in SERIES.items():
        print(f"timing {name} ...", file=sys.stderr)
        found = per_call(build_n, sizes, 3 if options.quick else max(5, options.rounds // 2))
        (real, fixed), (dry, dry_fixed) = found["explain"], found["explain dry"]
        print(f"| {name} ({found['rows'][0]}, {found['rows'][1]}) | {real:.1f} | {fixed:.2f} | "
              f"{dry:.1f} | {dry_fixed:.2f} |")  # fmt: skip
    cold = cold_first_call(3 if options.quick else 7)
    print(f"\nfirst explain in a fresh process (import shapecheck + explain of the seed CNN, "
          f"torch already imported and warm): median {statistics.median(cold) * 1e3:.1f} ms "
          f"over {len(cold)} processes (min {min(cold) * 1e3:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
