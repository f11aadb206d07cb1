"""Fashion-MNIST: reading and checking the IDX files, the splits, the CLI exit codes."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lsmha.training.cli import main as train_main
from lsmha.training.data import FASHION_MNIST_DIR, DataSetMissing, _fashion_part, find_fashion_mnist, load_dataset

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
INSTALLED = all((FASHION_MNIST_DIR / f"{s}.gz").is_file() for s in STEMS)
needs_package = pytest.mark.skipif(
    not INSTALLED,
    reason=f"Fashion-MNIST not installed under {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)


def _idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes, gz: bool = True) -> None:
    data = struct.pack(f">{1 + len(dims)}I", magic, *dims) + payload
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _fake(root: Path, n_train: int = 60000, n_test: int = 10000, gz: bool = True) -> None:
    """Well-formed IDX files with the real counts: image i is filled with i % 256, its label is that value % 10."""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        idx = np.arange(n)
        images = np.repeat((idx % 256).astype(np.uint8), 28 * 28).tobytes()
        _idx(root / f"{prefix}-images-idx3-ubyte", 2051, (n, 28, 28), images, gz)
        _idx(root / f"{prefix}-labels-idx1-ubyte", 2049, (n,), (idx % 256 % 10).astype(np.uint8).tobytes(), gz)


def _with_rows(data: bytes, rows: int) -> bytes:
    return data[:8] + struct.pack(">I", rows) + data[12:]


@pytest.fixture(autouse=True)
def _fresh_cache():
    _fashion_part.cache_clear()
    yield
    _fashion_part.cache_clear()


@pytest.mark.parametrize("gz", [True, False])
def test_splits_sizes_and_padding(tmp_path, gz):
    _fake(tmp_path, gz=gz)
    train_x, train_y = load_dataset("fashion-mnist", "train", tmp_path)
    val_x, val_y = load_dataset("fashion-mnist", "val", tmp_path)
    test_x, test_y = load_dataset("fashion-mnist", "test", tmp_path)
    assert (
        train_x.shape == (55000, 3, 32, 32) and val_x.shape == (5000, 3, 32, 32) and test_x.shape == (10000, 3, 32, 32)
    )
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    # the image's value identifies it: train and val are disjoint and together the whole file
    ids = torch.cat([train_x[:, 0, 16, 16], val_x[:, 0, 16, 16]]).long()
    assert torch.equal(torch.cat([train_y, val_y]), ids % 10)
    # zero padding of 2 pixels, three identical channels, test in file order
    assert int(test_x[:, :, :2].max()) == 0 and int(test_x[:, :, :, 30:].max()) == 0
    assert torch.equal(test_x[:, 0], test_x[:, 2]) and torch.equal(
        test_x[:, 0, 2:30, 2:30][:, 0, 0], (torch.arange(10000) % 256).to(torch.uint8)
    )
    assert torch.equal(test_y, torch.arange(10000) % 256 % 10)


def test_val_is_fixed(tmp_path):
    _fake(tmp_path)
    first = load_dataset("fashion-mnist", "val", tmp_path)[0]
    _fashion_part.cache_clear()
    assert torch.equal(first, load_dataset("fashion-mnist", "val", tmp_path)[0])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-100])), "truncated"),
        (
            lambda p: p.write_bytes(gzip.compress(struct.pack(">I", 2049) + gzip.decompress(p.read_bytes())[4:])),
            "magic",
        ),
        (lambda p: p.write_bytes(p.read_bytes()[:1000]), "cannot be read"),
        (lambda p: p.write_bytes(gzip.compress(_with_rows(gzip.decompress(p.read_bytes()), 27))), "28x28"),
    ],
    ids=["truncated", "magic", "corrupt-gzip", "size"],
)
def test_bad_files_name_the_file(tmp_path, damage, message):
    _fake(tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    damage(bad)
    with pytest.raises(ValueError, match=message) as err:
        load_dataset("fashion-mnist", "test", tmp_path)
    assert str(bad) in str(err.value)


def test_wrong_count_and_label_range(tmp_path):
    _fake(tmp_path, n_test=9999)
    with pytest.raises(ValueError, match="holds 9999 items, expected 10000"):
        load_dataset("fashion-mnist", "test", tmp_path)
    _fake(tmp_path)
    _idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, (10000,), bytes([11]) * 10000)
    with pytest.raises(ValueError, match="label 11 out of range"):
        load_dataset("fashion-mnist", "test", tmp_path)


def test_missing_files_name_package_and_files(tmp_path):
    with pytest.raises(DataSetMissing) as err:
        find_fashion_mnist(tmp_path)
    text = str(err.value)
    assert "dataset-fashion-mnist" in text and all(s + ".gz" in text for s in STEMS)
    assert err.value.exit_code == 3


def test_cli_exit_codes(tmp_path, capsys):
    ck = tmp_path / "m.safetensors"
    from lsmha import create_model, save

    save(create_model("cct_1_3x1", dim=32, heads=2, num_classes=10), ck)
    assert train_main(["eval", str(ck), "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "none")]) == 3
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    _fake(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b broken")
    code = train_main(["eval", str(ck), "--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--split", "val"])
    assert code == 2
    assert "train-labels-idx1-ubyte.gz" in capsys.readouterr().err


@needs_package
def test_installed_package_reads():
    x, y = load_dataset("fashion-mnist", "test")
    assert x.shape == (10000, 3, 32, 32) and y.bincount().tolist() == [1000] * 10
