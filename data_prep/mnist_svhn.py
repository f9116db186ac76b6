"""Prepare MNIST–SVHN pairs: check the raw files, pick the SVHN source, pair, and write checked arrays.

The prepared directory holds, per split, `{split}_mnist_images.npy` (N, 1, 28, 28) uint8,
`{split}_mnist_labels.npy` (N,) int64, `{split}_svhn_images.npy` (M, 3, 32, 32) uint8,
`{split}_svhn_labels.npy` (M,) int64 and `{split}_pairs.npy` (P, 2) int64, plus `manifest.json`
(written last) with the protocol, the SVHN source used and why, the raw sources with their
checksums, pair counts, and the sha256 of every array file. No timestamps: the same inputs and
seed give byte-identical files, manifest included.

With the synthetic stand-in, `{split}_svhn_factors.npy` (M, K) float32 holds the style each street digit was
drawn with (data_prep.street_digits.FACTORS); `manifest.svhn.factors` names the columns, says which are
discrete and lists the files (`recorded: false` and no files for real SVHN, which records no style).
`add_svhn_factors` writes them into a folder prepared before they existed, after checking that the
generator reproduces its images byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data_prep import mnist, pairing, street_digits, svhn
from data_prep.errors import DataError

FORMAT = "mmvae.mnist_svhn/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "test")
SVHN_SOURCES = ("real", "synthetic", "auto")
SPLIT_STREAMS = {"train": 0, "test": 1}
ROLES = ("mnist_images", "mnist_labels", "svhn_images", "svhn_labels", "pairs")
FACTOR_ROLE = "svhn_factors"
REAL_SVHN_FACTORS = {"recorded": False, "reason": "real SVHN records no style factors"}

Log = Callable[[str], None]


def array_name(split: str, role: str) -> str:
    """File name of one prepared array."""
    return f"{split}_{role}.npy"


def default_svhn_dir(out_dir: Path) -> Path:
    """Where official SVHN files are looked for and downloaded to by default: `svhn_raw/` inside the output."""
    return Path(out_dir) / "svhn_raw"


def mnist_missing(raw_dir: Path) -> list[str]:
    """The MNIST IDX files absent from `raw_dir` (neither raw nor .gz)."""
    stems = [s for pair in mnist.MNIST_FILES.values() for s in pair]
    return [s for s in stems if not ((raw_dir / s).is_file() or (raw_dir / f"{s}.gz").is_file())]


def load_mnist(raw_dir: Path, download: bool, log: Log) -> dict[str, mnist.MnistSplit]:
    """Both MNIST splits from `raw_dir`, downloading them there first when absent and allowed."""
    missing = mnist_missing(raw_dir)
    if missing and not download:
        raise DataError(raw_dir, f"MNIST files missing: {', '.join(missing)} (downloading is disabled)")
    if missing:
        log(f"MNIST files missing in {raw_dir}: downloading them there")
        mnist.download_mnist(raw_dir)
    return {split: mnist.load_mnist_split(raw_dir, split) for split in SPLITS}


def svhn_sizes_or_default(sizes: dict[str, int] | None) -> dict[str, int]:
    """Generator sizes per split, SVHN's own by default; each must be >= 1."""
    sizes = dict(street_digits.SVHN_SIZES) if sizes is None else {**street_digits.SVHN_SIZES, **sizes}
    for split, n in sizes.items():
        if n < 1:
            raise ValueError(f"synthetic SVHN {split} size must be >= 1, got {n}")
    return sizes


def generate_svhn(seed: int, sizes: dict[str, int], workers: int, log: Log) -> tuple[dict, dict]:
    """The seeded street-digit stand-in for both splits, and its description for the manifest."""
    log(f"generating the synthetic SVHN stand-in: {sizes['train']:,} train + {sizes['test']:,} test digits")
    data = {}
    for split in SPLITS:
        images, labels, factors = street_digits.generate_street_digits(sizes[split], seed, split, workers=workers,
                                                                       return_factors=True)
        data[split] = svhn.SvhnSplit(images, labels, factors=factors)
    return data, street_digits.generator_info(seed, {s: sizes[s] for s in SPLITS})


