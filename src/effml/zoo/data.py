"""Real image data sets, offline: Fashion-MNIST (Debian `dataset-fashion-mnist`) and sklearn digits.

    data = load("fashion-mnist", batch_size=128, seed=0)       # DataBundle: train/test loaders, note
    x, y = next(iter(data.train))                               # (128, 1, 28, 28) float32, (128,) int64

Fashion-MNIST is read from the IDX files the Debian package installs under /usr/share/datasets/fashion-mnist
(gzip; images: 16-byte header = magic 0x00000803, count, rows, cols, then uint8 pixels; labels: 8-byte header =
magic 0x00000801, count, then uint8 labels). When they are absent, `load("fashion-mnist")` falls back to
sklearn digits (1797 real 8x8 handwritten digits, upsampled to 28x28 so the same models run) and says so in
`DataBundle.note`; `load(..., fallback=False)` raises instead. Digits are split 80/20 with a fixed seed.
Pixels are scaled to [0, 1] and standardised with the training split's mean and std.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from effml.errors import ConfigError, EffmlError

FASHION_DIR = Path(os.environ.get("EFFML_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
DATASETS = ("fashion-mnist", "digits")


class DataError(EffmlError, RuntimeError):
    """A data set is missing or its files are not what the format says."""


def read_idx_images(path: Path) -> torch.Tensor:
    """IDX3 images -> (N, rows, cols) uint8."""
    raw = gzip.open(path, "rb").read() if str(path).endswith(".gz") else Path(path).read_bytes()
    if len(raw) < 16:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than the 16-byte IDX image header")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])  # big-endian
    if magic != IMAGE_MAGIC or len(raw) != 16 + n * rows * cols:
        raise DataError(f"{path}: not an IDX3 image file (magic {magic:#010x}, {n}x{rows}x{cols}, {len(raw)} bytes)")
    return torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).reshape(n, rows, cols)


def read_idx_labels(path: Path) -> torch.Tensor:
    """IDX1 labels -> (N,) int64."""
    raw = gzip.open(path, "rb").read() if str(path).endswith(".gz") else Path(path).read_bytes()
    if len(raw) < 8:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than the 8-byte IDX label header")
    magic, n = struct.unpack(">II", raw[:8])
    if magic != LABEL_MAGIC or len(raw) != 8 + n:
        raise DataError(f"{path}: not an IDX1 label file (magic {magic:#010x}, n={n}, {len(raw)} bytes)")
    return torch.frombuffer(bytearray(raw[8:]), dtype=torch.uint8).long()


def fashion_available(root: Path | None = None) -> bool:
    root = Path(root or FASHION_DIR)
    return all((root / f).is_file() for pair in FASHION_FILES.values() for f in pair)


def fashion_mnist(split: str, root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 28, 28) uint8 images and (N,) int64 labels of one split ('train': 60k, 'test': 10k)."""
    if split not in FASHION_FILES:
        raise ConfigError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    root = Path(root or FASHION_DIR)
    if not fashion_available(root):
        raise DataError(f"Fashion-MNIST is not installed at {root}: `apt-get install dataset-fashion-mnist` "
                        "(or `make data` as root), or set EFFML_FASHION_MNIST to a folder with the IDX .gz files")
    images, labels = (root / f for f in FASHION_FILES[split])
    x, y = read_idx_images(images), read_idx_labels(labels)
    if len(x) != len(y):
        raise DataError(f"Fashion-MNIST {split}: {len(x)} images but {len(y)} labels")
    return x, y


