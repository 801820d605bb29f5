"""Tests of the CIFAR-2 worked example (examples/cifar2): data, models, training, CLI."""

from __future__ import annotations

import importlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

import shapecheck

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cifar2"
SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"


def _example(name: str) -> ModuleType:
    """Import one of the example's modules (they import each other by plain name)."""
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    module = importlib.import_module(name)
    assert Path(module.__file__ or "").parent == EXAMPLE, f"{name!r} shadowed by {module}"
    return module


data = _example("data")
models = _example("models")
book_models = _example("book_models")
train = _example("train")
summarize = _example("summarize")

# CIFAR-10 labels of each tiny batch: airplane 0 and bird 2 kept, others dropped.
TINY_LABELS = [0, 1, 2, 3, 2, 9, 0]
KEPT = [0, 1, 1, 0]  # CIFAR-2 labels of the kept images, in order


def _batch_bytes(labels: list[int], seed: int) -> bytes:
    """One batch pickled like the official files (bytes keys, protocol 4)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    pixels[0, :1024], pixels[0, 1024:2048], pixels[0, 2048:] = 255, 0, 51  # a known image
    batch = {
        b"batch_label": b"tiny",
        b"labels": labels,
        b"data": pixels,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    return pickle.dumps(batch, protocol=4)


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


@pytest.fixture
def tiny_archive(tmp_path: Path) -> Path:
    """A cifar-10-python.tar.gz in the official layout with seven images per batch."""
    archive = tmp_path / "source" / data.ARCHIVE_NAME
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for k, name in enumerate([*data.TRAIN_FILES, *data.TEST_FILES]):
            _add(tar, f"{data.BATCH_DIR}/{name}", _batch_bytes(TINY_LABELS, seed=k))
    return archive


def _unsafe_archive(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, f"{data.BATCH_DIR}/data_batch_1", b"fine")
        if kind == "parent":
            _add(tar, "../escaped.txt", b"outside")
        elif kind == "absolute":
            _add(tar, "/tmp/escaped-cifar2-test.txt", b"outside")
        else:
            link = tarfile.TarInfo(f"{data.BATCH_DIR}/link")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
    return path


# --- data ---------------------------------------------------------------------------------------


def test_download_checks_md5_extracts_and_filters(
    tiny_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "ARCHIVE_MD5", data.md5_of(tiny_archive))
    dest = tmp_path / "data"
    data.download(dest, url=tiny_archive.as_uri())
    train_set, val_set = data.load_cifar2(dest)
    assert train_set.images.shape == (5 * len(KEPT), 3, 32, 32)
    assert train_set.images.dtype == torch.float32
    assert train_set.labels.tolist() == 5 * KEPT
    assert val_set.labels.tolist() == KEPT


def test_normalisation_uses_the_books_constants(
    tiny_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "ARCHIVE_MD5", data.md5_of(tiny_archive))
    data.download(tmp_path / "data", url=tiny_archive.as_uri())
    first = data.load_split(tmp_path / "data", "test").images[0]
    scaled = torch.tensor([1.0, 0.0, 0.2])  # the known image's R, G, B planes / 255
    expected = (scaled - torch.tensor(data.MEAN)) / torch.tensor(data.STD)
    torch.testing.assert_close(first.amax(dim=(1, 2)), expected)
    torch.testing.assert_close(first.amin(dim=(1, 2)), expected)


def test_bad_checksum_is_rejected_before_extracting(tiny_archive: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    with pytest.raises(data.DataError, match="MD5"):
        data.download(dest, url=tiny_archive.as_uri())
    assert not (dest / data.BATCH_DIR).exists()


def test_failed_download_is_a_data_error(tmp_path: Path) -> None:
    missing_url = (tmp_path / "no-such-archive.tar.gz").as_uri()
    with pytest.raises(data.DataError, match="cannot download"):
        data.download(tmp_path / "data", url=missing_url)


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_unsafe_members_are_rejected(tmp_path: Path, kind: str) -> None:
    archive = _unsafe_archive(tmp_path / "bad.tar.gz", kind)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(data.DataError, match="unsafe archive member"):
        data.extract_safely(archive, dest)
    assert list(dest.iterdir()) == []  # nothing written, not even the safe member
    assert not (tmp_path / "escaped.txt").exists()


def test_missing_data_names_the_path_and_both_fixes(tmp_path: Path) -> None:
    with pytest.raises(data.DataError) as info:
        data.load_split(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / data.BATCH_DIR) in message
    assert "--data-dir" in message
    assert "--download" in message


@pytest.mark.parametrize(
    "payload",
    [b"not a pickle", pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 2]})],
    ids=["garbage", "wrong-shape"],
)
def test_corrupt_batch_is_a_data_error(tmp_path: Path, payload: bytes) -> None:
    folder = tmp_path / data.BATCH_DIR
    folder.mkdir()
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(data.DataError, match="test_batch"):
        data.load_split(tmp_path, "test")


def test_pickles_naming_other_globals_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / data.BATCH_DIR
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": os.getcwd}))
    with pytest.raises(data.DataError, match="unexpected global"):
        data.load_split(tmp_path, "test")


@pytest.mark.skipif(
    not (SHARED_DATA / data.BATCH_DIR).is_dir(),
    reason=f"no CIFAR-10 copy at {SHARED_DATA / data.BATCH_DIR}",
)
def test_shared_copy_loads_balanced_airplanes_and_birds() -> None:
    val_set = data.load_split(SHARED_DATA, "test")  # one 6 MB file keeps this fast
    assert val_set.images.shape == (2000, 3, 32, 32)
    assert torch.bincount(val_set.labels).tolist() == [1000, 1000]
    # The book's 10-class constants leave this subset near, not at, zero mean.
    assert val_set.images.mean().abs() < 0.2
    assert 0.8 < val_set.images.std() < 1.2


# --- models -------------------------------------------------------------------------------------

BOOK_PARAMS = {
    "seq": 18_090,
    "net": 18_090,
    "width": 38_386,
    "l2": 18_090,
    "dropout": 38_386,
    "batchnorm": 38_482,
    "depth": 16_130,
    "res": 16_130,
    "resdeep": 994_530,  # 100 independent blocks; the book's shared block gives 75,810
}


def test_every_variant_is_tested() -> None:
    assert set(BOOK_PARAMS) == set(models.MODELS)


@pytest.mark.parametrize(("name", "params"), BOOK_PARAMS.items())
def test_variant_param_count_and_output_shape(name: str, params: int) -> None:
    model = models.build_model(name)
    assert models.count_params(model) == params
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 2)


@pytest.mark.parametrize("name", BOOK_PARAMS)
def test_explain_matches_the_forward(name: str) -> None:
    model = models.build_model(name, blocks=4)
    x = torch.randn(2, 3, 32, 32)
    report = shapecheck.explain(model, x)
    assert report.ok
    assert report.total_params == models.count_params(model)
    assert [tuple(s) for s in report.output_shapes] == [tuple(model(x).shape)]
    assert not report.warnings


def test_explain_finds_the_books_bugs() -> None:
    seed = shapecheck.explain(book_models.seed_sequential(), torch.randn(1, 3, 32, 32))
    assert not seed.ok
    assert "insert nn.Flatten() at index 6" in str(seed)
    view = shapecheck.explain(book_models.BookNet(), torch.randn(2, 3, 64, 64))
    assert [d.rule for d in view.warnings] == ["view-batch"]
    shared = shapecheck.explain(book_models.BookNetResDeep(n_blocks=3), torch.randn(2, 3, 32, 32))
    assert [d.rule for d in shared.warnings] == ["reused-module"]
    assert shared.total_params == 75_810


def test_seq_is_the_seed_with_the_fix_shapecheck_keeps(capsys: pytest.CaptureFixture[str]) -> None:
    batch = torch.randn(4, 3, 32, 32)
    torch.manual_seed(7)
    fixed = train.seed_fixed_by_shapecheck(batch)
    printed = capsys.readouterr().out
    assert "insert nn.Flatten() at index 6" in printed
    torch.manual_seed(7)
    reference = models.seq_model()  # written out by hand; the same weights under the same seed
    assert repr(fixed) == repr(reference)
    mine, theirs = fixed.state_dict(), reference.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_resdeep_blocks_are_independent() -> None:
    model = models.NetResDeep(n_blocks=3)
    assert len({id(block) for block in model.resblocks}) == 3


def test_seq_params_per_tensor_match_the_seed() -> None:
    numels = [p.numel() for p in models.seq_model().parameters()]
    assert numels == [432, 16, 1152, 8, 16384, 32, 64, 2]


def test_book_models_keep_their_bugs() -> None:
    with pytest.raises(RuntimeError, match=r"64x8 and 512x32"):
        book_models.seed_sequential()(torch.randn(1, 3, 32, 32))
    assert book_models.BookNet()(torch.randn(2, 3, 64, 64)).shape == (8, 2)  # batch 2 became 8
    with pytest.raises(RuntimeError, match=r"2x2048 and 512x32"):  # the fix fails loudly instead
        models.Net()(torch.randn(2, 3, 64, 64))
    shared = book_models.BookNetResDeep(n_blocks=100)
    assert models.count_params(shared) == 75_810


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="resdeep"):
        models.build_model("nett")


# --- training -----------------------------------------------------------------------------------


def _learnable_split(n: int, seed: int) -> Any:
    """Images whose class shows in their brightness, so two epochs can learn something."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.randn(n, 3, 32, 32, generator=generator) + (labels.float() - 0.5).view(
        -1, 1, 1, 1
    )
    return data.Cifar2(images, labels)


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_two_epochs_on_512_images_reduce_the_loss(loader: str) -> None:
    train_set, val_set = _learnable_split(512, seed=0), _learnable_split(256, seed=1)
    torch.manual_seed(0)
    model = models.Net()
    settings = train.Settings(epochs=2, loader=loader, progress=False, track_val=True)
    history = train.fit(model, train_set, val_set, settings, torch.device("cpu"))
    assert history.losses[1] < history.losses[0]
    assert history.samples == 2 * 512
    assert len(history.val_accs) == 2
    assert train.accuracy(model, val_set, torch.device("cpu")) > 0.5


