"""Robot vision-and-touch episodes in the format Lee et al. ("Making Sense of Vision and Touch", ICRA 2019) publish:
one HDF5 file per 50-step episode holding

    image                 (50, 128, 128, 3) uint8    RGB from a fixed camera
    depth_data            (50, 128, 128, 1) float32  depth along the camera axis, metres
    optical_flow          (50, 128, 128, 2) float32  flow from frame t to frame t+1, pixels (x: column, y: row)
    ee_forces_continuous  (50, 50, 6)       float    the 50 wrist force/torque readings of each control step
    contact               (50, 50)          binary   end-effector contact at each of those 50 sub-steps
    proprio               (50, 8)           float    [:3] end-effector position (metres), then more robot state
    action                (50, 4)           float    action[t]: the command executed during the step that ends at t

Other keys are allowed and ignored. `image`, `depth_data` and `optical_flow` must have exactly the dtypes above;
the other float keys may be float32 or float64; `contact` may be bool, an integer or a float type holding 0/1.

This module reads and validates episodes (every problem is named by file, key and step) and prepares a folder of
them for training (`prepare_index`): the episodes are split into train and test by episode, and small arrays are
written beside them:

    {split}_index.npy      (N, 2) int64   a sample per row: (episode number, step t), t in 0..48 (t+1 must exist)
    {split}_negatives.npy  (N, K) int64   per sample, K alignment negatives: rows of the same split from another
                                          episode whose end-effector position is >= min_distance away (-1: none)
    sensor_force.npy       (E, 50, 50, 6) float32  ee_forces_continuous of every used episode
    sensor_proprio.npy     (E, 50, 8)     float32
    sensor_action.npy      (E, 50, 4)     float32
    sensor_contact.npy     (E, 50, 50)    uint8
    manifest.json          written last: every episode file and array with its sha256, the split, the seed, the
                           episodes skipped (file, key, step, problem), and whether the data is a simulation

The sensor arrays are copies of the small keys so that training needs no HDF5 read for them; images, depth and
flow are read from the episodes when a batch is built (mmvae/data/robot.py). The same inputs and seed give
byte-identical arrays and manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data_prep.errors import DataError

FORMAT = "mmvae.robot/1"
MANIFEST = "manifest.json"
STEPS = 50  # control steps per episode
SUBSTEPS = 50  # force/torque and contact readings per control step
IMAGE_SIZE = 128
FORCE_WINDOW = 32  # the model uses the last 32 readings of a step
POSE_DIMS = 4  # proprio[:4]: the pose target (position and yaw)
MIN_DISTANCE = 0.06  # alignment negatives: end-effector positions at least this far apart (metres)
NEGATIVES_PER_SAMPLE = 8
ON_BAD = ("refuse", "skip")

FLOATS = ("float32", "float64")
CONTACT_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "float32", "float64")
# key -> (shape, allowed dtypes)
SPEC: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "image": ((STEPS, IMAGE_SIZE, IMAGE_SIZE, 3), ("uint8",)),
    "depth_data": ((STEPS, IMAGE_SIZE, IMAGE_SIZE, 1), ("float32",)),
    "optical_flow": ((STEPS, IMAGE_SIZE, IMAGE_SIZE, 2), ("float32",)),
    "ee_forces_continuous": ((STEPS, SUBSTEPS, 6), FLOATS),
    "contact": ((STEPS, SUBSTEPS), CONTACT_DTYPES),
    "proprio": ((STEPS, 8), FLOATS),
    "action": ((STEPS, 4), FLOATS),
}
KEYS = tuple(SPEC)
SENSOR_KEYS = ("ee_forces_continuous", "proprio", "action", "contact")  # copied into the prepared arrays
SENSOR_FILES = {"ee_forces_continuous": "sensor_force.npy", "proprio": "sensor_proprio.npy",
                "action": "sensor_action.npy", "contact": "sensor_contact.npy"}
SENSOR_DTYPES = {"ee_forces_continuous": np.float32, "proprio": np.float32, "action": np.float32, "contact": np.uint8}
# The image-sized keys are read per step; episodes written here store them in one chunk per step.
FRAME_KEYS = ("image", "depth_data", "optical_flow")

Log = Callable[[str], None]


@dataclass(frozen=True)
class Problem:
    """What is wrong with one episode: the file, the key (None: the file itself), the step (None: the whole key)."""

    file: str
    key: str | None
    step: int | None
    problem: str

    def where(self) -> str:
        parts = [] if self.key is None else [f"key {self.key!r}"]
        if self.step is not None:
            parts.append(f"step {self.step}")
        return ", ".join(parts)

    def error(self) -> DataError:
        where = self.where()
        return DataError(self.file, f"{where}: {self.problem}" if where else self.problem)


def sha256_file(path: Path) -> str:
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _first_bad_step(values: np.ndarray) -> tuple[int, int] | None:
    """(first step with a non-finite value, number of such steps), or None when every value is finite."""
    finite = np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
    if finite.all():
        return None
    bad = np.flatnonzero(~finite)
    return int(bad[0]), int(bad.size)


def check_episode(path: str | Path) -> Problem | None:
    """The first problem of one episode file (missing key, wrong shape or dtype, non-finite or non-binary rows),
    or None when it follows the format. Reads every key in full."""
    import h5py

    path = Path(path)
    name = str(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        return Problem(name, None, None, f"is not a readable HDF5 file ({e})")
    with f:
        for key, (shape, dtypes) in SPEC.items():
            if key not in f:
                return Problem(name, key, None, f"is missing (an episode has {', '.join(KEYS)})")
            ds = f[key]
            if not isinstance(ds, h5py.Dataset):
                return Problem(name, key, None, "is a group, expected a dataset")
            if tuple(ds.shape) != shape:
                return Problem(name, key, None, f"has shape {tuple(ds.shape)}, expected {shape}")
            if ds.dtype.name not in dtypes:
                want = dtypes[0] if len(dtypes) == 1 else " or ".join(dtypes)
                return Problem(name, key, None, f"has dtype {ds.dtype.name}, expected {want}")
            try:
                values = ds[()]
            except (OSError, ValueError) as e:
                return Problem(name, key, None, f"cannot be read ({e})")
            if values.dtype.kind == "f":
                bad = _first_bad_step(values)
                if bad is not None:
                    step, count = bad
                    return Problem(name, key, step, f"holds non-finite values ({count} step(s) of {shape[0]})")
            if key == "contact":
                binary = ((values == 0) | (values == 1)).all(axis=1)
                if not binary.all():
                    step = int(np.flatnonzero(~binary)[0])
                    return Problem(name, key, step, "holds values other than 0 and 1")
    return None


def read_episode(path: str | Path, keys: Iterable[str] = KEYS) -> dict[str, np.ndarray]:
    """The named keys of one episode, validated first (DataError naming file, key and step)."""
    problem = check_episode(path)
    if problem is not None:
        raise problem.error()
    import h5py

    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in keys}


def write_episode(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict | None = None,
                  compression: str | None = None) -> None:
    """Write one episode in exactly the format: the keys of SPEC (checked), any extra keys, attributes.

    The image-sized keys are stored in one chunk per step (a sample reads one chunk per key); no timestamps are
    stored, so the same arrays give the same bytes. `compression`: None, "lzf" or "gzip" (h5py's filters)."""
    import h5py

    for key, (shape, dtypes) in SPEC.items():
        a = arrays.get(key)
        if a is None:
            raise ValueError(f"write_episode: {key!r} is missing")
        if a.shape != shape or a.dtype.name not in dtypes:
            raise ValueError(f"write_episode: {key!r} is {a.shape} {a.dtype}, expected {shape} {dtypes[0]}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w", track_order=True) as f:
        for key, a in arrays.items():
            chunks = (1, *a.shape[1:]) if key in FRAME_KEYS else None
            f.create_dataset(key, data=a, chunks=chunks, compression=compression if chunks else None,
                             track_times=False)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    os.replace(tmp, path)


def find_episodes(episodes_dir: str | Path) -> list[Path]:
    """The episode files of a folder: *.h5 and *.hdf5, sorted by name."""
    d = Path(episodes_dir)
    if not d.is_dir():
        raise DataError(d, "is not a folder of episode files (*.h5)")
    files = sorted(p for p in d.iterdir() if p.suffix in (".h5", ".hdf5") and p.is_file())
    if not files:
        raise DataError(d, "holds no episode files (*.h5, *.hdf5)")
    return files


def scan_episodes(files: list[Path], on_bad: str = "refuse", log: Log | None = None
                  ) -> tuple[list[Path], list[Problem]]:
    """Validate every file: (the good files, the problems of the skipped ones). on_bad = "refuse" raises the first
    problem as a DataError naming file, key and step; "skip" leaves the episode out and counts it."""
    if on_bad not in ON_BAD:
        raise ValueError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
    good, skipped = [], []
    for path in files:
        problem = check_episode(path)
        if problem is None:
            good.append(path)
            continue
        if on_bad == "refuse":
            raise problem.error()
        skipped.append(problem)
        if log:
            log(f"skipped {problem.error()}")
    return good, skipped


def split_episodes(n: int, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Episode numbers per split (sorted), from a seeded permutation; at least one episode in each split."""
    if n < 2:
        raise ValueError(f"need at least 2 usable episodes for a train and a test split, got {n}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    order = np.random.default_rng([seed, 12, 0]).permutation(n)
    return {"train": np.sort(order[n_test:]).astype(np.int64), "test": np.sort(order[:n_test]).astype(np.int64)}


def sample_index(episodes: np.ndarray) -> np.ndarray:
    """(N, 2) int64 (episode, t) for t in 0..STEPS-2 of every episode: a sample needs step t+1."""
    t = np.arange(STEPS - 1, dtype=np.int64)
    return np.stack([np.repeat(episodes, t.size), np.tile(t, episodes.size)], axis=1).astype(np.int64)


def draw_negatives(ee_pos: np.ndarray, episode: np.ndarray, k: int, seed: int, min_distance: float = MIN_DISTANCE,
                   rounds: int = 64) -> np.ndarray:
    """(N, k) int64: for each sample, k rows from another episode whose end-effector position is at least
    `min_distance` away, drawn with a generator seeded by `seed` (rejection sampling, then an exhaustive draw for
    the rows still unfilled); -1 where no row qualifies."""
    n = ee_pos.shape[0]
    rng = np.random.default_rng([seed, 12, 1])
    out = np.full((n, k), -1, dtype=np.int64)
    for col in range(k):
        need = np.arange(n)
        for _ in range(rounds):
            if need.size == 0:
                break
            cand = rng.integers(0, n, size=need.size)
            ok = (episode[cand] != episode[need]) & (np.linalg.norm(ee_pos[cand] - ee_pos[need], axis=1) >= min_distance)
            out[need[ok], col] = cand[ok]
            need = need[~ok]
        for i in need:  # rare: search every row
            valid = np.flatnonzero((episode != episode[i]) & (np.linalg.norm(ee_pos - ee_pos[i], axis=1) >= min_distance))
            if valid.size:
                out[i, col] = valid[rng.integers(0, valid.size)]
    return out


def _save(out: Path, name: str, array: np.ndarray, files: dict) -> None:
    path = out / name
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)
    files[name] = {"sha256": sha256_file(path), "shape": list(array.shape), "dtype": array.dtype.name}


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


def prepare_index(episodes_dir: str | Path, out_dir: str | Path, seed: int = 0, test_fraction: float = 0.1,
                  on_bad: str = "refuse", negatives_per_sample: int = NEGATIVES_PER_SAMPLE,
                  min_distance: float = MIN_DISTANCE, simulation: bool = False, generator: dict | None = None,
                  log: Log | None = None) -> dict:
    """Validate a folder of episodes and write the index arrays, alignment negatives, sensor arrays and manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = find_episodes(episodes_dir)
    good, skipped = scan_episodes(files, on_bad, log)
    if not good:
        raise DataError(Path(episodes_dir), f"none of its {len(files)} episode files is usable "
                        f"(first problem: {skipped[0].error()})")
    sensors = {k: [] for k in SENSOR_KEYS}
    records = []
    import h5py

    for path in good:
        with h5py.File(path, "r") as f:
            for k in SENSOR_KEYS:
                sensors[k].append(np.asarray(f[k][()], dtype=SENSOR_DTYPES[k]))
        records.append({"file": _relative(path, out), "sha256": sha256_file(path), "bytes": path.stat().st_size})
    arrays = {k: np.stack(v) for k, v in sensors.items()}
    splits = split_episodes(len(good), test_fraction, seed)
    files_record: dict[str, dict] = {}
    split_record: dict[str, dict] = {}
    for split, eps in splits.items():
        index = sample_index(eps)
        ee = arrays["proprio"][index[:, 0], index[:, 1], :3].astype(np.float64)
        negatives = draw_negatives(ee, index[:, 0], negatives_per_sample, seed + (0 if split == "train" else 7919),
                                   min_distance)
        _save(out, f"{split}_index.npy", index, files_record)
        _save(out, f"{split}_negatives.npy", negatives, files_record)
        split_record[split] = {"episodes": int(eps.size), "samples": int(index.shape[0]),
                               "samples_without_negative": int((negatives < 0).all(axis=1).sum()),
                               "files": {"index": f"{split}_index.npy", "negatives": f"{split}_negatives.npy"}}
        for e in eps:
            records[int(e)]["split"] = split
    for k, name in SENSOR_FILES.items():
        _save(out, name, arrays[k], files_record)
    contact_steps = arrays["contact"].any(axis=2)
    manifest = {
        "format": FORMAT,
        "simulation": bool(simulation),
        "generator": generator,
        "seed": seed,
        "test_fraction": test_fraction,
        "on_bad": on_bad,
        "min_distance": min_distance,
        "negatives_per_sample": negatives_per_sample,
        "steps": STEPS, "substeps": SUBSTEPS, "image_size": IMAGE_SIZE,
        "counts": {"episodes_found": len(files), "episodes_used": len(good), "episodes_skipped": len(skipped)},
        "skipped": [asdict(p) for p in skipped],
        "contact_step_fraction": round(float(contact_steps.mean()), 4),
        "episodes": records,
        "splits": split_record,
        "sensor_files": dict(SENSOR_FILES),
        "files": files_record,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest


def read_manifest(prepared_dir: str | Path) -> dict:
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise DataError(path, "is missing: prepare the folder with `mmvae prepare robot-sim` or `mmvae prepare robot`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(path, f"is not readable JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise DataError(path, f"has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load_array(prepared_dir: Path, name: str, manifest: dict, verify: bool = True) -> np.ndarray:
    """One prepared .npy array, its sha256 checked against the manifest when `verify`."""
    path = Path(prepared_dir) / name
    record = manifest.get("files", {}).get(name)
    if record is None:
        raise DataError(Path(prepared_dir) / MANIFEST, f"lists no checksum for {name}")
    if not path.is_file():
        raise DataError(path, "is missing (listed in the manifest)")
    if verify and sha256_file(path) != record["sha256"]:
        raise DataError(path, f"sha256 mismatch: the manifest says {record['sha256']}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(path, f"is not a readable .npy array ({e})") from None


def episode_paths(prepared_dir: str | Path, manifest: dict, verify: str = "size") -> list[Path]:
    """The manifest's episode files (relative to the prepared folder or absolute), each checked: "size" (exists and
    has the recorded size), "sha256" (also its checksum) or "none"."""
    base = Path(prepared_dir)
    paths = []
    for rec in manifest["episodes"]:
        p = Path(rec["file"])
        p = p if p.is_absolute() else base / p
        if verify != "none":
            if not p.is_file():
                raise DataError(p, "is missing (listed in the manifest)")
            if p.stat().st_size != rec["bytes"]:
                raise DataError(p, f"has {p.stat().st_size} bytes, the manifest says {rec['bytes']}")
            if verify == "sha256" and sha256_file(p) != rec["sha256"]:
                raise DataError(p, f"sha256 mismatch: the manifest says {rec['sha256']}")
        paths.append(p)
    return paths