def digits(split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn digits (1797 8x8, pixel values 0..16) as (N, 8, 8) float in [0, 1]; a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ConfigError(f"digits split must be 'train' or 'test', got {split!r}")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 16.0  # (1797, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))  # 1437 train, 360 test
    idx = perm[:cut] if split == "train" else perm[cut:]
    return x[idx], y[idx]


class BatchLoader:
    """Batches of in-memory tensors: seeded shuffle per epoch (epoch e uses seed + e), fast slicing.

    Any iterable of (x, y) batches works where a loader is expected; this one avoids per-sample indexing.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False):
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if len(x) != len(y):
            raise ConfigError(f"BatchLoader got {len(x)} inputs but {len(y)} labels")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, seed, drop_last, 0

    def reset(self, seed: int) -> None:
        """Start the shuffle sequence again from `seed` (train_classifier does this: a seeded run is reproducible)."""
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.x)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
            self.epoch += 1
        else:
            order = None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            idx = order[sl] if order is not None else sl
            yield self.x[idx], self.y[idx]  # (B, C, H, W), (B,)


@dataclass
class DataBundle:
    """A classification data set ready to train on: loaders, shapes, and what it really is."""

    name: str  # the data set actually loaded ('fashion-mnist' or 'digits')
    train: BatchLoader
    test: BatchLoader
    num_classes: int
    input_shape: tuple[int, ...]  # (1, C, H, W)
    note: str = ""  # e.g. why digits stand in for Fashion-MNIST
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "train_size": len(self.train.x), "test_size": len(self.test.x),
                "num_classes": self.num_classes, "input_shape": list(self.input_shape), "note": self.note,
                **self.stats}

    def calibration(self, n: int = 256) -> torch.Tensor:
        """The first n training images (not shuffled): calibration data for static quantization."""
        return self.train.x[:n]


def _subset(x, y, limit: int | None, seed: int):
    if limit is None or limit >= len(x):
        return x, y
    if limit <= 0:
        raise ConfigError(f"data limit must be positive, got {limit}")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:limit]
    return x[idx], y[idx]


def load(name: str = "fashion-mnist", *, batch_size: int = 128, seed: int = 0, train_limit: int | None = None,
         test_limit: int | None = None, image_size: int | None = None, fallback: bool = True,
         root: Path | None = None) -> DataBundle:
    """A DataBundle of `name` ('fashion-mnist' or 'digits'), standardised, as (N, 1, H, W) float32.

    train_limit/test_limit: a seeded random subset (fast tests and benchmarks). image_size: resize (bilinear)
    to image_size x image_size, e.g. 32 to run 32x32 CNNs; digits default to 28 under a fallback, else 8.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; effml has {', '.join(DATASETS)}")
    note = ""
    if name == "fashion-mnist" and not fashion_available(root):
        if not fallback:
            fashion_mnist("train", root)  # raises the DataError with the install hint
        note = (f"Fashion-MNIST is not installed at {Path(root or FASHION_DIR)} (apt-get install "
                "dataset-fashion-mnist); using sklearn digits (1797 8x8 images, upsampled to 28x28) instead")
        name, image_size = "digits", image_size or 28
    if name == "fashion-mnist":
        (xtr, ytr), (xte, yte) = fashion_mnist("train", root), fashion_mnist("test", root)
        xtr, xte = xtr.float() / 255.0, xte.float() / 255.0  # (N, 28, 28) in [0, 1]
    else:
        (xtr, ytr), (xte, yte) = digits("train"), digits("test")
    xtr, ytr = _subset(xtr, ytr, train_limit, seed)
    xte, yte = _subset(xte, yte, test_limit, seed + 1)
    xtr, xte = xtr[:, None], xte[:, None]  # (N, 1, H, W)
    if image_size is not None and image_size != xtr.shape[-1]:
        xtr = F.interpolate(xtr, size=(image_size, image_size), mode="bilinear", align_corners=False)
        xte = F.interpolate(xte, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean, std = xtr.mean().item(), xtr.std().item()
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    return DataBundle(name, BatchLoader(xtr, ytr, batch_size, shuffle=True, seed=seed),
                      BatchLoader(xte, yte, max(batch_size, 256)), 10, (1, *xtr.shape[1:]), note,
                      {"mean": mean, "std": std})