def test_tensor_batches_cover_every_image_once_in_a_new_order() -> None:
    images, labels = torch.arange(10.0).view(10, 1), torch.arange(10)
    generator = torch.Generator().manual_seed(0)
    epochs = [list(train.tensor_batches(images, labels, 4, generator)) for _ in range(2)]
    assert [len(y) for _, y in epochs[0]] == [4, 4, 2]
    orders = [torch.cat([y for _, y in batches]).tolist() for batches in epochs]
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(10))
    assert orders[0] != orders[1]
    assert all(torch.equal(x.view(-1).long(), y) for x, y in epochs[0])  # pairs stay together


def test_accuracy_scores_in_eval_mode_and_restores_train_mode() -> None:
    torch.manual_seed(0)
    model = models.NetDropout()
    split = _learnable_split(64, seed=2)
    scores = {train.accuracy(model, split, torch.device("cpu")) for _ in range(3)}
    assert len(scores) == 1  # dropout off: the same score every time
    assert model.training


def test_l2_penalty_is_the_sum_of_squared_weights() -> None:
    model = models.Net()
    expected = sum(float((p.detach() ** 2).sum()) for p in model.parameters())
    assert train.l2_penalty(model).item() == pytest.approx(expected, rel=1e-5)
    assert models.MODELS["l2"].l2_lambda == 1e-3
    assert models.MODELS["resdeep"].lr == 3e-3


