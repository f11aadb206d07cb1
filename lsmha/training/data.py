"""Data sets as in-memory uint8 tensors: CIFAR-100 from a local directory,
Fashion-MNIST from Debian's package (or a local directory), the embedded digits set,
and seeded synthetic images.

Every loader returns `(images, labels)`: images uint8 (N, 3, 32, 32), labels int64
(N,). Nothing is downloaded; standardisation happens inside the model.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .choices import DATASETS

SPLITS = ("train", "val", "test")
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-100-python.tar.gz or cifar-100-binary.tar.gz)"
_PYTHON_FILES = ("train", "test")
_BINARY_FILES = ("train.bin", "test.bin")
_DIGITS_VAL_FRACTION = 0.2
_DIGITS_SEED = 0


def num_classes(name: str, **kw: Any) -> int:
    """Number of labels of data set `name` (`synthetic` honours `num_classes=`)."""
    _check_name(name)
    if name == "cifar100":
        return 100
    if name in ("digits", "fashion-mnist"):
        return 10
    return int(kw.get("num_classes", 10))


def load_dataset(
    name: str, split: str, data_dir: str | os.PathLike | None = None, **kw: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,) of one split.

    Args:
        name: "cifar100" (needs `data_dir`), "fashion-mnist", "digits" or "synthetic".
        split: "train", "val" or "test". Fashion-MNIST has three: `train` 55,000 and
            `val` 5,000 (a fixed seeded hold-out of the training file: selection,
            calibration, early stopping) and `test` its 10,000 test images (final
            figures only). The others have two, and "test" reads "val" (CIFAR-100's
            test set is the paper's validation set).
        data_dir: directory holding CIFAR-100 in either official layout, or its parent;
            for Fashion-MNIST the directory of its IDX files (default: Debian's
            /usr/share/datasets/fashion-mnist).
        **kw: `limit` (keep the first N images) for every set; `num_classes`,
            `size`, `seed` for "synthetic"; `labels="fine"|"coarse"` for "cifar100".
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if name != "fashion-mnist" and split == "test":
        split = "val"
    limit = kw.pop("limit", None)
    if name == "fashion-mnist":
        images, labels = _load_fashion_mnist(split, data_dir, **kw)
    elif name == "cifar100":
        images, labels = _load_cifar100(split, data_dir, **kw)
    elif name == "digits":
        images, labels = _load_digits(split, **kw)
    else:
        images, labels = _load_synthetic(split, **kw)
    classes = 20 if name == "cifar100" and kw.get("labels") == "coarse" else num_classes(name, **kw)
    _check_split(f"{name} {split}", images, labels, classes)
    if limit is not None:
        images, labels = images[: int(limit)], labels[: int(limit)]
    return images.contiguous(), labels.contiguous()


def _check_split(what: str, images: torch.Tensor, labels: torch.Tensor, classes: int) -> None:
    """Refuse a split that would train on something else than it says: every data set, every
    split, checked the same way before any step runs."""
    n = len(images)
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, 32, 32):
        raise ValueError(f"{what}: images must be uint8 (N, 3, 32, 32), got {images.dtype} {tuple(images.shape)}")
    if labels.dtype != torch.int64 or labels.shape != (n,):
        raise ValueError(f"{what}: {n} images need {n} int64 labels, got {labels.dtype} {tuple(labels.shape)}")
    if n == 0:
        raise ValueError(f"{what}: holds no images (an empty or truncated file?)")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise ValueError(f"{what}: labels span {low}..{high}, expected 0..{classes - 1} ({classes} classes)")


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")


def find_cifar100(data_dir: str | os.PathLike | None) -> tuple[str, Path]:
    """The layout ("python" or "binary") and directory of CIFAR-100 under `data_dir`.

    Raises FileNotFoundError listing the files expected and where to get them.
    """
    if data_dir is None:
        raise FileNotFoundError(
            f"cifar100 needs --data-dir: a directory with cifar-100-python/{{train,test}} or "
            f"cifar-100-binary/{{train.bin,test.bin}}; the data set is published at {CIFAR100_URL}"
        )
    root = Path(data_dir)
    candidates = [root, root / "cifar-100-python", root / "cifar-100-binary"]
    for d in candidates:
        if all((d / f).is_file() for f in _PYTHON_FILES):
            return "python", d
        if all((d / f).is_file() for f in _BINARY_FILES):
            return "binary", d
    found = sorted({p.relative_to(root).as_posix() for d in candidates if d.is_dir() for p in d.iterdir()})[:20]
    raise FileNotFoundError(
        f"no complete CIFAR-100 under {root} (exists: {root.is_dir()}; found: {found or 'nothing'}); "
        f"expected either the python layout cifar-100-python/train and cifar-100-python/test, or the "
        f"binary layout cifar-100-binary/train.bin and cifar-100-binary/test.bin (the directory itself "
        f"or its parent); the data set is published at {CIFAR100_URL}"
    )


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR's python files are pickled dicts of lists and numpy arrays; allow only those."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
        ("__builtin__", "bytes"),  # ... and empty bytes (an empty array's buffer)
        ("builtins", "bytes"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a CIFAR-100 data file (not a CIFAR array)")


def _load_cifar100(split: str, data_dir: Any, labels: str = "fine") -> tuple[torch.Tensor, torch.Tensor]:
    if labels not in ("fine", "coarse"):
        raise ValueError(f"cifar100 labels must be 'fine' or 'coarse', got {labels!r}")
    layout, d = find_cifar100(data_dir)
    if layout == "python":
        data, target = _read_cifar_pickle(d / ("train" if split == "train" else "test"), labels)
    else:
        path = d / ("train.bin" if split == "train" else "test.bin")
        raw = np.fromfile(path, dtype=np.uint8)
        record = 2 + 3072
        if raw.size % record:
            raise ValueError(f"{path}: size {raw.size} is not a multiple of {record} (truncated download?)")
        raw = raw.reshape(-1, record)
        target = raw[:, 1 if labels == "fine" else 0].astype(np.int64)
        data = raw[:, 2:]
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(target)


def _read_cifar_pickle(path: Path, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100's python-layout file: data uint8 (N, 3072) and labels (N,), checked as read."""
    key = b"fine_labels" if labels == "fine" else b"coarse_labels"
    try:
        with open(path, "rb") as f:
            doc = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except OSError:
        raise
    except Exception as err:  # a corrupt or hostile pickle can raise almost anything; all mean "not CIFAR"
        raise ValueError(f"{path}: not a readable CIFAR-100 python file ({type(err).__name__}: {err})") from None
    if not isinstance(doc, dict) or b"data" not in doc or key not in doc:
        found = sorted(doc)[:6] if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path}: expected a pickled dict with b'data' and {key!r} (CIFAR-100), found {found}")
    data, target = np.asarray(doc[b"data"]), np.asarray(doc[key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: data must be uint8 (N, 3072) pixels, got {data.dtype} {data.shape}")
    if len(data) == 0:
        raise ValueError(f"{path}: holds no images (an empty or truncated file?)")
    if target.dtype.kind not in "iu" or target.shape != (len(data),):
        raise ValueError(
            f"{path}: {len(data)} images need {len(data)} integer labels, got {target.dtype} {target.shape}"
        )
    return data, target.astype(np.int64)


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, target, splits = _digits()
    chosen = splits[split]
    return images[chosen].contiguous(), torch.from_numpy(target[chosen])


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, np.ndarray, dict[str, np.ndarray]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") from err
    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0))[:, None]  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    images = x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
    target = bunch.target.astype(np.int64)
    # fixed stratified split: per class, a seeded permutation, the first 20% to validation
    rng = np.random.default_rng(_DIGITS_SEED)
    val_idx, train_idx = [], []
    for c in np.unique(target):
        idx = rng.permutation(np.flatnonzero(target == c))
        n_val = int(round(len(idx) * _DIGITS_VAL_FRACTION))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    splits = {"val": np.sort(np.concatenate(val_idx)), "train": np.sort(np.concatenate(train_idx))}
    return images, target, splits


