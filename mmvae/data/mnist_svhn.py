"""MNIST–SVHN pairs over prepared arrays: a batch source (CPU or GPU-resident) and a DataLoader dataset.

Images are held once as uint8 tensors, (N, 1, 28, 28) and (M, 3, 32, 32), with the (P, 2) pair
index; a batch is built by indexing, never by copying images per pair. The model converts uint8 to
float on its device. Every file loaded is checked against the manifest's sha256 first, and the
arrays' shapes, dtypes, index ranges and the pairs' shared labels are checked after.

Style factors, for the disentanglement metrics: `source.with_factors()` is the same source whose batches also
carry `meta["mnist_factors"]` (B, 5) float32, the handwriting style measured from each MNIST image
(mmvae.data.mnist_style), and, where the folder records them (the synthetic street digits),
`meta["svhn_factors"]` (B, K) float32, the style each street digit was drawn with (names:
`svhn_factor_names`). A plain source's batches carry neither: training never pays for them.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from data_prep.errors import DataError
from mmvae.batch import Batch, sample_at, stack_samples

FORMAT = "mmvae.mnist_svhn/1"
MANIFEST = "manifest.json"
MODALITIES = ("mnist", "svhn")
IMAGE_SHAPES = {"mnist": (1, 28, 28), "svhn": (3, 32, 32)}


def svhn_factor_record(manifest: dict) -> dict | None:
    """manifest.svhn.factors when it records factors (names, discrete, meaning, files), else None."""
    record = manifest.get("svhn", {}).get("factors") if isinstance(manifest.get("svhn"), dict) else None
    return record if isinstance(record, dict) and record.get("recorded") else None


def svhn_factors_note(manifest: dict) -> str | None:
    """Why a prepared folder has no street-digit factors (None when it has them)."""
    if svhn_factor_record(manifest) is not None:
        return None
    svhn = manifest.get("svhn") if isinstance(manifest.get("svhn"), dict) else {}
    if svhn.get("source") == "real" or isinstance(svhn.get("factors"), dict):
        return (svhn.get("factors") or {}).get("reason", "real SVHN records no style factors")
    return ("this folder was prepared before the street-digit factors were recorded; add them with "
            "`mmvae prepare svhn-factors <folder>`")


def read_manifest(prepared_dir: Path) -> dict:
    """The prepared directory's manifest, checked for format."""
    path = prepared_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(path, "not found: prepare the data first (`mmvae prepare mnist-svhn ...`)") from e
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(path, f"is unreadable or not JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(path, f"has format {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r}")
    return manifest


def load_checked(prepared_dir: Path, name: str, manifest: dict, verify: bool = True) -> np.ndarray:
    """Load one .npy array (no pickles), first verifying its sha256 against the manifest when `verify`."""
    path = prepared_dir / name
    record = manifest.get("files", {}).get(name)
    if record is None:
        raise DataError(prepared_dir / MANIFEST, f"lists no checksum for {name}")
    if verify:
        try:
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as e:
            raise DataError(path, f"cannot be read ({e.strerror or e})") from e
        if digest != record["sha256"]:
            raise DataError(path, f"sha256 mismatch: got {digest}, manifest says {record['sha256']}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(path, f"is not a readable .npy array ({e})") from e


def check_arrays(arrays: dict[str, np.ndarray], names: dict[str, str], prepared_dir: Path) -> None:
    """Shapes, dtypes, index ranges and shared labels of one split's arrays."""
    for m in MODALITIES:
        images, labels = arrays[f"{m}_images"], arrays[f"{m}_labels"]
        if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPES[m]:
            raise DataError(prepared_dir / names[f"{m}_images"], f"expected (N, {', '.join(map(str, IMAGE_SHAPES[m]))}) uint8, got {images.shape} {images.dtype}")
        if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
            raise DataError(prepared_dir / names[f"{m}_labels"], f"expected ({len(images)},) int64, got {labels.shape} {labels.dtype}")
    pairs = arrays["pairs"]
    pairs_path = prepared_dir / names["pairs"]
    if pairs.dtype != np.int64 or pairs.ndim != 2 or pairs.shape[1] != 2:
        raise DataError(pairs_path, f"expected (P, 2) int64, got {pairs.shape} {pairs.dtype}")
    for col, m in enumerate(MODALITIES):
        n = len(arrays[f"{m}_labels"])
        if pairs.size and (pairs[:, col].min() < 0 or pairs[:, col].max() >= n):
            raise DataError(pairs_path, f"column {col} indexes outside the {n} {m} images")
    mismatch = np.flatnonzero(arrays["mnist_labels"][pairs[:, 0]] != arrays["svhn_labels"][pairs[:, 1]])
    if mismatch.size:
        raise DataError(pairs_path, f"pair {mismatch[0]} joins different labels ({mismatch.size} such pairs)")


def load_svhn_factors(prepared_dir: Path, split: str, manifest: dict, count: int, verify: bool = True) -> np.ndarray | None:
    """The split's street-digit factors (count, K) float32 when the manifest records them, else None (checked:
    sha256, shape, dtype, finite)."""
    record = svhn_factor_record(manifest)
    if record is None:
        return None
    name = record.get("files", {}).get(split)
    if name is None:
        raise DataError(prepared_dir / MANIFEST, f"records street-digit factors but no file for split {split!r}")
    factors = load_checked(prepared_dir, name, manifest, verify)
    k = len(record.get("names", []))
    if factors.dtype != np.float32 or factors.shape != (count, k) or len(record.get("discrete", [])) != k:
        raise DataError(prepared_dir / name, f"expected ({count}, {k}) float32 (one row per SVHN image, one column per "
                                             f"factor named in the manifest), got {factors.shape} {factors.dtype}")
    if not np.isfinite(factors).all():
        raise DataError(prepared_dir / name, "holds non-finite values")
    return factors


class MnistSvhnPairs:
    """Batch source over prepared MNIST–SVHN pairs; `gather` indexes, `.to("cuda")` makes it GPU-resident."""

    def __init__(self, mnist: Tensor, svhn: Tensor, pairs: Tensor, y: Tensor, provenance: dict, split: str,
                 svhn_factors: Tensor | None = None, factors_in_meta: bool = False):
        self.mnist, self.svhn, self.pairs, self.y = mnist, svhn, pairs, y
        self.split = split
        self._provenance = provenance
        self.svhn_factors = svhn_factors  # (M, K) float32 per SVHN image, or None
        self.factors_in_meta = factors_in_meta

    @classmethod
    def load(cls, prepared_dir: str | Path, split: str = "train", verify: bool = True) -> "MnistSvhnPairs":
        """Load one split of a prepared directory; `verify=False` skips only the sha256 pass."""
        prepared_dir = Path(prepared_dir)
        manifest = read_manifest(prepared_dir)
        if split not in manifest.get("splits", {}):
            raise DataError(prepared_dir / MANIFEST, f"has no split {split!r} (has {sorted(manifest.get('splits', {}))})")
        names = manifest["splits"][split]["files"]
        arrays = {role: load_checked(prepared_dir, name, manifest, verify) for role, name in names.items()}
        check_arrays(arrays, names, prepared_dir)
        y = arrays["mnist_labels"][arrays["pairs"][:, 0]]
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        factors = load_svhn_factors(prepared_dir, split, manifest, len(arrays["svhn_labels"]), verify)
        return cls(tensors["mnist_images"], tensors["svhn_images"], tensors["pairs"], torch.from_numpy(y), manifest, split,
                   None if factors is None else torch.from_numpy(factors))

    def __len__(self) -> int:
        """Number of pairs."""
        return self.pairs.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the arrays live."""
        return self.pairs.device

    @property
    def provenance(self) -> dict:
        """The manifest: SVHN source (real/synthetic) and why, dm, seed, raw checksums, file sha256s."""
        return copy.deepcopy(self._provenance)

    @property
    def svhn_factor_names(self) -> tuple[str, ...]:
        """Columns of `svhn_factors` (empty when the folder records none)."""
        record = svhn_factor_record(self._provenance)
        return tuple(record["names"]) if record is not None and self.svhn_factors is not None else ()

    @property
    def svhn_factor_discrete(self) -> tuple[bool, ...]:
        """Which columns of `svhn_factors` are discrete."""
        record = svhn_factor_record(self._provenance)
        return tuple(bool(d) for d in record["discrete"]) if record is not None and self.svhn_factors is not None else ()

    def with_factors(self) -> "MnistSvhnPairs":
        """This source (the same tensors, no copy) with batches that carry the style factors in `meta`."""
        return MnistSvhnPairs(self.mnist, self.svhn, self.pairs, self.y, self._provenance, self.split,
                              self.svhn_factors, factors_in_meta=True)

    def _meta(self, mnist_images: Tensor, svhn_index: Tensor) -> dict[str, Tensor]:
        """The factors of a batch: measured MNIST style, and the SVHN factors where recorded."""
        from mmvae.data.mnist_style import measure_style

        meta = {"mnist_factors": torch.from_numpy(measure_style(mnist_images.cpu().numpy())).to(mnist_images.device)}
        if self.svhn_factors is not None:
            meta["svhn_factors"] = self.svhn_factors.index_select(0, svhn_index)
        return meta

    def gather(self, index: Tensor) -> Batch:
        """The batch for pair indices `index` (LongTensor (B,) on this source's device)."""
        if self.device.type == "cpu":
            return self._gather_cpu(index)
        pair = self.pairs.index_select(0, index)
        present = torch.ones(pair.shape[0], dtype=torch.bool, device=pair.device)
        batch = {
            "x": {"mnist": self.mnist.index_select(0, pair[:, 0]), "svhn": self.svhn.index_select(0, pair[:, 1])},
            "present": {"mnist": present, "svhn": present.clone()},
            "y": self.y.index_select(0, index),
        }
        if self.factors_in_meta:
            batch["meta"] = self._meta(batch["x"]["mnist"], pair[:, 1])
        return batch

    def _gather_cpu(self, index: Tensor) -> Batch:
        """CPU gather with numpy's take: single-threaded row copies, several times faster than torch's
        multi-threaded indexing for batch-sized copies (which stalls when the cores are busy)."""
        i = index.numpy()
        pair = self.pairs.numpy().take(i, axis=0)
        present = torch.ones(len(i), dtype=torch.bool)
        batch = {
            "x": {
                "mnist": torch.from_numpy(self.mnist.numpy().take(pair[:, 0], axis=0)),
                "svhn": torch.from_numpy(self.svhn.numpy().take(pair[:, 1], axis=0)),
            },
            "present": {"mnist": present, "svhn": present.clone()},
            "y": torch.from_numpy(self.y.numpy().take(i)),
        }
        if self.factors_in_meta:
            batch["meta"] = self._meta(batch["x"]["mnist"], torch.from_numpy(pair[:, 1]))
        return batch

    def to(self, device: torch.device | str) -> "MnistSvhnPairs":
        """A source whose arrays live on `device` (self when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        move = lambda t: t.to(device)  # noqa: E731
        factors = None if self.svhn_factors is None else move(self.svhn_factors)
        return MnistSvhnPairs(move(self.mnist), move(self.svhn), move(self.pairs), move(self.y), self._provenance, self.split,
                              factors, self.factors_in_meta)


class MnistSvhnDataset(Dataset):
    """DataLoader view of a CPU `MnistSvhnPairs`: `__getitems__` builds whole batches by indexing.

    Use with `collate_fn=collate_pairs` (any sampler, including DistributedSampler).
    """

    def __init__(self, pairs: MnistSvhnPairs):
        if pairs.device.type != "cpu":
            raise ValueError(f"MnistSvhnDataset serves DataLoader workers from CPU arrays, got {pairs.device}")
        self.pairs = pairs

    @classmethod
    def load(cls, prepared_dir: str | Path, split: str = "train", verify: bool = True) -> "MnistSvhnDataset":
        """Load one split of a prepared directory."""
        return cls(MnistSvhnPairs.load(prepared_dir, split, verify))

    def __len__(self) -> int:
        """Number of pairs."""
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        """One pair as an unbatched sample dict."""
        return sample_at(self.pairs.gather(torch.tensor([i])), 0)

    def __getitems__(self, indices: list[int]) -> Batch:
        """A whole batch for a list of indices (the DataLoader's fast path)."""
        return self.pairs.gather(torch.as_tensor(indices, dtype=torch.int64))


def collate_pairs(data: Batch | list[dict]) -> Batch:
    """Collate for MnistSvhnDataset: passes a `__getitems__` batch through, stacks a list of samples."""
    if isinstance(data, dict):
        return data
    return stack_samples(data)
