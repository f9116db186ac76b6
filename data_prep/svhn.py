"""SVHN: read and check the official cropped-digit .mat files, or download them.

Official layout (MATLAB v5): `X` (32, 32, 3, N) uint8 and `y` (N, 1) with labels 1–10, where 10 is
the digit 0. We return images (N, 3, 32, 32) uint8 and labels (N,) int64 in 0–9.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from data_prep.arrays import LabelledImages
from data_prep.errors import DataError

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
SVHN_MD5 = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
}
DOWNLOAD_TIMEOUT_S = 30.0


SvhnSplit = LabelledImages  # One SVHN split: images (N, C, H, W) uint8, labels (N,) int64


def file_digests(path: Path) -> dict[str, str]:
    """md5 and sha256 of a file, read once."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                md5.update(chunk)
                sha256.update(chunk)
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror or e})") from e
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def load_mat(path: Path) -> dict:
    """The `X` and `y` variables of a MATLAB v5 file; DataError for anything unreadable."""
    try:
        return scipy.io.loadmat(path, variable_names=["X", "y"])
    except NotImplementedError as e:
        raise DataError(path, f"is not a MATLAB v5 file as distributed (v7.3/HDF5?): {e}") from e
    except (MatReadError, ValueError, TypeError, OSError, EOFError, KeyError, IndexError) as e:
        raise DataError(path, f"is not a readable MATLAB file (truncated or corrupt?): {e}") from e


def convert_svhn(mat: dict, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Check the official layout and return images (N, 3, 32, 32) uint8 and labels (N,) int64 in 0–9."""
    for key in ("X", "y"):
        if key not in mat:
            raise DataError(path, f"has no variable '{key}' (found {sorted(k for k in mat if not k.startswith('__'))})")
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DataError(path, f"X must be (32, 32, 3, N) uint8 as in the official files, got {x.shape} {x.dtype}")
    n = x.shape[3]
    if y.shape not in ((n, 1), (n,)):
        raise DataError(path, f"y must be ({n}, 1) to match X's {n} images, got {y.shape}")
    y = y.reshape(-1)
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.array_equal(y, np.round(y))):
        raise DataError(path, f"y must hold integer labels 1–10, got dtype {y.dtype}")
    bad = np.flatnonzero((y < 1) | (y > 10))
    if bad.size:
        raise DataError(path, f"y[{bad[0]}] = {y[bad[0]]} is outside 1–10 ({bad.size} such labels)")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return images, (y.astype(np.int64) % 10)


def read_svhn_mat(path: str | Path, expected_md5: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read one SVHN .mat file, checking its md5 when given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "not found")
    digests = file_digests(path)
    if expected_md5 is not None and digests["md5"] != expected_md5:
        raise DataError(path, f"md5 mismatch: got {digests['md5']}, expected {expected_md5}")
    images, labels = convert_svhn(load_mat(path), path)
    return images, labels, {"path": str(path.resolve()), **digests}


def svhn_paths(svhn_dir: str | Path, splits: tuple[str, ...] = ("train", "test")) -> dict[str, Path]:
    """Where each split's official file is expected in `svhn_dir`."""
    return {s: Path(svhn_dir) / SVHN_FILES[s] for s in splits}


def svhn_present(svhn_dir: str | Path, splits: tuple[str, ...] = ("train", "test")) -> bool:
    """Whether every split's .mat file exists in `svhn_dir`."""
    return all(p.is_file() for p in svhn_paths(svhn_dir, splits).values())


def load_svhn_split(svhn_dir: str | Path, split: str, md5: dict[str, str] | None = None) -> SvhnSplit:
    """Load and check one split's official file from `svhn_dir`; `md5` maps file names to md5s."""
    if split not in SVHN_FILES:
        raise ValueError(f"SVHN split must be one of {sorted(SVHN_FILES)}, got {split!r}")
    md5 = SVHN_MD5 if md5 is None else md5
    path = svhn_paths(svhn_dir, (split,))[split]
    images, labels, info = read_svhn_mat(path, md5.get(path.name))
    return SvhnSplit(images, labels, {path.name: info})


def download_svhn(dest_dir: str | Path, splits: tuple[str, ...] = ("train", "test")) -> list[Path]:
    """Download the official .mat files into `dest_dir` (md5-checked); DataError when offline."""
    dest_dir = Path(dest_dir)
    return [_download_one(SVHN_FILES[s], dest_dir) for s in splits if not (dest_dir / SVHN_FILES[s]).is_file()]


def _download_one(filename: str, dest_dir: Path) -> Path:
    """Fetch one file into a temporary folder, check its md5, then move it into `dest_dir` (created only then)."""
    target = dest_dir / filename
    try:
        with tempfile.TemporaryDirectory(prefix="svhn-download-") as tmp:
            part = Path(tmp) / filename
            with urllib.request.urlopen(SVHN_URL + filename, timeout=DOWNLOAD_TIMEOUT_S) as r, part.open("wb") as f:
                shutil.copyfileobj(r, f, 1 << 22)
            got = file_digests(part)["md5"]
            if got != SVHN_MD5[filename]:
                raise DataError(SVHN_URL + filename, f"downloaded with md5 {got}, expected {SVHN_MD5[filename]}")
            dest_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(str(part), target)
    except (urllib.error.URLError, socket.timeout, OSError) as e:
        raise DataError(target, f"could not be downloaded from {SVHN_URL} (offline?): {e}") from e
    return target
