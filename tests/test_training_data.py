"""Data sets: shapes, dtypes, the fixed digits split, both CIFAR-100 layouts, clear failures."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from lsmha.training.data import load_dataset, num_classes


def test_digits_split_is_fixed_stratified_and_disjoint():
    xt, yt = load_dataset("digits", "train")
    xv, yv = load_dataset("digits", "val")
    assert xt.dtype == torch.uint8 and xt.shape[1:] == (3, 32, 32) and yt.dtype == torch.int64
    assert xt.shape[0] + xv.shape[0] == 1797 and xv.shape[0] == 359
    assert num_classes("digits") == 10 and set(yv.tolist()) == set(range(10))
    counts = torch.bincount(yv, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of each class
    assert torch.equal(load_dataset("digits", "val")[0], xv)
    # RGB channels are copies of the grey digit; no validation image appears in training
    assert torch.equal(xv[:, 0], xv[:, 2])
    train_keys = {bytes(x.numpy()) for x in xt[:, 0]}
    assert sum(bytes(x.numpy()) in train_keys for x in xv[:, 0]) < 5  # digits has a few exact duplicates


def test_synthetic_is_seeded_and_sized():
    x1, y1 = load_dataset("synthetic", "train", num_classes=7, size=40, seed=3)
    x2, y2 = load_dataset("synthetic", "train", num_classes=7, size=40, seed=3)
    x3, _ = load_dataset("synthetic", "val", num_classes=7, size=40, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.shape == (40, 3, 32, 32) and int(y1.max()) < 7 and num_classes("synthetic", num_classes=7) == 7
    assert load_dataset("synthetic", "train", size=40, limit=5)[0].shape[0] == 5


def _fake_cifar(n: int, seed: int) -> tuple[np.ndarray, list[int], list[int]]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        rng.integers(0, 100, n).tolist(),
        rng.integers(0, 20, n).tolist(),
    )


def test_cifar100_python_and_binary_layouts_agree(tmp_path):
    data = {split: _fake_cifar(6, i) for i, split in enumerate(("train", "test"))}
    py, binary = tmp_path / "py" / "cifar-100-python", tmp_path / "bin" / "cifar-100-binary"
    py.mkdir(parents=True)
    binary.mkdir(parents=True)
    for split, (pixels, fine, coarse) in data.items():
        doc = {b"data": pixels, b"fine_labels": fine, b"coarse_labels": coarse, b"filenames": [b"x"] * 6}
        (py / split).write_bytes(pickle.dumps(doc, protocol=2))
        records = np.concatenate([np.array(coarse, np.uint8)[:, None], np.array(fine, np.uint8)[:, None], pixels], 1)
        records.tofile(binary / f"{split}.bin")
    for root in (tmp_path / "py", py, tmp_path / "bin", binary):
        x, y = load_dataset("cifar100", "val", root)
        assert x.shape == (6, 3, 32, 32) and x.dtype == torch.uint8
        assert np.array_equal(x.reshape(6, -1).numpy(), data["test"][0]) and y.tolist() == data["test"][1]
    _, coarse = load_dataset("cifar100", "train", binary, labels="coarse")
    assert coarse.tolist() == data["train"][2]


def test_cifar100_missing_or_partial_directory_says_what_to_get(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python/train.*train.bin.*cs.toronto.edu"):
        load_dataset("cifar100", "train", tmp_path / "nowhere")
    partial = tmp_path / "cifar-100-python"
    partial.mkdir()
    (partial / "train").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="found: \\['cifar-100-python', 'cifar-100-python/train'\\]"):
        load_dataset("cifar100", "train", tmp_path)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_dataset("cifar100", "train")


def test_cifar100_pickle_refuses_anything_but_arrays(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for split in ("train", "test"):
        (d / split).write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="refusing"):
        load_dataset("cifar100", "train", tmp_path)


def test_unknown_names_fail():
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        load_dataset("mnist", "train")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("digits", "holdout")
