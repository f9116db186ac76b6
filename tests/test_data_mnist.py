"""MNIST IDX reader: known answers on hand-built files, and every structural error named with its file."""

from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from data_prep import mnist
from data_prep.errors import DataError

SHARED_MNIST = Path(__file__).parents[1] / "../shared/data/mnist"


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """IDX bytes built by hand with struct (independent of the library's writer)."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(">u1" if type_code == 0x08 else array.dtype).tobytes()


def write_split(folder: Path, images: np.ndarray, labels: np.ndarray, split: str = "train", gz: bool = True) -> dict:
    """Write one MNIST split as IDX files; return {stem: md5 of the raw bytes}."""
    stems = mnist.MNIST_FILES[split]
    md5 = {}
    for stem, array in zip(stems, (images, labels)):
        data = idx_bytes(array)
        md5[stem] = hashlib.md5(data).hexdigest()
        (folder / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    return md5


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, dict]:
    """A tiny train split (12 images) written gzip-compressed."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = (np.arange(12) % 10).astype(np.uint8)
    return tmp_path, images, labels, write_split(tmp_path, images, labels)


def test_reads_raw_and_gzip_with_known_values(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(array)
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "a.gz").write_bytes(gzip.compress(data))
    raw, raw_info = mnist.read_idx(tmp_path / "a")
    packed, packed_info = mnist.read_idx(tmp_path / "a.gz")
    np.testing.assert_array_equal(raw, array)
    np.testing.assert_array_equal(packed, array)
    assert raw_info["raw_md5"] == packed_info["raw_md5"] == hashlib.md5(data).hexdigest()
    assert (raw_info["gzip"], packed_info["gzip"]) == (False, True)


def test_write_idx_round_trips_other_dtypes(tmp_path: Path) -> None:
    array = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    back, _ = mnist.read_idx(mnist.write_idx(tmp_path / "f.gz", array))
    np.testing.assert_array_equal(back, array)
    assert back.dtype == np.float32


def test_load_split_known_answer(tiny) -> None:
    folder, images, labels, md5 = tiny
    split = mnist.load_mnist_split(folder, "train", md5)
    assert split.images.shape == (12, 1, 28, 28) and split.images.dtype == np.uint8
    np.testing.assert_array_equal(split.images[:, 0], images)
    assert split.labels.dtype == np.int64
    np.testing.assert_array_equal(split.labels, labels)
    assert set(split.files) == {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"}


def test_flipped_byte_fails_md5_and_names_file(tiny) -> None:
    folder, images, labels, md5 = tiny
    mnist.load_mnist_split(folder, "train", md5)  # control: intact files pass
    images = images.copy()
    images[3, 10, 10] ^= 0x01
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: md5 mismatch"):
        mnist.load_mnist_split(folder, "train", md5)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"\x08\x03" + d[2:], "bad IDX magic"),
        (lambda d: d[:2] + b"\x07" + d[3:], "bad IDX magic"),
        (lambda d: d[:3], "truncated"),
        (lambda d: d[:10], "truncated"),
        (lambda d: d[:-5], "truncated"),
        (lambda d: d + b"\x00", "trailing bytes"),
    ],
)
def test_structural_errors_name_file_and_problem(tmp_path: Path, mutate, message: str) -> None:
    data = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mutate(data))
    with pytest.raises(DataError, match=message) as err:
        mnist.read_idx(path)
    assert str(path) in str(err.value)


def test_truncated_gzip_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8)))[:-12])
    with pytest.raises(DataError, match=r"x\.gz: is a truncated or corrupt gzip"):
        mnist.read_idx(path)


def test_gz_name_without_gzip_content(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    with pytest.raises(DataError, match="not gzip-compressed"):
        mnist.read_idx(path)


def test_wrong_image_dimensions(tmp_path: Path) -> None:
    write_split(tmp_path, np.zeros((4, 27, 28), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: expected \(N, 28, 28\)"):
        mnist.load_mnist_split(tmp_path, "train", md5={})


def test_labels_with_wrong_rank(tmp_path: Path) -> None:
    write_split(tmp_path, np.zeros((4, 28, 28), np.uint8), np.zeros((4, 1), np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: expected \(N,\) uint8 labels"):
        mnist.load_mnist_split(tmp_path, "train", md5={})


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    write_split(tmp_path, np.zeros((5, 28, 28), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="has 5 images but train-labels-idx1-ubyte.gz has 4 labels"):
        mnist.load_mnist_split(tmp_path, "train", md5={})


def test_label_out_of_range(tmp_path: Path) -> None:
    write_split(tmp_path, np.zeros((3, 28, 28), np.uint8), np.array([1, 12, 3], np.uint8))
    with pytest.raises(DataError, match="has label 12 at index 1"):
        mnist.load_mnist_split(tmp_path, "train", md5={})


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: not found"):
        mnist.load_mnist_split(tmp_path, "train")


def test_raw_file_preferred_over_gzip(tmp_path: Path) -> None:
    images, labels = np.ones((2, 28, 28), np.uint8), np.array([3, 4], np.uint8)
    md5 = write_split(tmp_path, images, labels, gz=True)
    write_split(tmp_path, images, labels, gz=False)
    split = mnist.load_mnist_split(tmp_path, "train", md5)
    assert not split.files["train-images-idx3-ubyte"]["gzip"]


def test_download_offline_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    dest = tmp_path / "mnist"
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: could not be downloaded \(offline\?\)"):
        mnist.download_mnist(dest)
    assert not dest.exists()  # nothing is created when nothing arrived


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="real MNIST not in ../shared/data/mnist")
def test_real_mnist_md5_and_class_counts() -> None:
    train = mnist.load_mnist_split(SHARED_MNIST, "train")
    test = mnist.load_mnist_split(SHARED_MNIST, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    for name, info in {**train.files, **test.files}.items():
        assert info["raw_md5"] == mnist.MNIST_RAW_MD5[name.removesuffix(".gz")]
