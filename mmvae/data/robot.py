"""Robot vision and touch (Lee et al., ICRA 2019) over a prepared folder (`mmvae prepare robot-sim` or
`mmvae prepare robot`): a batch source. See docs/robot.md.

A sample is step t (0..48) of one episode (the rows of `{split}_index.npy`); its batch rows are

    x        image    (3, 128, 128) uint8    RGB at t
             depth    (1, 128, 128) float32  metres along the camera axis at t
             force    (6, 32)       float32  tanh(readings / force_scale) of the last 32 of the 50 wrist F/T
                                             readings of step t (channels first)        } from the pair source:
             proprio  (8,)          float32  robot state at t ([:3] end-effector xyz)     } the sample itself or
             action   (4,)          float32  action[t+1], the command that leads to t+1 (a condition modality)
    present  every modality, always True
    targets  contact_next (,)  float32  1 when any contact reading of step t+1 is 1
             pose_next    (4,) float32  proprio[t+1][:4], the next end-effector pose (xyz, yaw)
             pose_delta   (4,) float32  pose_next - proprio[t][:4] of the sample itself (yaw wrapped to (-pi, pi])
             flow         (2, 128, 128) float32  optical flow from frame t to t+1, pixels (x: columns, y: rows)
             flow_mask    (1, 128, 128) float32  1 where the flow is not 0 (Lee et al.: the moving pixels)
             aligned      (,)  float32  1: force and proprio are the sample's own; 0: an alignment negative
    meta     episode, step (the sample), pair_episode, pair_step (where force and proprio came from)

Alignment negatives (Lee et al.'s "are force and proprio from the same moment as the image?"): a row is a
negative with chance `negative_fraction`; its force and proprio then come from the pair source, which is
* negatives = "episode": one of the K prepared negatives of the sample (`{split}_negatives.npy`: another episode,
  end-effector >= min_distance away);
* negatives = "time_shift": the same episode at step t +- s, s in [shift_min, shift_max].
Which rows are negatives and which pair they get is a pure function of (seed, sample index) (a counter-based
hash, no RNG state): every DDP rank, every resume and every epoch sees the same negatives. Everything except
force and proprio (image, depth, action, every target) is the sample's own, so heads other than alignment
should weight their terms by targets["aligned"] if they must not learn from misaligned inputs.

Images, depth and flow are read from the episodes' HDF5 files when a batch is built: for uncompressed frames one
pread per step and key at the byte offsets HDF5 reports (taken once per episode), else through h5py; files are
opened per process, so DataLoader workers each open their own. The small sensor arrays are held in memory.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data_prep.errors import DataError
from data_prep.robot_episodes import (FORCE_WINDOW, IMAGE_SIZE, POSE_DIMS, SENSOR_FILES, STEPS, episode_paths,
                                      load_array, read_manifest)
from mmvae.batch import Batch
from mmvae.data.hashing import counter_hash, uniform

MODALITIES = ("image", "depth", "force", "proprio", "action")
CONDITIONS = ("action",)
SHAPES = {"image": (3, IMAGE_SIZE, IMAGE_SIZE), "depth": (1, IMAGE_SIZE, IMAGE_SIZE), "force": (6, FORCE_WINDOW),
          "proprio": (8,), "action": (4,)}
TARGETS = ("contact_next", "pose_next", "pose_delta", "flow", "flow_mask", "aligned")
NEGATIVE_MODES = ("episode", "time_shift")
FILE_CACHE = 256  # open episode files kept per process (their frame offsets are kept for every episode)

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def alignment_pairs(index: np.ndarray, samples: np.ndarray, negatives: np.ndarray, seed: int, fraction: float,
                    mode: str = "episode", shift: tuple[int, int] = (5, 20)) -> tuple[np.ndarray, np.ndarray]:
    """For sample indices `index` (B,): (aligned (B,) bool, pair (B, 2) int64 (episode, step) whose force and
    proprio the row gets). A pure function of (seed, index): no RNG state, the same on every rank and resume.

    samples: the split's (N, 2) (episode, step) rows; negatives: its (N, K) prepared negatives (-1: none)."""
    index = np.asarray(index, dtype=np.int64)
    own = samples[index]
    negative = uniform(seed, index, 0) < fraction
    pair = own.copy()
    if mode == "episode":
        k = negatives.shape[1]
        col = (counter_hash(seed, index, 1) % np.uint64(k)).astype(np.int64)
        j = negatives[index, col]
        negative &= j >= 0  # a sample without any valid negative stays aligned
        pair[negative] = samples[j[negative]]
    elif mode == "time_shift":
        lo, hi = shift
        s = lo + (counter_hash(seed, index, 2) % np.uint64(hi - lo + 1)).astype(np.int64)
        sign = np.where(uniform(seed, index, 3) < 0.5, -1, 1)
        t = own[:, 1] + sign * s
        t = np.where((t < 0) | (t > STEPS - 1), own[:, 1] - sign * s, t)
        ok = (t >= 0) & (t <= STEPS - 1)
        negative &= ok
        pair[negative, 1] = t[negative]
    else:
        raise ValueError(f"negatives must be one of {NEGATIVE_MODES}, got {mode!r}")
    return ~negative, pair