def use_real_svhn(requested: str, reason: str, svhn_dir: Path) -> tuple[dict[str, svhn.SvhnSplit], dict]:
    """Both official SVHN splits from `svhn_dir` (md5-checked) and the manifest record saying so."""
    data = {split: svhn.load_svhn_split(svhn_dir, split) for split in SPLITS}
    files = {name: info for split in SPLITS for name, info in data[split].files.items()}
    record = {"requested": requested, "source": "real", "reason": reason, "dir": str(svhn_dir.resolve()), "files": files}
    return data, record


def resolve_svhn(
    source: str, svhn_dir: Path, seed: int, sizes: dict[str, int] | None, download: bool, workers: int, log: Log
) -> tuple[dict[str, svhn.SvhnSplit], dict]:
    """Load, download or generate SVHN as `source` asks; the record says which was used and why."""
    if source not in SVHN_SOURCES:
        raise ValueError(f"svhn source must be one of {SVHN_SOURCES}, got {source!r}")
    if source == "real" and sizes is not None:
        raise ValueError("synthetic sizes were given but --svhn real reads the official files; drop the sizes")
    if source != "synthetic" and svhn.svhn_present(svhn_dir):
        return use_real_svhn(source, f"official files found in {svhn_dir}", svhn_dir)
    if source == "real" and not download:
        raise DataError(svhn_dir, "official train_32x32.mat/test_32x32.mat not found and downloading is disabled")
    if source == "real":
        log(f"SVHN files missing in {svhn_dir}: downloading them there")
        svhn.download_svhn(svhn_dir)
        return use_real_svhn(source, f"downloaded into {svhn_dir}", svhn_dir)
    reason = "requested"
    if source == "auto" and not download:
        reason = f"no official files in {svhn_dir} and downloading is disabled"
    elif source == "auto":
        try:
            svhn.download_svhn(svhn_dir)
        except DataError as e:
            reason = f"no official files in {svhn_dir} and the download failed: {e}"
        else:
            return use_real_svhn(source, f"downloaded into {svhn_dir}", svhn_dir)
    data, generator = generate_svhn(seed, svhn_sizes_or_default(sizes), workers, log)
    return data, {"requested": source, "source": "synthetic", "reason": reason, "generator": generator}


def save_array(out_dir: Path, name: str, array: np.ndarray) -> dict:
    """Write one .npy atomically (temporary name, then rename) and describe it for the manifest."""
    path = out_dir / name
    tmp = out_dir / f".{name}.tmp"
    with tmp.open("wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"sha256": digest, "bytes": path.stat().st_size, "shape": list(array.shape), "dtype": str(array.dtype)}


def synthetic_factors_record(files: dict[str, str]) -> dict:
    """manifest.svhn.factors for the stand-in: column names, discrete flags, meanings and the file of each split."""
    return {"recorded": True, "generator": street_digits.GENERATOR_VERSION, **street_digits.factor_record(),
            "files": dict(files)}


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """Write manifest.json last and atomically."""
    tmp = out_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out_dir / MANIFEST)


