"""Train a chapter-8 CIFAR-2 model (airplane vs bird) with the book's recipe, fast.

Run from the repository root::

    python examples/cifar2/train.py --model net --data-dir ../shared/data

The default ``--loader tensor`` keeps the whole normalised dataset on the device and slices
batches out of a per-epoch permutation: no per-sample Python and one host sync per epoch.
``--loader dataloader`` runs the book's per-sample ``DataLoader`` loop for comparison.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import book_models
import torch
from data import Cifar2, DataError, load_cifar2
from models import MODELS, build_model, count_params
from torch import nn
from torch.utils.data import DataLoader

REPO_ROOT = Path(__file__).resolve().parents[2]
Loader = Literal["tensor", "dataloader"]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Settings:
    """The training recipe; the defaults are the book's (SGD, lr 1e-2, batch 64, 100 epochs)."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-2
    l2_lambda: float = 0.0
    seed: int = 123
    loader: Loader = "tensor"
    channels_last: bool = False
    track_val: bool = False  # score val accuracy every epoch (for --plot)
    progress: bool = True


@dataclass
class History:
    """Per-epoch mean training loss (and val accuracy if tracked) plus the loop's timing."""

    losses: list[float] = field(default_factory=list)
    val_accs: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    samples: int = 0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else 0.0


class _Progress(Protocol):
    def __iter__(self) -> Iterator[int]: ...
    def report(self, epoch: int, loss: float, samples_per_s: float) -> None: ...


class _TqdmProgress:
    """Epoch bar with loss and samples/s in the postfix."""

    def __init__(self, epochs: int) -> None:
        # An example extra, imported only when a bar is wanted; it ships no type stubs.
        from tqdm.auto import tqdm  # type: ignore[import-untyped, unused-ignore]

        self._bar = tqdm(range(1, epochs + 1), desc="epochs", unit="ep")

    def __iter__(self) -> Iterator[int]:
        return iter(self._bar)

    def report(self, epoch: int, loss: float, samples_per_s: float) -> None:
        self._bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:,.0f}")


