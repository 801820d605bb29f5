"""Benchmarks: shapecheck.explain against a plain forward, the hook floor and torchinfo.summary.

Run ``python benchmarks/run.py`` (``--quick`` for a smoke run of a minute or two). It prints
Markdown tables: times (medians over interleaved rounds, so background load hits every variant
alike) with the floor and the fake floor as columns (``floor.py``: the least any hook-based
tracer can cost, real and on fake tensors), the tiny transformer models, peak RSS (each variant
alone in a fresh subprocess), FLOPs side by side and against hand counts (``flops_check.py``),
the first explain in a fresh process, the ~65B meta model, the 1k-8k layer scaling series and
input-size contracts against a dry run (``--contract`` runs only that section). ``--json PATH``
also writes the raw figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchinfo
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchzoo as zoo
import floor
import flops_check

import shapecheck
from shapecheck._flop_formulas import FORMULAS

Built = tuple[nn.Module, tuple[torch.Tensor, ...]]

#: name -> (factory, its keyword arguments)
CONFIGS: dict[str, tuple[Callable[..., Built], dict[str, int]]] = {
    "seed_cnn b64": (zoo.seed_cnn, {"batch": 64}),
    "resnet50 b1": (zoo.resnet50, {"batch": 1}),
    "resnet50 b8": (zoo.resnet50, {"batch": 8}),
    "gpt2_small b1x128": (zoo.gpt2_small, {"batch": 1, "seq": 128}),
    "gpt2_small b8x512": (zoo.gpt2_small, {"batch": 8, "seq": 512}),
    "lstm b8x64": (zoo.lstm, {"batch": 8, "seq": 64}),
}
#: the small models of 1-2 ms forwards, where a tracer's own cost shows most (timed only)
TINY = floor.tiny_configs()
#: the big decoder config only gets the variants the dry-run target needs
BIG = "gpt2_small b8x512"
VARIANTS = ("plain", "explain", "explain_flops", "explain_dry", "torchinfo")
BIG_VARIANTS = ("plain", "explain_dry", "torchinfo")
#: timed beside the variants, not run alone: the floor and the fake floor (see floor.py)
FLOORS = ("floor", "fake_floor")
#: --quick: a smoke run of the same code on the small configs
QUICK = ["seed_cnn b64", "resnet50 b1", "lstm b8x64", "llama-style 2 layers 1x32"]
#: input-size contracts: a batch of 1 (or of 3, the channels) cannot be a symbol's example
CONTRACT_CONFIGS: dict[str, tuple[Callable[..., Built], dict[str, int]]] = {
    "seed_cnn b4": (zoo.seed_cnn, {"batch": 4}),
    "resnet50 b2": (zoo.resnet50, {"batch": 2}),
}
CONTRACT_VARIANTS = ("dry_size", "contract", "contract_str")
#: the issue's targets: contract <= 15x the dry run of ResNet-50; the CNN's contract <= 150 ms
CONTRACT_TARGETS = {"resnet50 b2": ("ratio", 15.0), "seed_cnn b4": ("ms", 150.0)}


# -- variants -------------------------------------------------------------------------------------
def run_variant(variant: str, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """One call of a variant; models are in eval mode, as torchinfo puts them."""
    if variant == "plain":
        with torch.no_grad():
            return model(*inputs)
    if variant == "explain":
        return shapecheck.explain(model, *inputs)
    if variant == "explain_flops":
        return shapecheck.explain(model, *inputs, flops=True)
    if variant == "explain_dry":
        return shapecheck.explain(model, *inputs, dry_run=True)
    if variant == "torchinfo":
        return torchinfo.summary(model, input_data=list(inputs), verbose=0)
    return run_contract_variant(variant, model, tuple(inputs[0].shape))


def run_contract_variant(variant: str, model: nn.Module, size: tuple[int, ...]) -> Any:
    """The dry run the contract is held against, the contract, and the contract shown."""
    if variant == "dry_size":
        return shapecheck.explain(model, input_size=size, dry_run=True)
    if variant == "contract":
        return shapecheck.contract(model, "B 3 H W", example=size)
    if variant == "contract_str":
        return str(shapecheck.contract(model, "B 3 H W", example=size))
    raise ValueError(f"unknown variant {variant!r}")


def build(name: str) -> Built:
    torch.manual_seed(0)
    if name in TINY:
        model, inputs = TINY[name]()
        return model.eval(), inputs
    factory, kwargs = {**CONFIGS, **CONTRACT_CONFIGS}[name]
    model, inputs = factory(**kwargs)
    return model.eval(), inputs


def runner(variant: str, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], Any]:
    """One call of ``variant``, ready to time (the fake floor makes its fake weights now)."""
    if variant == "floor":
        return lambda: floor.floor(model, inputs)
    if variant == "fake_floor":
        return floor.fake_floor_of(model, inputs)
    return lambda: run_variant(variant, model, inputs)


def time_config(name: str, variants: tuple[str, ...], rounds: int) -> dict[str, Any]:
    """Interleaved rounds in one process, variant order shuffled each round; one warm-up each."""
    model, inputs = build(name)
    runs = {variant: runner(variant, model, inputs) for variant in variants}
    return {"params": zoo.n_params(model), "times": floor.interleaved(runs, rounds)}


# -- peak memory, each variant in its own process -------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Linux: make VmHWM restart from the current RSS, so the peak is the variant's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child_memory(name: str, variant: str) -> dict[str, float]:
    model, inputs = build(name)
    baseline = _status_kib("VmRSS")
    reset = _reset_peak()
    run_variant(variant, model, inputs)
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "baseline_mib": baseline / 1024,
        "peak_mib": peak / 1024,
        "delta_mib": (peak - baseline) / 1024,
    }


def child_giant(repeats: int) -> dict[str, Any]:
    """The ~65B-parameter decoder on meta: build once, explain ``repeats`` times."""
    start = time.perf_counter()
    model, inputs = zoo.transformer_60b(batch=1, seq=2048)
    built = time.perf_counter() - start
    plain, full = [], []
    report = None
    for _ in range(repeats):
        start = time.perf_counter()
        shapecheck.explain(model, *inputs)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        report = shapecheck.explain(model, *inputs, flops=True, optimizer="adam")
        full.append(time.perf_counter() - start)
    assert report is not None
    assert report.training_memory is not None
    return {
        "params": report.total_params,
        "build_s": built,
        "explain_s": plain,
        "explain_flops_adam_s": full,
        "total_flops": report.total_flops,
        "training_memory_gib": report.training_memory.total / 2**30,
        # VmHWM, not ru_maxrss: Linux carries the parent's peak across fork+exec into the latter
        "peak_rss_mib": _status_kib("VmHWM") / 1024,
    }


def child_grad_rss(name: str) -> dict[str, float]:
    """CPU check of the saved-tensor figure: RSS growth while a grad forward's graph is alive."""
    model, inputs = build(name)
    before = _status_kib("VmRSS")
    output = model(*inputs)  # autograd keeps the saved tensors while `output` lives
    after = _status_kib("VmRSS")
    del output  # measured first: memory freed by malloc would be reused without RSS growth
    report = shapecheck.explain(model, *inputs, optimizer="sgd")
    assert report.training_memory is not None
    return {
        "saved_mib": report.training_memory.saved / 2**20,
        "output_mib": report.layers[0].output_bytes / 2**20,
        "rss_growth_mib": (after - before) / 1024,
    }


