"""Data for the demos: scikit-learn's digits, MNIST from local IDX files, a 2-D point cloud.

Every loader returns float32 features scaled to [0, 1] (or N(0, 1) for the point cloud)
and int64 labels, split reproducibly from ``seed``.  Nothing is downloaded.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ._util import DemoError, require

__all__ = ["Dataset", "load_digits", "load_mnist", "read_idx", "write_idx", "make_toy2d"]


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def describe(self) -> str:
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test samples, "
                f"{self.n_features} features, {self.n_classes} classes")

    def subset(self, n_train: int, n_test: int, seed: int = 0) -> "Dataset":
        """A random subset (same seed, same subset), for quick runs."""
        rng = np.random.default_rng(seed)
        tr = np.sort(rng.permutation(len(self.x_train))[:n_train])
        te = np.sort(rng.permutation(len(self.x_test))[:n_test])
        return Dataset(self.name, self.x_train[tr], self.y_train[tr], self.x_test[te], self.y_test[te],
                       self.n_classes)


def _stratified_split(y: np.ndarray, test_fraction: float, rng: np.random.Generator):
    """Indices (train, test) with each class split in the same proportion."""
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn).

    Pixels 0..16 are scaled to [0, 1]; the split is stratified and seeded.
    """
    datasets = require("sklearn.datasets", "scikit-learn", "to load the handwritten digits")
    d = datasets.load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    tr, te = _stratified_split(y, test_fraction, np.random.default_rng(seed))
    return Dataset("digits", np.ascontiguousarray(x[tr]), y[tr], np.ascontiguousarray(x[te]), y[te], 10)


# ------------------------------------------------------------------------------ IDX
# IDX (LeCun's MNIST format): magic = 0x00 0x00 <type> <ndim>, then ndim big-endian
# uint32 sizes, then the data in big-endian C order.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}


def _open(path: str):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed, detected from its content) into a
    native-endian array of its stored type (uint8 for MNIST)."""
    with _open(path) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DemoError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise DemoError(f"{path}: unknown IDX data type 0x{code:02x}")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise DemoError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[code])
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - head != count * dtype.itemsize:
        raise DemoError(f"{path}: IDX header says shape {shape} ({count * dtype.itemsize} bytes of data), "
                        f"file has {len(data) - head}")
    arr = np.frombuffer(data, dtype, count=count, offset=head).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def write_idx(path: str, arr: np.ndarray) -> None:
    """Write ``arr`` as an IDX file (gzip-compressed if ``path`` ends in .gz)."""
    arr = np.asarray(arr)
    code = _IDX_CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}")
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    body = np.ascontiguousarray(arr, dtype=_IDX_TYPES[code]).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + body)


_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _find(directory: str, stem: str) -> Optional[str]:
    # the original names, with or without .gz, and the common "train-images.idx3-ubyte" spelling
    alt = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    return None


def load_mnist(directory: str) -> Dataset:
    """MNIST (or Fashion-MNIST) from the four IDX files in ``directory``
    (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``).

    Images are flattened and scaled to [0, 1]; the official train/test split is kept.
    """
    if not os.path.isdir(directory):
        raise DemoError(f"--mnist {directory}: no such directory")
    paths = {k: _find(directory, v) for k, v in _MNIST_FILES.items()}
    missing = [_MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DemoError(f"--mnist {directory}: missing {', '.join(missing)} (optionally .gz); "
                        "this demo reads local IDX files and downloads nothing")
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for part in ("train", "test"):
        x, y = arrays["x_" + part], arrays["y_" + part]
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
            raise DemoError(f"--mnist {directory}: {part} images {x.shape} and labels {y.shape} don't match")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DemoError(f"--mnist {directory}: train images {arrays['x_train'].shape[1:]} and test images "
                        f"{arrays['x_test'].shape[1:]} differ in size")

    def prep(x):
        scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0   # pixels 0..255 -> [0, 1]
        x = x.reshape(len(x), -1).astype(np.float32)
        x *= np.float32(scale)
        return x

    y_train = arrays["y_train"].astype(np.int64)
    y_test = arrays["y_test"].astype(np.int64)
    n_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset("mnist", prep(arrays["x_train"]), y_train, prep(arrays["x_test"]), y_test, n_classes)


# -------------------------------------------------------------------------- toy 2-D
def make_toy2d(n: int = 300, seed: int = 0, noise: float = 0.5):
    """The tutorials' point cloud: ``x ~ N(0, I_2)``, label 1 inside the circle
    ``x0^2 + x1^2 < 2``; ``noise`` is the standard deviation of Gaussian noise added to the
    squared radius before thresholding, so labels near the circle are sometimes flipped.

    Returns ``(x, y)``: float32 ``(n, 2)`` and float32 ``(n, 1)`` of 0/1.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2))
    r2 = np.einsum("ij,ij->i", x, x) + noise * rng.standard_normal(n)
    y = (r2 < 2.0).astype(np.float32).reshape(-1, 1)
    return x.astype(np.float32), y