FRAME_KEYS = {"image": (np.dtype("uint8"), 3), "depth_data": (np.dtype("<f4"), 1), "optical_flow": (np.dtype("<f4"), 2)}


class _Episode:
    """Where one episode's frames are. Uncompressed frames (one chunk per step, as written here, or a contiguous
    dataset) are read with one pread per step and key at byte offsets taken once from HDF5; anything else
    (compressed, other chunking) through h5py."""

    def __init__(self, path: Path, offsets: dict[str, list[int]] | None = None):
        self.path = path
        self.h5 = None
        if offsets is not None:  # located before: no HDF5 open needed (h5py costs ~1 ms a file, pread microseconds)
            self.offsets = offsets
            self.fd = os.open(path, os.O_RDONLY)
            return
        import h5py

        self.offsets: dict[str, list[int]] = {}
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise DataError(path, f"cannot be opened as HDF5 ({e})") from None
        try:
            for key, (dtype, c) in FRAME_KEYS.items():
                ds = f[key]
                raw = ds.dtype == dtype and ds.compression is None and not ds.shuffle and ds.fletcher32 is False
                if raw and ds.chunks == (1, IMAGE_SIZE, IMAGE_SIZE, c):
                    self.offsets[key] = [ds.id.get_chunk_info_by_coord((t, 0, 0, 0)).byte_offset for t in range(STEPS)]
                elif raw and ds.chunks is None and ds.id.get_offset() is not None:
                    base, step = ds.id.get_offset(), IMAGE_SIZE * IMAGE_SIZE * c * dtype.itemsize
                    self.offsets[key] = [base + t * step for t in range(STEPS)]
        except (KeyError, OSError, ValueError) as e:
            f.close()
            raise DataError(path, f"cannot locate its frames ({e})") from None
        if len(self.offsets) == len(FRAME_KEYS):
            f.close()
        else:
            self.h5 = f
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, key: str, t: int, out: np.ndarray) -> None:
        offsets = self.offsets.get(key)
        if offsets is None:
            self.h5[key].read_direct(out, np.s_[t])
            return
        view = memoryview(out).cast("B")
        if os.preadv(self.fd, [view], offsets[t]) != view.nbytes:
            raise DataError(self.path, f"key {key!r}, step {t}: the file ends early")

    def close(self) -> None:
        os.close(self.fd)
        if self.h5 is not None:
            self.h5.close()