def _load_synthetic(
    split: str, num_classes: int = 10, size: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded images: a per-class random prototype (shared by both splits) plus
    per-image noise, so a model can learn something in a smoke run."""
    if num_classes < 1:
        raise ValueError(f"synthetic num_classes must be >= 1, got {num_classes}")
    size = size if size is not None else (512 if split == "train" else 128)
    proto_gen = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, 3, 32, 32, generator=proto_gen) * 255
    gen = torch.Generator().manual_seed(seed * 2 + (1 if split == "val" else 2))
    labels = torch.randint(0, num_classes, (size,), generator=gen, dtype=torch.int64)
    noise = torch.randn(size, 3, 32, 32, generator=gen) * 48
    images = (prototypes[labels] + noise).round().clamp(0, 255).to(torch.uint8)
    return images, labels


# Fashion-MNIST: Debian's dataset-fashion-mnist package installs its four IDX files here.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
_FASHION_VAL = 5000
_FASHION_SEED = 0
_IDX_IMAGES, _IDX_LABELS = 2051, 2049


class DataSetMissing(FileNotFoundError):
    """A data set's files are not on this machine: an environment error (exit 3), not bad usage."""

    exit_code = 3


def _idx_path(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _read_idx(path: Path, magic: int, count: int) -> np.ndarray:
    """An IDX file's payload, checked: magic number, item count, item size and length."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'IDX'} ({err})") from None
    dims = 3 if magic == _IDX_IMAGES else 1
    header = 4 + 4 * dims
    if len(raw) < header:
        raise ValueError(f"{path}: {len(raw)} bytes, shorter than an IDX header ({header} bytes)")
    found = struct.unpack(f">{1 + dims}I", raw[:header])
    if found[0] != magic:
        raise ValueError(
            f"{path}: IDX magic number {found[0]}, expected {magic} ({'images' if dims == 3 else 'labels'})"
        )
    if found[1] != count:
        raise ValueError(f"{path}: holds {found[1]} items, expected {count}")
    if dims == 3 and found[2:] != (28, 28):
        raise ValueError(f"{path}: images of {found[2]}x{found[3]} pixels, expected 28x28")
    size = count * (28 * 28 if dims == 3 else 1)
    if len(raw) - header != size:
        raise ValueError(f"{path}: {len(raw) - header} bytes of data, expected {size} (truncated or padded file)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


@functools.lru_cache(maxsize=2)
def _fashion_part(root: str, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_stem, labels_stem, count = _FASHION_FILES[part]
    found = {stem: _idx_path(Path(root), stem) for stem in (images_stem, labels_stem)}
    images = _read_idx(found[images_stem], _IDX_IMAGES, count).reshape(count, 1, 28, 28)
    labels = _read_idx(found[labels_stem], _IDX_LABELS, count).astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{found[labels_stem]}: label {labels.max()} out of range; Fashion-MNIST labels are 0-9")
    # 28x28 grayscale -> 3x32x32: zero-padded by 2 pixels a side (every pixel kept, none
    # resampled; the background is already 0) and the channel repeated three times.
    x = F.pad(torch.from_numpy(images.copy()), (2, 2, 2, 2)).expand(-1, 3, -1, -1)
    return x, torch.from_numpy(labels)


def find_fashion_mnist(data_dir: str | os.PathLike | None) -> Path:
    """The directory holding Fashion-MNIST's four IDX files (gzip or raw).

    Raises DataSetMissing (exit 3) naming the Debian package and the four files."""
    root = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    stems = [s for part in _FASHION_FILES.values() for s in part[:2]]
    missing = [s for s in stems if _idx_path(root, s) is None]
    if missing:
        raise DataSetMissing(
            f"Fashion-MNIST is not in {root} (missing: {', '.join(missing)}); it needs the four IDX files "
            f"{', '.join(s + '.gz' for s in stems)} (gzip or raw): install Debian's package with "
            f"`apt-get install {FASHION_MNIST_PACKAGE}` (files under {FASHION_MNIST_DIR}) or pass --data-dir"
        )
    return root


def _load_fashion_mnist(split: str, data_dir: Any) -> tuple[torch.Tensor, torch.Tensor]:
    root = str(find_fashion_mnist(data_dir).resolve())
    if split == "test":
        return _fashion_part(root, "test")
    images, labels = _fashion_part(root, "train")
    # a fixed, seeded hold-out: the last 5,000 of a seeded permutation of the 60,000 training images
    order = np.random.default_rng(_FASHION_SEED).permutation(len(labels))
    chosen = np.sort(order[-_FASHION_VAL:] if split == "val" else order[:-_FASHION_VAL])
    return images[chosen], labels[chosen]