def prepare(
    raw_dir: str | Path,
    svhn_source: str = "auto",
    dm: int = 30,
    seed: int = 0,
    out_dir: str | Path = "data/mnist_svhn",
    svhn_dir: str | Path | None = None,
    svhn_sizes: dict[str, int] | None = None,
    download: bool = True,
    workers: int = 1,
    log: Log = print,
) -> dict:
    """Prepare MNIST–SVHN pairs into `out_dir` and return the manifest written there."""
    if dm < 1:
        raise ValueError(f"dm must be >= 1, got {dm}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    svhn_dir = default_svhn_dir(out_dir) if svhn_dir is None else Path(svhn_dir)
    mnist_data = load_mnist(raw_dir, download, log)
    svhn_data, svhn_record = resolve_svhn(svhn_source, svhn_dir, seed, svhn_sizes, download, workers, log)
    log(f"SVHN source: {svhn_record['source']} ({svhn_record['reason']})")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the directory is not valid until the new manifest lands
    files, splits, factor_files = {}, {}, {}
    for split in SPLITS:
        m, s = mnist_data[split], svhn_data[split]
        pairs = pairing.pair_indices(m.labels, s.labels, dm, seed, SPLIT_STREAMS[split])
        arrays = {"mnist_images": m.images, "mnist_labels": m.labels, "svhn_images": s.images, "svhn_labels": s.labels, "pairs": pairs}
        names = {role: array_name(split, role) for role in ROLES}
        for role, array in arrays.items():
            files[names[role]] = save_array(out_dir, names[role], array)
        factor_name = array_name(split, FACTOR_ROLE)
        if s.factors is not None:
            files[factor_name] = save_array(out_dir, factor_name, s.factors)
            factor_files[split] = factor_name
        else:  # no stale factors of an earlier preparation beside images they do not describe
            (out_dir / factor_name).unlink(missing_ok=True)
        kept = pairing.kept_per_class(m.labels, s.labels)
        splits[split] = {"pairs": len(pairs), "kept_per_class": kept.tolist(), "mnist_images": len(m.labels), "svhn_images": len(s.labels), "files": names}
        log(f"{split}: {len(pairs):,} pairs from {int(kept.sum()):,} images per side (dm={dm})")
    manifest = {
        "format": FORMAT,
        "dataset": "mnist-svhn",
        "protocol": {"name": "Shi et al. 2019 MNIST-SVHN pairs", "dm": dm, "seed": seed, "max_per_class": pairing.MAX_PER_CLASS},
        "mnist": {"dir": str(raw_dir.resolve()), "files": {n: i for s in SPLITS for n, i in mnist_data[s].files.items()}},
        "svhn": {**svhn_record, "factors": synthetic_factors_record(factor_files) if factor_files else REAL_SVHN_FACTORS},
        "splits": splits,
        "files": files,
    }
    write_manifest(out_dir, manifest)
    log(f"wrote {out_dir / MANIFEST}")
    return manifest


def add_svhn_factors(out_dir: str | Path, workers: int = 1, log: Log = print) -> dict:
    """Write `{split}_svhn_factors.npy` into a synthetic-SVHN folder prepared before the generator recorded them.

    Regenerates the stand-in from the manifest's seed and sizes, checks that the images and labels are byte for
    byte the stored ones (else the factors would describe other images: other fonts or another generator),
    writes the factor files and rewrites the manifest with their record and checksums. No other file is touched.
    Returns the new manifest."""
    from mmvae.data.mnist_svhn import read_manifest  # the reader's check of the manifest (format, JSON)

    out_dir = Path(out_dir)
    path = out_dir / MANIFEST
    manifest = read_manifest(out_dir)
    record = manifest.get("svhn", {})
    if record.get("source") != "synthetic":
        raise DataError(path, f"records SVHN source {record.get('source')!r}: {REAL_SVHN_FACTORS['reason']}, "
                              "only the synthetic stand-in has factors")
    generator = record.get("generator", {})
    if generator.get("generator") != street_digits.GENERATOR_VERSION:
        raise DataError(path, f"was made by generator {generator.get('generator')!r}, this is "
                              f"{street_digits.GENERATOR_VERSION!r}: its images cannot be regenerated")
    fonts = [(f["file"], f["sha256"]) for f in street_digits.build_atlas().fonts]
    if [(f.get("file"), f.get("sha256")) for f in generator.get("fonts", [])] != fonts:
        raise DataError(path, "was made with other font files than this machine's: its images cannot be regenerated "
                              "here (prepare the folder again, or add the factors where it was prepared)")
    factor_files = {}
    for split in SPLITS:
        names = manifest["splits"][split]["files"]
        images, labels, factors = street_digits.generate_street_digits(
            int(generator["sizes"][split]), int(generator["seed"]), split, workers=workers, return_factors=True)
        for role, regenerated in (("svhn_images", images), ("svhn_labels", labels)):
            stored = np.load(out_dir / names[role], mmap_mode="r", allow_pickle=False)
            if stored.shape != regenerated.shape or not np.array_equal(stored, regenerated):
                raise DataError(out_dir / names[role], "differs from what the generator makes from the manifest's seed "
                                                       "and sizes: factors would not describe these images")
        name = array_name(split, FACTOR_ROLE)
        manifest["files"][name] = save_array(out_dir, name, factors)
        factor_files[split] = name
        log(f"{split}: {len(factors):,} street digits' factors checked against their images, written to {name}")
    manifest["svhn"]["factors"] = synthetic_factors_record(factor_files)
    write_manifest(out_dir, manifest)
    log(f"wrote {path}")
    return manifest
