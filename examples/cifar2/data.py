"""CIFAR-2 (airplane vs bird) from the official CIFAR-10 python archive, without torchvision.

The archive ``cifar-10-python.tar.gz`` unpacks to ``cifar-10-batches-py/``: five training
batches and one test batch, each a pickled dict with ``b"data"`` (N x 3072 uint8, R then G then B
planes of 32 x 32) and ``b"labels"`` (ints 0-9). We keep airplane (0) and bird (2) as labels 0
and 1, scale pixels to [0, 1] and normalise with the book's constants.
"""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "ARCHIVE_MD5",
    "ARCHIVE_NAME",
    "ARCHIVE_URL",
    "BATCH_DIR",
    "CLASS_NAMES",
    "MEAN",
    "STD",
    "Cifar2",
    "DataError",
    "download",
    "extract_safely",
    "load_cifar2",
    "load_split",
    "md5_of",
]

ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{k}" for k in range(1, 6))
TEST_FILES = ("test_batch",)

# CIFAR-10 label -> CIFAR-2 label.
LABEL_MAP = {0: 0, 2: 1}
CLASS_NAMES = ("airplane", "bird")
# The book's constants (chapter 7/8). They are the 10-class statistics, kept for fidelity.
MEAN = (0.4915, 0.4823, 0.4468)
STD = (0.2470, 0.2435, 0.2616)

# The only globals a CIFAR-10 batch pickle needs; anything else means a foreign or tampered file.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}

Split = Literal["train", "test"]


class DataError(Exception):
    """The dataset is missing, corrupt or unsafe; the message says how to fix it."""


@dataclass(frozen=True)
class Cifar2:
    """Normalised images (N, 3, 32, 32) float32 and labels (N,) int64 (0 airplane, 1 bird)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def _how_to_fix(data_dir: Path) -> str:
    return (
        "Fix it in one of two ways:\n"
        f"  --data-dir DIR   point at a folder that already holds {BATCH_DIR}/ "
        "(for example --data-dir ../shared/data)\n"
        f"  --download       fetch {ARCHIVE_NAME} (163 MB, MD5-checked) into {data_dir}"
    )


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: pickle would otherwise run any code a file names."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (pixels N x 3072 uint8, labels N int64) of one batch file."""
    try:
        with path.open("rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        pixels = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 batch file not found: {path}\n{_how_to_fix(data_dir)}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, OSError) as exc:
        raise DataError(f"cannot read {path}: {exc}\n{_how_to_fix(data_dir)}") from exc
    if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 or len(labels) != len(pixels):
        raise DataError(
            f"{path} is not a CIFAR-10 batch: data {pixels.shape}, {len(labels)} labels\n"
            f"{_how_to_fix(data_dir)}"
        )
    return pixels, labels


def _normalise(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, 3072) -> float32 (N, 3, 32, 32), scaled to [0, 1] then normalised."""
    images = torch.from_numpy(pixels).reshape(-1, 3, 32, 32).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return images.sub_(mean).div_(std)


def load_split(data_dir: Path, split: Split = "train") -> Cifar2:
    """Load one split of CIFAR-2 from ``data_dir/cifar-10-batches-py``.

    Example:
        >>> val = load_split(Path("data"), "test")  # doctest: +SKIP
        >>> val.images.shape
        torch.Size([2000, 3, 32, 32])
    """
    folder = Path(data_dir) / BATCH_DIR
    if not folder.is_dir():
        raise DataError(f"CIFAR-10 not found: {folder} does not exist.\n{_how_to_fix(data_dir)}")
    names = TRAIN_FILES if split == "train" else TEST_FILES
    batches = [_read_batch(folder / name, Path(data_dir)) for name in names]
    pixels = np.concatenate([p for p, _ in batches])
    labels = np.concatenate([lab for _, lab in batches])
    keep = np.isin(labels, list(LABEL_MAP))
    mapped = np.vectorize(LABEL_MAP.__getitem__, otypes=[np.int64])(labels[keep])
    return Cifar2(_normalise(pixels[keep]), torch.from_numpy(mapped))


def load_cifar2(data_dir: Path, download_missing: bool = False) -> tuple[Cifar2, Cifar2]:
    """Return (train, val) CIFAR-2, downloading CIFAR-10 first if asked and missing."""
    folder = Path(data_dir) / BATCH_DIR
    if download_missing and not all((folder / n).is_file() for n in TRAIN_FILES + TEST_FILES):
        download(Path(data_dir))
    return load_split(data_dir, "train"), load_split(data_dir, "test")


def md5_of(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_member(member: tarfile.TarInfo, dest: Path) -> None:
    """Reject what could write outside ``dest``: links, devices, absolute or '..' paths."""
    if not (member.isfile() or member.isdir()):
        raise DataError(f"unsafe archive member {member.name!r}: not a regular file or folder")
    target = (dest / member.name).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise DataError(f"unsafe archive member {member.name!r}: path leaves {dest}")


def extract_safely(archive: Path, dest: Path) -> None:
    """Extract a .tar.gz into ``dest``, checking every member first: all or nothing."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, dest)
            # The 'data' filter (Python >= 3.11.4) repeats the checks; older versions lack it.
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - only on old Python patch releases
                tar.extractall(dest, members=members)  # members checked above
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}") from exc


def download(data_dir: Path, url: str = ARCHIVE_URL, expected_md5: str | None = None) -> Path:
    """Fetch the CIFAR-10 archive into ``data_dir``, verify its MD5, extract it safely."""
    expected = expected_md5 or ARCHIVE_MD5
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / ARCHIVE_NAME
    if not archive.exists():
        print(f"downloading {url} -> {archive}")
        partial = archive.with_name(archive.name + ".part")
        try:
            urllib.request.urlretrieve(url, partial)
        except OSError as exc:  # URLError and HTTPError are OSErrors
            raise DataError(
                f"cannot download {url}: {exc}\nUse --data-dir DIR with a copy of {BATCH_DIR}/."
            ) from exc
        partial.rename(archive)
    actual = md5_of(archive)
    if actual != expected:
        raise DataError(
            f"{archive} has MD5 {actual}, expected {expected}: the download is corrupt or "
            "not the official archive. Delete it and retry --download, or use --data-dir."
        )
    extract_safely(archive, data_dir)
    return data_dir / BATCH_DIR