class _PrintProgress:
    """Fallback without tqdm: one line about every tenth epoch."""

    def __init__(self, epochs: int, enabled: bool) -> None:
        self._epochs, self._enabled = epochs, enabled
        self._every = max(1, epochs // 10)

    def __iter__(self) -> Iterator[int]:
        return iter(range(1, self._epochs + 1))

    def report(self, epoch: int, loss: float, samples_per_s: float) -> None:
        if self._enabled and (epoch == 1 or epoch % self._every == 0):
            print(f"epoch {epoch:4d}  loss {loss:.4f}  {samples_per_s:,.0f} samples/s", flush=True)


def make_progress(epochs: int, enabled: bool) -> _Progress:
    """A tqdm bar if tqdm is installed and output is wanted, else plain prints."""
    if enabled:
        try:
            return _TqdmProgress(epochs)
        except ImportError:
            pass
    return _PrintProgress(epochs, enabled)


def tensor_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled batches sliced from device-resident tensors."""
    order = torch.randperm(len(labels), generator=generator).to(images.device)
    # One gather per epoch, then every batch is a view: no per-sample or per-batch copies.
    images, labels = images[order], labels[order]
    for start in range(0, len(labels), batch_size):
        yield images[start : start + batch_size], labels[start : start + batch_size]


def book_dataloader(train: Cifar2, batch_size: int, generator: torch.Generator) -> DataLoader[Any]:
    """The book's loader: a list of (image, label) pairs, collated one sample at a time."""
    pairs = [(image, int(label)) for image, label in zip(train.images, train.labels, strict=True)]
    # A list serves as a map-style dataset, as in the book; the stubs only name Dataset.
    return DataLoader(pairs, batch_size=batch_size, shuffle=True, generator=generator)  # type: ignore[arg-type]


def to_device(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, channels_last: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Move each batch to ``device`` (the DataLoader path's per-batch copy)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, labels in batches:
        yield images.to(device, memory_format=memory_format), labels.to(device)


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of squared parameters (the book's L2 penalty, before its lambda)."""
    return torch.stack([p.pow(2).sum() for p in model.parameters()]).sum()


def train_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    l2_lambda: float,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """One pass over ``batches``; returns (summed loss on the device, number of samples)."""
    loss_fn = nn.CrossEntropyLoss()
    total, count = torch.zeros((), device=device), 0
    for images, labels in batches:
        loss = loss_fn(model(images), labels)
        if l2_lambda:
            loss = loss + l2_lambda * l2_penalty(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Stay on the device: calling .item() here would sync the GPU every batch.
        total += loss.detach() * len(labels)
        count += len(labels)
    return total, count


@torch.no_grad()
def accuracy(model: nn.Module, split: Cifar2, device: torch.device, chunk: int = 1000) -> float:
    """Fraction classified correctly, scored in eval mode (the book's validate() forgot it)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(split), chunk):
        images = split.images[start : start + chunk].to(device)
        labels = split.labels[start : start + chunk].to(device)
        correct += (model(images).argmax(dim=1) == labels).sum()
    model.train(was_training)
    return correct.item() / len(split)


def _epoch_source(train: Cifar2, settings: Settings, device: torch.device) -> Callable[[], Batches]:
    """A function that returns one epoch of shuffled batches on ``device``."""
    generator = torch.Generator().manual_seed(settings.seed)
    if settings.loader == "dataloader":
        loader = book_dataloader(train, settings.batch_size, generator)
        return lambda: to_device(loader, device, settings.channels_last)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    images = train.images.to(device).contiguous(memory_format=memory_format)
    labels = train.labels.to(device)
    return lambda: tensor_batches(images, labels, settings.batch_size, generator)


def fit(
    model: nn.Module, train: Cifar2, val: Cifar2, settings: Settings, device: torch.device
) -> History:
    """Train ``model`` (already on ``device``) with SGD; returns the loss history and timing."""
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr)
    epoch_batches = _epoch_source(train, settings, device)
    history, progress = History(), make_progress(settings.epochs, settings.progress)
    start = time.perf_counter()
    model.train()
    for epoch in progress:
        total, count = train_epoch(model, epoch_batches(), optimizer, settings.l2_lambda, device)
        history.losses.append(total.item() / count)  # the one host sync of the epoch
        history.samples += count
        if settings.track_val:
            history.val_accs.append(accuracy(model, val, device))
        history.wall_s = time.perf_counter() - start
        progress.report(epoch, history.losses[-1], history.samples_per_s)
    return history


def pick_device(name: str) -> torch.device:
    """``auto`` means CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The accelerator's marketing name (e.g. 'NVIDIA H100 80GB HBM3'), or the device type."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _import_shapecheck() -> Any:
    """Import shapecheck, from the repository checkout if it is not installed."""
    try:
        return importlib.import_module("shapecheck")
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT))
        return importlib.import_module("shapecheck")


def explain_text(model: nn.Module, batch: torch.Tensor) -> str:
    """What ``shapecheck.explain`` reports for ``model`` on ``batch``."""
    return str(_import_shapecheck().explain(model, batch))


def seed_fixed_by_shapecheck(batch: torch.Tensor) -> nn.Module:
    """The seed's broken Sequential, diagnosed by shapecheck (the report is printed), and the
    copy that keeps its verified fix: ``nn.Flatten()`` at index 6, the same weights."""
    broken = book_models.seed_sequential().to(batch.device)
    report = _import_shapecheck().explain(broken, batch)
    print(f"The seed's Sequential, as the notebook wrote it:\n\n{report}\n", flush=True)
    fixed: nn.Module = report.diagnoses[0].apply(broken)
    print("Training report.diagnoses[0].apply(model), the copy with the fix:\n", flush=True)
    return fixed


def plot_curves(history: History, path: Path) -> None:
    """Save training loss and val accuracy per epoch as an image."""
    import matplotlib  # an example extra: imported only when a plot is asked for

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    epochs = range(1, len(history.losses) + 1)
    fig, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot(epochs, history.losses, color="tab:blue", label="train loss")
    loss_axis.set(xlabel="epoch", ylabel="train loss")
    acc_axis = loss_axis.twinx()
    acc_axis.plot(epochs, history.val_accs, color="tab:orange", label="val accuracy")
    acc_axis.set_ylabel("val accuracy")
    fig.legend(loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; see the module docstring and README.md."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=list(MODELS), default="net")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, help="default: 1e-2, or 3e-3 for resdeep (the book's)")
    p.add_argument("--limit", type=int, help="train on the first N images only (smoke runs)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="holds cifar-10-batches-py/")
    p.add_argument("--download", action="store_true", help="fetch CIFAR-10 into --data-dir")
    p.add_argument("--out", type=Path, help="append one JSON line with the results")
    p.add_argument("--plot", type=Path, help="save loss and val accuracy curves (PNG)")
    p.add_argument("--loader", choices=["tensor", "dataloader"], default="tensor")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--blocks", type=int, default=100, help="residual blocks (resdeep)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """The recipe for the chosen model, with the command line's overrides."""
    spec = MODELS[args.model]
    return Settings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=spec.lr if args.lr is None else args.lr,
        l2_lambda=spec.l2_lambda,
        seed=args.seed,
        loader=args.loader,
        channels_last=args.channels_last,
        track_val=args.plot is not None,
        progress=not args.quiet,
    )


def make_record(
    args: argparse.Namespace, settings: Settings, params: int, history: History, accs: list[float]
) -> dict[str, Any]:
    """The JSON line of one run."""
    return {
        "model": args.model,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "l2_lambda": settings.l2_lambda,
        "seed": settings.seed,
        "loader": settings.loader,
        "compile": args.compile,
        "channels_last": settings.channels_last,
        "blocks": args.blocks if args.model == "resdeep" else None,
        "train_size": history.samples // max(1, settings.epochs),
        "params": params,
        "train_acc": round(accs[0], 4),
        "val_acc": round(accs[1], 4),
        "final_loss": round(history.losses[-1], 5),
        "losses": [round(loss, 5) for loss in history.losses],
        "val_accs": [round(acc, 4) for acc in history.val_accs],  # per epoch, with --plot
        "wall_s": round(history.wall_s, 3),
        "samples_per_s": round(history.samples_per_s, 1),
        "device": device_name(pick_device(args.device)),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_1m": round(os.getloadavg()[0], 2),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load data, explain the model, train it, score it; returns the run's JSON record.

    Raises:
        DataError: the dataset is missing or corrupt (the message says how to fix it).
    """
    device, settings = pick_device(args.device), settings_from(args)
    train, val = load_cifar2(args.data_dir, args.download)
    if args.limit:
        train = Cifar2(train.images[: args.limit], train.labels[: args.limit])
    torch.manual_seed(args.seed)
    batch = train.images[: settings.batch_size].to(device)
    if args.model == "seq":  # the whole story: the bug, shapecheck's fix, then training
        model = seed_fixed_by_shapecheck(batch)
    else:
        model = build_model(args.model, args.blocks).to(device)
    print(explain_text(model, batch), flush=True)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    runner = cast(nn.Module, torch.compile(model)) if args.compile else model
    history = fit(runner, train, val, settings, device)
    accs = [accuracy(runner, split, device) for split in (train, val)]
    record = make_record(args, settings, count_params(model), history, accs)
    print(
        f"{args.model}: train {accs[0]:.3f}  val {accs[1]:.3f}  {history.wall_s:.1f} s  "
        f"{history.samples_per_s:,.0f} samples/s  on {record['device']}",
        flush=True,
    )
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
    if args.plot:
        plot_curves(history, args.plot)
    return record


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (2 when the data is missing or corrupt)."""
    try:
        run(parse_args(argv))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