# --- command line -------------------------------------------------------------------------------


def test_cli_exits_2_with_a_helpful_message_when_data_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE / "train.py"), "--data-dir", str(missing), "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert str(missing / data.BATCH_DIR) in result.stderr
    assert "--data-dir" in result.stderr
    assert "--download" in result.stderr


def test_cli_run_records_one_json_line_and_a_plot(
    tiny_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "ARCHIVE_MD5", data.md5_of(tiny_archive))
    data.download(tmp_path / "data", url=tiny_archive.as_uri())
    out, plot = tmp_path / "results.jsonl", tmp_path / "curves.png"
    argv = ["--data-dir", str(tmp_path / "data"), "--epochs", "2", "--quiet"]
    assert train.main([*argv, "--out", str(out), "--plot", str(plot)]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["model"] == "net"
    assert record["params"] == 18_090
    assert record["device"] == "cpu"
    assert record["epochs"] == 2
    assert record["train_size"] == 5 * len(KEPT)
    for key in ["batch_size", "lr", "train_acc", "val_acc", "wall_s", "samples_per_s", "seed"]:
        assert key in record
    assert plot.stat().st_size > 0


def test_summarize_groups_seeds_and_pairs_loader_runs() -> None:
    base = {"model": "net", "epochs": 3, "train_size": 10_000, "batch_size": 64, "lr": 0.01}
    base |= {"device": "cpu", "params": 18_090, "train_acc": 0.9, "wall_s": 1.0, "load_1m": 2.0}
    records = [
        base | {"seed": 1, "loader": "tensor", "val_acc": 0.88, "samples_per_s": 900.0},
        base
        | {"seed": 2, "loader": "tensor", "val_acc": 0.90, "samples_per_s": 1000.0, "threads": 1},
        base | {"seed": 1, "loader": "dataloader", "val_acc": 0.89, "samples_per_s": 100.0},
        base | {"seed": 1, "loader": "tensor", "val_acc": 0.89, "samples_per_s": 800.0},
    ]
    text = summarize.summarize(records)
    assert "| net | 18,090 | 3 | 2 (1, 2) | 0.900 (0.900–0.900) | 0.890 (0.880–0.900) |" in text
    assert "| 1.0 @2.0 · 1.0 @2.0 (1 thread) |" in text
    assert "| 100 | 800 | 8.0x |" in text


def test_summarize_checks_the_book_target_once_per_seed() -> None:
    base = {"epochs": 100, "train_size": 10_000, "batch_size": 64, "lr": 0.01, "device": "cpu"}
    base |= {"params": 1, "train_acc": 0.9, "wall_s": 1.0, "samples_per_s": 1.0, "loader": "tensor"}
    records = [
        base | {"model": "net", "seed": 1, "val_acc": 0.86},
        base | {"model": "net", "seed": 1, "val_acc": 0.86},  # the same seed again: counts once
        base | {"model": "net", "seed": 2, "val_acc": 0.89},
        base | {"model": "dropout", "seed": 1, "val_acc": 0.87},
        base | {"model": "width", "seed": 1, "val_acc": 0.95, "epochs": 15},  # not the recipe
    ]
    table = summarize.book_table(summarize.group(records))
    assert "| net | 3 (1, 2) | 0.875 (0.860–0.890) | 0.89 | -1.5 points | yes |" in table
    assert "| dropout | 1 (1) | 0.870 | 0.88 | -1.0 points | yes |" in table
    assert "width" not in table
    failing = summarize.book_table(summarize.group(records[:2]))
    assert "| net | 2 (1) | 0.860 | 0.89 | -3.0 points | no |" in failing
