"""Pictures of simulated robot episodes: RGB frames, depth and the exact optical flow (colour wheel: hue is the
direction, brightness the length; white where the flow is exactly 0), as small PNGs.

    python scripts/robot_pictures.py EPISODE.h5 [EPISODE.h5 ...] --steps 10 20 30 --out docs/images
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def flow_to_rgb(flow: np.ndarray, max_len: float | None = None) -> np.ndarray:
    """(H, W, 2) flow -> (H, W, 3) uint8: hue = direction, saturation = length / max_len; 0 flow is white."""
    from matplotlib.colors import hsv_to_rgb

    length = np.hypot(flow[..., 0], flow[..., 1])
    scale = max_len or max(float(length.max()), 1e-6)
    hue = (np.arctan2(-flow[..., 1], flow[..., 0]) / (2 * np.pi)) % 1.0  # up (negative rows) at 90 degrees
    hsv = np.stack([hue, np.clip(length / scale, 0, 1), np.ones_like(length)], axis=-1)
    return (hsv_to_rgb(hsv) * 255).astype(np.uint8)


def depth_to_rgb(depth: np.ndarray, near: float = 0.4, far: float = 1.6) -> np.ndarray:
    g = 1 - np.clip((depth - near) / (far - near), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=-1)


def strip(path: Path, steps: list[int], scale: int = 2) -> np.ndarray:
    """Rows per step: RGB | depth | flow, upscaled by `scale`, separated by white lines."""
    import h5py

    with h5py.File(path, "r") as f:
        rows = []
        for t in steps:
            flow = f["optical_flow"][t]
            tiles = [f["image"][t], depth_to_rgb(f["depth_data"][t][..., 0]), flow_to_rgb(flow)]
            tiles = [np.kron(x, np.ones((scale, scale, 1), np.uint8)) for x in tiles]
            sep = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
            rows.append(np.concatenate([tiles[0], sep, tiles[1], sep, tiles[2]], axis=1))
            rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def main(argv=None) -> int:
    from PIL import Image

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("episodes", nargs="+", type=Path)
    p.add_argument("--steps", nargs="+", type=int, default=[5, 20, 35])
    p.add_argument("--out", type=Path, default=Path("docs/images"))
    p.add_argument("--prefix", default="robot_")
    p.add_argument("--scale", type=int, default=2, help="upscaling of the 128 x 128 frames")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for ep in args.episodes:
        out = args.out / f"{args.prefix}{ep.stem}.png"
        Image.fromarray(strip(ep, args.steps, args.scale)).save(out, optimize=True)
        print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