class _Files:
    """Episodes opened lazily, per process (a forked DataLoader worker opens its own), at most FILE_CACHE open at a
    time; the frame offsets of an uncompressed episode are kept after it closes, so reopening it is one os.open."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.pid = None
        self.open: dict[int, _Episode] = {}
        self.located: dict[int, dict[str, list[int]]] = {}  # episode -> offsets of every frame key

    def get(self, episode: int) -> _Episode:
        if self.pid != os.getpid():
            self.open, self.pid = {}, os.getpid()
        f = self.open.pop(episode, None)
        if f is None:
            if len(self.open) >= FILE_CACHE:
                self.open.pop(next(iter(self.open))).close()
            f = _Episode(self.paths[episode], self.located.get(episode))
            if f.h5 is None:
                self.located[episode] = f.offsets
        self.open[episode] = f  # most recently used last
        return f

    def __getstate__(self):
        return {"paths": self.paths, "pid": None, "open": {}, "located": self.located}


class RobotEpisodes:
    """Batch source over one split of a prepared robot folder (see the module docstring)."""

    def __init__(self, prepared_dir: str | Path, split: str = "train", seed: int = 0, negatives: str = "episode",
                 negative_fraction: float = 0.5, shift: tuple[int, int] = (5, 20), force_scale: float = 1.0,
                 verify: str = "size", device: torch.device | str = "cpu"):
        if negatives not in NEGATIVE_MODES:
            raise ValueError(f"negatives must be one of {NEGATIVE_MODES}, got {negatives!r}")
        if not 0 <= negative_fraction <= 1:
            raise ValueError(f"negative_fraction must lie in [0, 1], got {negative_fraction}")
        if not 1 <= shift[0] <= shift[1] <= STEPS // 2:
            raise ValueError(f"shift must satisfy 1 <= min <= max <= {STEPS // 2}, got {shift}")
        if not force_scale > 0:
            raise ValueError(f"force_scale must be > 0, got {force_scale}")
        d = Path(prepared_dir)
        manifest = read_manifest(d)
        if split not in manifest["splits"]:
            raise DataError(d / "manifest.json", f"has no split {split!r} (it has {sorted(manifest['splits'])})")
        files = manifest["splits"][split]["files"]
        self.samples = load_array(d, files["index"], manifest)
        self.negatives = load_array(d, files["negatives"], manifest)
        sensors = {k: load_array(d, name, manifest) for k, name in SENSOR_FILES.items()}
        n_ep = len(manifest["episodes"])
        expect = {"ee_forces_continuous": (n_ep, STEPS, 50, 6), "proprio": (n_ep, STEPS, 8), "action": (n_ep, STEPS, 4),
                  "contact": (n_ep, STEPS, 50)}
        for k, shape in expect.items():
            if sensors[k].shape != shape:
                raise DataError(d / SENSOR_FILES[k], f"has shape {sensors[k].shape}, expected {shape}")
        s = self.samples
        if s.ndim != 2 or s.shape[1] != 2 or s.dtype != np.int64 or (s.size and (s[:, 0].max() >= n_ep or s.min() < 0
                                                                                or s[:, 1].max() > STEPS - 2)):
            raise DataError(d / files["index"], f"is not an (N, 2) int64 index of episodes < {n_ep}, steps <= {STEPS - 2}")
        if self.negatives.shape[0] != s.shape[0] or (self.negatives.size and self.negatives.max() >= s.shape[0]):
            raise DataError(d / files["negatives"], f"does not match the {s.shape[0]} samples of {files['index']}")
        self.files = _Files(episode_paths(d, manifest, verify))
        force = sensors["ee_forces_continuous"][:, :, -FORCE_WINDOW:, :]
        self.force = torch.from_numpy(np.ascontiguousarray(np.tanh(force / force_scale).transpose(0, 1, 3, 2)))
        self.proprio = torch.from_numpy(sensors["proprio"])
        self.action = torch.from_numpy(sensors["action"])
        self.contact = torch.from_numpy(sensors["contact"].any(axis=2))
        # No class labels: y is -1 everywhere, so label-balanced subsets (evaluation, attribution) are seeded
        # random subsets found without gathering every sample's frames to look for labels.
        self.y = torch.full((int(self.samples.shape[0]),), -1, dtype=torch.long)
        self.split, self.seed, self.mode, self.fraction, self.shift = split, seed, negatives, negative_fraction, shift
        self._device = torch.device(device)
        self._provenance = {"dataset": "vision_touch", "simulation": bool(manifest["simulation"]),
                            "format": manifest["format"], "generator": manifest.get("generator"), "split": split,
                            "prepared_seed": manifest["seed"], "episodes": manifest["splits"][split]["episodes"],
                            "samples": int(s.shape[0]), "skipped_episodes": manifest["counts"]["episodes_skipped"],
                            "negatives": negatives, "negative_fraction": negative_fraction,
                            "min_distance": manifest["min_distance"], "force_scale": force_scale, "seed": seed}

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def provenance(self) -> dict:
        return copy.deepcopy(self._provenance)

    def to(self, device: torch.device | str) -> "RobotEpisodes":
        """The same source delivering its batches on `device` (frames are read on the CPU, then moved)."""
        device = torch.device(device)
        if device == self._device:
            return self
        other = copy.copy(self)
        other._device = device
        return other

    def read_frames(self, episodes: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """image (B, 128, 128, 3) uint8, depth (B, 128, 128, 1), flow (B, 128, 128, 2) of (episode, step) rows."""
        b = len(episodes)
        image = np.empty((b, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        depth = np.empty((b, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
        flow = np.empty((b, IMAGE_SIZE, IMAGE_SIZE, 2), np.float32)
        for row in np.argsort(episodes, kind="stable"):  # one file after another
            e, t = int(episodes[row]), int(steps[row])
            f = self.files.get(e)
            try:
                f.read("image", t, image[row])
                f.read("depth_data", t, depth[row])
                f.read("optical_flow", t, flow[row])
            except (OSError, KeyError, TypeError, ValueError) as exc:
                raise DataError(self.files.paths[e], f"step {t}: cannot read the frames ({exc})") from None
        return image, depth, flow

    def gather(self, index: Tensor) -> Batch:
        idx = index.detach().cpu().numpy().astype(np.int64)
        own = self.samples[idx]
        aligned, pair = alignment_pairs(idx, self.samples, self.negatives, self.seed, self.fraction, self.mode,
                                        self.shift)
        image, depth, flow = self.read_frames(own[:, 0], own[:, 1])
        e, t = torch.from_numpy(own[:, 0]), torch.from_numpy(own[:, 1])
        pe, pt = torch.from_numpy(pair[:, 0]), torch.from_numpy(pair[:, 1])
        flow_t = torch.from_numpy(flow).permute(0, 3, 1, 2).contiguous()
        pose = self.proprio[e, t, :POSE_DIMS]
        pose_next = self.proprio[e, t + 1, :POSE_DIMS]
        delta = pose_next - pose
        delta[:, 3] = torch.remainder(delta[:, 3] + torch.pi, 2 * torch.pi) - torch.pi
        n = idx.size
        batch: Batch = {
            "x": {"image": torch.from_numpy(image).permute(0, 3, 1, 2).contiguous(),
                  "depth": torch.from_numpy(depth).permute(0, 3, 1, 2).contiguous(),
                  "force": self.force[pe, pt],
                  "proprio": self.proprio[pe, pt],
                  "action": self.action[e, t + 1]},
            "present": {m: torch.ones(n, dtype=torch.bool) for m in MODALITIES},
            "targets": {"contact_next": self.contact[e, t + 1].float(),
                        "pose_next": pose_next,
                        "pose_delta": delta,
                        "flow": flow_t,
                        "flow_mask": (flow_t != 0).any(dim=1, keepdim=True).float(),
                        "aligned": torch.from_numpy(aligned.astype(np.float32))},
            "meta": {"episode": e, "step": t, "pair_episode": pe, "pair_step": pt},
        }
        if self._device.type != "cpu":
            from mmvae.batch import batch_to

            batch = batch_to(batch, self._device)
        return batch


def options_from_config(config) -> dict:
    """The source's options; fixed defaults until the data config has keys for them (see docs/robot.md)."""
    return {"negatives": "episode", "negative_fraction": 0.5, "force_scale": 1.0}


