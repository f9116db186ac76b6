"""MNIST: read and check the original IDX files (gzip-compressed or raw), or download them.

IDX layout (big-endian): two zero bytes, a type code (0x08 = uint8), the number of dimensions,
one uint32 per dimension, then the payload. MNIST images are (N, 28, 28) uint8, labels (N,) uint8
in 0–9. The md5 checked is that of the *decompressed* bytes, so recompressed .gz files still pass.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import socket
import tempfile
import urllib.error
import zlib
from pathlib import Path

import numpy as np

from data_prep.arrays import LabelledImages
from data_prep.errors import DataError

IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# md5 of the decompressed bytes, as published by LeCun et al.
MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

GZIP_MAGIC = b"\x1f\x8b"
DOWNLOAD_TIMEOUT_S = 30.0


MnistSplit = LabelledImages  # One MNIST split: images (N, C, H, W) uint8, labels (N,) int64


def read_bytes(path: Path) -> tuple[bytes, bool]:
    """The decompressed content of `path` and whether it was gzip-compressed."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror or e})") from e
    if data[:2] != GZIP_MAGIC:
        if path.suffix == ".gz":
            raise DataError(path, "is named .gz but is not gzip-compressed (no gzip magic 1f 8b)")
        return data, False
    try:
        return gzip.decompress(data), True
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(path, f"is a truncated or corrupt gzip stream ({e})") from e


def parse_idx(data: bytes, path: Path) -> np.ndarray:
    """Parse IDX bytes into an array, checking magic, dimensions and payload length."""
    if len(data) < 4:
        raise DataError(path, f"is truncated: {len(data)} bytes, shorter than the 4-byte IDX magic")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataError(path, f"has a bad IDX magic {data[:4].hex()} (expected 0000 + type code + ndim)")
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(path, f"is truncated or malformed: IDX header declares {ndim} dimensions")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) < expected:
        raise DataError(path, f"is truncated: {len(data)} bytes, IDX header {dims} needs {expected}")
    if len(data) > expected:
        raise DataError(path, f"has {len(data) - expected} trailing bytes after the IDX payload {dims}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path, expected_md5: str | None = None) -> tuple[np.ndarray, dict]:
    """Read an IDX file (gzip or raw); check the md5 of its decompressed bytes when given."""
    path = Path(path)
    data, compressed = read_bytes(path)
    array = parse_idx(data, path)  # structural errors first: they say more than a checksum
    md5 = hashlib.md5(data).hexdigest()
    if expected_md5 is not None and md5 != expected_md5:
        raise DataError(path, f"md5 mismatch of the decompressed bytes: got {md5}, expected {expected_md5}")
    with path.open("rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    return array, {"path": str(path.resolve()), "gzip": compressed, "raw_md5": md5, "sha256": sha256}


def find_idx_file(raw_dir: Path, stem: str) -> Path:
    """The IDX file `stem` or `stem.gz` in `raw_dir` (raw preferred: both are md5-checked)."""
    for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(raw_dir / f"{stem}.gz", "not found (neither raw nor .gz); download MNIST or point --raw at it")


def check_images(images: np.ndarray, path: Path) -> None:
    """Raise unless `images` is (N, 28, 28) uint8."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(path, f"expected (N, 28, 28) uint8 images, got {images.shape} {images.dtype}")


def check_labels(labels: np.ndarray, path: Path) -> None:
    """Raise unless `labels` is (N,) uint8 in 0–9."""
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(path, f"expected (N,) uint8 labels, got {labels.shape} {labels.dtype}")
    if labels.size and labels.max() > 9:
        raise DataError(path, f"has label {int(labels.max())} at index {int(labels.argmax())}; expected 0–9")


def load_mnist_split(raw_dir: str | Path, split: str, md5: dict[str, str] | None = None) -> MnistSplit:
    """Load and check one split from `raw_dir`; `md5` maps file stems to expected raw md5s."""
    if split not in MNIST_FILES:
        raise ValueError(f"MNIST split must be one of {sorted(MNIST_FILES)}, got {split!r}")
    md5 = MNIST_RAW_MD5 if md5 is None else md5
    raw_dir = Path(raw_dir)
    image_stem, label_stem = MNIST_FILES[split]
    image_path, label_path = find_idx_file(raw_dir, image_stem), find_idx_file(raw_dir, label_stem)
    images, image_info = read_idx(image_path, md5.get(image_stem))
    labels, label_info = read_idx(label_path, md5.get(label_stem))
    check_images(images, image_path)
    check_labels(labels, label_path)
    if len(images) != len(labels):
        raise DataError(image_path, f"has {len(images)} images but {label_path.name} has {len(labels)} labels")
    files = {image_path.name: image_info, label_path.name: label_info}
    return MnistSplit(images[:, None], labels.astype(np.int64), files)


def download_mnist(dest_dir: str | Path) -> list[Path]:
    """Download the four MNIST .gz files into `dest_dir` with torchvision; DataError when offline."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import download_url

    dest_dir = Path(dest_dir)
    fetched = []
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        for filename, gz_md5 in MNIST.resources:
            fetched.append(_download_one(download_url, MNIST.mirrors, filename, gz_md5, dest_dir))
    finally:
        socket.setdefaulttimeout(old_timeout)
    return fetched


def _download_one(download_url, mirrors: list[str], filename: str, gz_md5: str, dest_dir: Path) -> Path:
    """Fetch one file from the first mirror that answers, via a temporary folder; `dest_dir` is created only then."""
    errors = []
    with tempfile.TemporaryDirectory(prefix="mnist-download-") as tmp:
        for mirror in mirrors:
            try:
                download_url(mirror + filename, tmp, filename, gz_md5)
            except (urllib.error.URLError, OSError, RuntimeError) as e:
                errors.append(f"{mirror}: {e}")
                continue
            target = dest_dir / filename
            try:
                dest_dir.mkdir(parents=True, exist_ok=True)
                shutil.move(str(Path(tmp) / filename), target)
            except OSError as e:
                raise DataError(target, f"downloaded but cannot be written ({e.strerror or e})") from e
            return target
    raise DataError(dest_dir / filename, "could not be downloaded (offline?): " + "; ".join(errors))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write `array` in IDX format (gzip when `compress`, default: when the name ends in .gz)."""
    path = Path(path)
    codes = {dtype: code for code, dtype in IDX_DTYPES.items()}
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if dtype not in codes or array.ndim == 0:
        raise ValueError(f"IDX cannot hold a {array.ndim}-d {array.dtype} array")
    header = bytes([0, 0, codes[dtype], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(array, dtype=dtype).tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path
