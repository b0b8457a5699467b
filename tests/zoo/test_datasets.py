"""Data loaders: IDX parsing (hand-built files), the digits split, the Fashion-MNIST fallback, seeded batches."""

import gzip
import struct

import pytest
import torch

from effml.zoo import data as D


def _write_idx(tmp_path, n=3, rows=2, cols=2, magic_img=0x803, magic_lab=0x801):
    px = bytes(range(n * rows * cols))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">IIII", magic_img, n, rows, cols) + px))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", magic_lab, n) + bytes([7, 1, 9])))
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes((tmp_path / name.replace("t10k", "train")).read_bytes())


def test_idx_headers_are_parsed(tmp_path):
    _write_idx(tmp_path)
    x, y = D.fashion_mnist("train", tmp_path)
    # 16-byte header (magic, n=3, rows=2, cols=2), then 12 pixel bytes 0..11 in row-major order
    assert x.shape == (3, 2, 2) and x.dtype == torch.uint8
    assert x[1].flatten().tolist() == [4, 5, 6, 7]
    # 8-byte header (magic, n=3), then the labels
    assert y.tolist() == [7, 1, 9]


def test_bad_magic_is_an_error_naming_the_file(tmp_path):
    _write_idx(tmp_path, magic_img=0x1234)
    with pytest.raises(D.DataError, match="not an IDX3 image file"):
        D.fashion_mnist("train", tmp_path)


def test_fallback_to_digits_says_so(tmp_path):
    bundle = D.load("fashion-mnist", root=tmp_path / "missing")
    assert bundle.name == "digits" and "not installed" in bundle.note
    # sklearn digits: 1797 images, 80/20 split = 1437 train / 360 test, upsampled to 28x28 for the same models
    assert len(bundle.train.x) == 1437 and len(bundle.test.x) == 360
    assert bundle.input_shape == (1, 1, 28, 28)
    with pytest.raises(D.DataError, match="apt-get install dataset-fashion-mnist"):
        D.load("fashion-mnist", root=tmp_path / "missing", fallback=False)


def test_digits_native_and_standardised():
    b = D.load("digits", batch_size=100)
    assert b.input_shape == (1, 1, 8, 8) and b.note == ""
    # standardised with the training split's own mean and std
    assert abs(b.train.x.mean().item()) < 1e-5 and abs(b.train.x.std().item() - 1) < 1e-4
    assert len(b.train) == 15  # ceil(1437 / 100)


def test_batches_are_seeded_and_cover_the_epoch():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    a = [yb.tolist() for _, yb in D.BatchLoader(x, y, 4, shuffle=True, seed=3)]
    b = [yb.tolist() for _, yb in D.BatchLoader(x, y, 4, shuffle=True, seed=3)]
    assert a == b and sorted(sum(a, [])) == list(range(10)) and [len(v) for v in a] == [4, 4, 2]


def test_unknown_dataset_and_bad_limit():
    with pytest.raises(D.ConfigError, match="unknown data set"):
        D.load("cifar10")
    with pytest.raises(D.ConfigError, match="limit must be positive"):
        D.load("digits", train_limit=0)


@pytest.mark.skipif(not D.fashion_available(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist_test_split():
    x, y = D.fashion_mnist("test")
    # the t10k split: 10,000 images of 28x28, 1,000 per class
    assert x.shape == (10000, 28, 28) and torch.bincount(y).tolist() == [1000] * 10