def in_subprocess(*args: str) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--threads",
        str(torch.get_num_threads()),
        "--child",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- FLOPs side by side ---------------------------------------------------------------------------
def flops_row(name: str) -> dict[str, Any]:
    model, inputs = build(name)
    real = shapecheck.explain(model, *inputs, flops=True).total_flops
    dry = shapecheck.explain(model, *inputs, flops=True, dry_run=True).total_flops
    with FlopCounterMode(display=False) as oracle, torch.no_grad():
        model(*inputs)
    # torch's counter given shapecheck's extra formulas: the same ops, counted the same way
    with FlopCounterMode(display=False, custom_mapping=FORMULAS) as extended, torch.no_grad():
        model(*inputs)
    macs = torchinfo.summary(model, input_data=list(inputs), verbose=0).total_mult_adds
    return {
        "shapecheck": real,
        "shapecheck_dry": dry,
        "flop_counter_mode": oracle.get_total_flops(),
        "flop_counter_mode_extended": extended.get_total_flops(),
        "torchinfo_macs": macs,
    }


# -- scaling --------------------------------------------------------------------------------------
def scaling(sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    rows = []
    for layers in sizes:
        model, inputs = zoo.chain(layers)
        times: dict[str, list[float]] = {"explain": [], "explain_dry": []}
        for _ in range(rounds):
            for variant in times:
                start = time.perf_counter()
                run_variant(variant, model, inputs)
                times[variant].append(time.perf_counter() - start)
        calls = 2 * layers + layers + 1  # Linear + ReLU + their Sequential per block, the root
        rows.append(
            {
                "blocks": layers,
                "module_calls": calls,
                **{k: statistics.median(v) for k, v in times.items()},
            }
        )
    return rows


# -- input-size contracts -------------------------------------------------------------------------
def contracts(rounds: int) -> dict[str, Any]:
    return {name: time_config(name, CONTRACT_VARIANTS, rounds) for name in CONTRACT_CONFIGS}


def render_contracts(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| config | dry run ms | contract ms | contract + str ms | contract/dry run | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        times = result["times"]
        ratio = floor.paired(times, "contract", "dry_size")
        kind, limit = CONTRACT_TARGETS[name]
        value = ratio if kind == "ratio" else 1000 * statistics.median(times["contract"])
        target = f"≤ {limit:g}×" if kind == "ratio" else f"≤ {limit:g} ms"
        cells = [_ms(statistics.median(times[v])) for v in CONTRACT_VARIANTS]
        met = "met" if value <= limit else "not met"
        lines.append(f"| {name} | {' | '.join(cells)} | {ratio:.2f}× | {target}: {met} |")
    return lines


# -- report ---------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    model_names = (
        [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        if Path("/proc/cpuinfo").exists()
        else []
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{model_names[0] if model_names else cpu}, {os.cpu_count()} CPUs visible, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), Python "
        f"{platform.python_version()}, load average at start {load:.1f}"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


#: the paired ratios the time table shows
RATIOS = (
    ("explain", "plain"), ("explain", "floor"), ("explain_flops", "plain"),
    ("explain_dry", "fake_floor"), ("torchinfo", "plain"), ("torchinfo", "explain_dry"),
)  # fmt: skip


def render_times(results: dict[str, dict[str, Any]]) -> list[str]:
    shown = (*VARIANTS, *FLOORS)
    lines = [
        "| config | params | "
        + " | ".join(f"{v} ms" for v in shown)
        + " | "
        + " | ".join(f"{a}/{b}" for a, b in RATIOS)
        + " |",
        "|---" * (len(shown) + len(RATIOS) + 2) + "|",
    ]
    for name, result in results.items():
        times = result["times"]
        cells = [_ms(statistics.median(times[v])) if v in times else "—" for v in shown]
        pairs = RATIOS
        cells += [
            f"{floor.paired(times, a, b):.2f}×" if a in times and b in times else "—"
            for a, b in pairs
        ]
        lines.append(f"| {name} | {result['params']:,} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few rounds, small inputs")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--contract", action="store_true", help="only the contract section")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared, loaded machine, spinning "
        "OpenMP workers waiting for a descheduled peer make timings erratic)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    if options.child:
        print(json.dumps(_child(options.child)))
        return
    quick = options.quick
    print(f"machine: {machine()}\n")
    if options.contract:
        found = contracts(2 if quick else 7)
        if options.json:
            options.json.write_text(json.dumps(found, indent=1))
        print("\n".join(render_contracts(found)))
        return
    results = _all(quick)
    print("\n".join(_render(results)))
    if options.json:  # sets (the ops a counter left uncounted) as sorted lists
        options.json.write_text(json.dumps(results, indent=1, default=sorted))


def _child(args: list[str]) -> dict[str, Any]:
    kind, *rest = args
    if kind == "memory":
        return child_memory(rest[0], rest[1])
    if kind == "giant":
        return child_giant(int(rest[0]))
    if kind == "grad_rss":
        return child_grad_rss(rest[0])
    raise ValueError(kind)


def _all(quick: bool) -> dict[str, Any]:
    rounds = 2 if quick else 7
    names = [n for n in QUICK if n in CONFIGS or n in TINY] if quick else [*CONFIGS, *TINY]
    times, memory, flops = {}, {}, {}
    for name in names:
        variants = BIG_VARIANTS if name == BIG else VARIANTS
        print(f"timing {name} ...", file=sys.stderr)
        times[name] = time_config(name, (*variants, *FLOORS), 3 if name == BIG else rounds)
        if name in TINY:
            continue
        if not quick or name == names[0]:
            memory[name] = {v: in_subprocess("memory", name, v) for v in variants}
        if name != BIG:
            flops[name] = flops_row(name)
    print("FLOPs against hand counts, first call ...", file=sys.stderr)
    hand = flops_check.SMALL if quick else flops_check.CONFIGS
    print("giant, scaling, grad RSS ...", file=sys.stderr)
    sizes = [500, 1000] if quick else [1000, 2000, 4000, 8000]
    checked = ["lstm b8x64"] if quick else ["resnet50 b8", "gpt2_small b1x128", "lstm b8x64"]
    return {
        "times": times,
        "memory": memory,
        "flops": flops,
        "flops_hand": {name: flops_check.measure(made) for name, made in hand.items()},
        "first_call_s": floor.cold_first_call(3 if quick else 7),
        "giant": in_subprocess("giant", "1" if quick else "5"),
        "scaling": scaling(sizes, 1 if quick else 3),
        "grad_rss": {name: in_subprocess("grad_rss", name) for name in checked},
        "contracts": contracts(rounds),
    }


def _render(results: dict[str, Any]) -> list[str]:
    lines = ["## Time (median over interleaved rounds)", "", *render_times(results["times"]), ""]
    lines += [
        "## Peak RSS, each variant alone in a subprocess (MiB: peak / over the built model)",
        "",
        "| config | " + " | ".join(VARIANTS) + " |",
        "|---" * (len(VARIANTS) + 1) + "|",
    ]
    for name, per in results["memory"].items():
        cells = [
            f"{per[v]['peak_mib']:,.0f} / {per[v]['delta_mib']:,.0f}" if v in per else "—"
            for v in VARIANTS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## FLOPs",
        "",
        "| config | shapecheck (real) | shapecheck (dry) | FlopCounterMode | "
        "FlopCounterMode + shapecheck's formulas | equal to it | torchinfo MACs × 2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results["flops"].items():
        extended = row["flop_counter_mode_extended"]
        equal = row["shapecheck"] == row["shapecheck_dry"] == extended
        lines.append(
            f"| {name} | {row['shapecheck']:,} | {row['shapecheck_dry']:,} | "
            f"{row['flop_counter_mode']:,} | {extended:,} | {'yes' if equal else 'NO'} | "
            f"{2 * row['torchinfo_macs']:,} |"
        )
    lines += ["", "## FLOPs against hand counts", "", *flops_check.render(results["flops_hand"])]
    cold = results["first_call_s"]
    lines += [
        "",
        "## First explain in a fresh process",
        "",
        f"import shapecheck + explain of the seed CNN (torch already imported and warm): median "
        f"{statistics.median(cold) * 1e3:.1f} ms over {len(cold)} processes (min "
        f"{min(cold) * 1e3:.1f})",
    ]
    giant = results["giant"]
    lines += [
        "",
        "## ~65B-parameter decoder on meta (80 layers, d=8192, 1×2048 tokens)",
        "",
        f"params {giant['params']:,}; build {giant['build_s']:.2f} s; explain: first call "
        f"{giant['explain_s'][0]:.2f} s (pays the lazy imports of fake tensors), every call "
        f"{', '.join(f'{t:.2f}' for t in giant['explain_s'])} s; explain(flops=True, "
        f"optimizer='adam') {', '.join(f'{t:.2f}' for t in giant['explain_flops_adam_s'])} s; "
        "FLOPs "
        f"{giant['total_flops']:,}; training memory {giant['training_memory_gib']:,.0f} GiB; "
        f"peak RSS of the whole process {giant['peak_rss_mib']:,.0f} MiB",
    ]
    lines += [
        "",
        "## Scaling (Linear+ReLU blocks)",
        "",
        "| blocks | module calls | explain s | µs/call | explain_dry s | µs/call |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["scaling"]:
        lines.append(
            f"| {row['blocks']:,} | {row['module_calls']:,} | {row['explain']:.2f} | "
            f"{row['explain'] / row['module_calls'] * 1e6:.0f} | {row['explain_dry']:.2f} "
            f"| {row['explain_dry'] / row['module_calls'] * 1e6:.0f} |"
        )
    first, last = results["scaling"][0], results["scaling"][-1]
    growth = last["module_calls"] / first["module_calls"]
    lines.append(
        f"\n{growth:.0f}× the calls: explain took {last['explain'] / first['explain']:.1f}× as "
        f"long, explain_dry {last['explain_dry'] / first['explain_dry']:.1f}× (linear: "
        f"{growth:.0f}×)"
    )
    lines += ["", "## Saved tensors vs RSS growth of a real grad forward (CPU)", ""]
    for name, row in results["grad_rss"].items():
        lines.append(
            f"- {name}: saved {row['saved_mib']:,.1f} MiB (+ output "
            f"{row['output_mib']:,.1f} MiB); RSS grew {row['rss_growth_mib']:,.1f} MiB"
        )
    lines += ["", "## Input-size contracts against a dry run", ""]
    return lines + render_contracts(results["contracts"])


if __name__ == "__main__":
    main()