def build(config) -> tuple[RobotEpisodes, RobotEpisodes]:
    """(train, test) for a config: both splits with alignment negatives drawn from the config's seed."""
    path = config.data.path
    opts = options_from_config(config)
    train = RobotEpisodes(path, "train", seed=config.seed, **opts)
    test = RobotEpisodes(path, "test", seed=config.seed, **opts)
    return train, test


def facts(config) -> tuple[int | None, set[str] | None]:
    try:
        manifest = read_manifest(config.data.path)
        return int(manifest["splits"]["train"]["samples"]), set(MODALITIES)
    except Exception:  # noqa: BLE001 - unreadable data is the loader's to report (DataError)
        return None, set(MODALITIES)


def provenance_notes(prov: dict) -> list[str]:
    if prov.get("simulation", True):
        gen = prov.get("generator") or {}
        model = (gen.get("model") or {}).get("robot", "a simulated robot")
        return [f"Data: **SIMULATION** ({gen.get('name', 'simulator')} v{gen.get('version', '?')}, MuJoCo "
                f"{gen.get('mujoco', '?')}, {model}), written in Lee et al.'s episode format: these figures are not "
                "comparable with Lee et al.'s results on their real robot data."]
    return ["Data: episodes in Lee et al.'s format, not marked as a simulation."]
