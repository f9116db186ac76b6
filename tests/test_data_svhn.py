"""SVHN .mat reader on tiny files written in the official layout (scipy.io.savemat), and its errors."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from data_prep import svhn
from data_prep.errors import DataError


def write_mat(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    """Write X and y as SVHN does (MATLAB v5) and return the file's md5."""
    scipy.io.savemat(path, {"X": x, "y": y})
    return hashlib.md5(path.read_bytes()).hexdigest()


def official_layout(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random X (32, 32, 3, n) uint8 and y (n, 1) uint8 with labels 1–10, 10 included."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]
    return x, y


def test_known_answer_layout_and_label_10(tmp_path: Path) -> None:
    x, y = official_layout(12)
    path = tmp_path / "train_32x32.mat"
    md5 = write_mat(path, x, y)
    images, labels, info = svhn.read_svhn_mat(path, md5)
    assert images.shape == (12, 3, 32, 32) and images.dtype == np.uint8 and images.flags["C_CONTIGUOUS"]
    assert images[5, 2, 7, 19] == x[7, 19, 2, 5]  # X[h, w, c, n] -> images[n, c, h, w]
    np.testing.assert_array_equal(images, x.transpose(3, 2, 0, 1))
    assert labels.dtype == np.int64
    assert labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]  # 10 means 0
    assert info["md5"] == md5 and len(info["sha256"]) == 64


def test_flipped_byte_fails_md5(tmp_path: Path) -> None:
    path = tmp_path / "test_32x32.mat"
    md5 = write_mat(path, *official_layout(4))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"test_32x32\.mat: md5 mismatch"):
        svhn.read_svhn_mat(path, md5)


def test_official_md5s_are_checked_by_name(tmp_path: Path) -> None:
    write_mat(tmp_path / "train_32x32.mat", *official_layout(3))
    with pytest.raises(DataError, match="expected e26dedcc434d2e4c54c9b2d4a06d8373"):
        svhn.load_svhn_split(tmp_path, "train")


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"X": np.zeros((4, 3, 32, 32), np.uint8), "y": np.ones((4, 1), np.uint8)}, r"X must be \(32, 32, 3, N\) uint8"),
        ({"X": np.zeros((32, 32, 4, 3), np.uint8), "y": np.ones((4, 1), np.uint8)}, r"X must be \(32, 32, 3, N\) uint8"),
        ({"X": np.zeros((32, 32, 3, 4), np.float64), "y": np.ones((4, 1), np.uint8)}, r"got \(32, 32, 3, 4\) float64"),
        ({"X": np.zeros((32, 32, 3, 4), np.uint8)}, "has no variable 'y'"),
        ({"y": np.ones((4, 1), np.uint8)}, "has no variable 'X'"),
        ({"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((5, 1), np.uint8)}, r"y must be \(4, 1\)"),
        ({"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.array([[1], [0], [3], [4]], np.uint8)}, r"y\[1\] = 0 is outside 1–10"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]], np.uint8)}, r"y\[1\] = 11"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1.5], [2.0]])}, "integer labels"),
    ],
)
def test_wrong_layout_is_named(tmp_path: Path, variables: dict, message: str) -> None:
    path = tmp_path / "bad.mat"
    scipy.io.savemat(path, variables)
    with pytest.raises(DataError, match=message) as err:
        svhn.read_svhn_mat(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("keep", [10, 200, 0.5, -7])
def test_truncated_file_is_named(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "train_32x32.mat"
    write_mat(path, *official_layout(6))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(DataError, match=r"train_32x32\.mat: is not a readable MATLAB file"):
        svhn.read_svhn_mat(path)


def test_not_a_mat_file(tmp_path: Path) -> None:
    path = tmp_path / "x.mat"
    path.write_bytes(b"this is not matlab" * 20)
    with pytest.raises(DataError, match=r"x\.mat: is not a readable MATLAB file"):
        svhn.read_svhn_mat(path)


def test_missing_file_and_presence(tmp_path: Path) -> None:
    assert not svhn.svhn_present(tmp_path)
    with pytest.raises(DataError, match=r"train_32x32\.mat: not found"):
        svhn.load_svhn_split(tmp_path, "train")
    for name in ("train_32x32.mat", "test_32x32.mat"):
        write_mat(tmp_path / name, *official_layout(2))
    assert svhn.svhn_present(tmp_path)


def test_download_offline_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    dest = tmp_path / "svhn"
    with pytest.raises(DataError, match=r"train_32x32\.mat: could not be downloaded .* \(offline\?\)"):
        svhn.download_svhn(dest)
    assert not dest.exists()  # nothing is created when nothing arrived
