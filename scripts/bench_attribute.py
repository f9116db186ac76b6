"""Benchmark gradient attribution on the MNIST–SVHN model (issue 5 target: 256 samples, both modes, both modalities, ≤ 60 s on CPU).

    .venv/bin/python scripts/bench_attribute.py [--samples 256] [--repeats 3] [--extras] [--device cpu]

The model is built from configs/mnist_svhn.yaml when it exists (else the same settings inline) with random
weights, which is fine for timing; inputs are random uint8 images. Times `mmvae.interpret.attribute` with
respect to F_y for each mode alone and both together (one JVP pass gives both), median of --repeats after
one warm-up; --extras also times the private features, integrated gradients and the deletion test once.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from mmvae.config import ModelConfig, load_config  # noqa: E402
from mmvae.interpret import AttributionSettings, attribute  # noqa: E402
from mmvae.model import FactorizedMultimodalVAE  # noqa: E402

CONFIG = REPO / "configs" / "mnist_svhn.yaml"


def model_config() -> tuple[ModelConfig, str]:
    """The MNIST–SVHN model settings and where they came from."""
    if CONFIG.is_file():
        return load_config(CONFIG).model, str(CONFIG.relative_to(REPO))
    return ModelConfig(
        joint_dim=20,
        modalities={
            "mnist": {"kind": "image_mlp", "shape": [1, 28, 28], "hidden": [400], "private_dim": 8},
            "svhn": {"kind": "image_conv", "shape": [3, 32, 32], "hidden": [256], "private_dim": 8,
                     "options": {"channels": [32, 64, 128]}},
        },
    ), "inline ModelConfig (configs/mnist_svhn.yaml not found)"


def random_batch(n: int, device: torch.device, seed: int = 0) -> dict:
    """Random uint8 images for both modalities, all present, random labels."""
    g = torch.Generator().manual_seed(seed)
    x = {"mnist": torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
         "svhn": torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)}
    batch = {"x": x, "present": {m: torch.ones(n, dtype=torch.bool) for m in x},
             "y": torch.randint(0, 10, (n,), generator=g)}
    return {k: ({m: t.to(device) for m, t in v.items()} if isinstance(v, dict) else v.to(device)) for k, v in batch.items()}


def timed(model: FactorizedMultimodalVAE, batch: dict, settings: AttributionSettings, repeats: int) -> list[float]:
    """Wall times of `attribute` (after one untimed warm-up)."""
    attribute(model, batch, settings)
    times = []
    for _ in range(repeats):
        if batch["y"].is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        attribute(model, batch, settings)
        if batch["y"].is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extras", action="store_true", help="also time private features, IG and deletion (once each)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    cfg, source = model_config()
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = FactorizedMultimodalVAE(cfg).to(device).eval()
    batch = random_batch(args.samples, device)
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}")
    print(f"model: {source}; F_y = {cfg.joint_feature_dim}, F_m = "
          f"{', '.join(f'{m}: {mc.private_feature_dim}' for m, mc in cfg.modalities.items())}")

    base = dict(private=False, integrated_gradients=False, deletion=False)
    rows = []
    for label, modes in (("loss", ("loss",)), ("jacobian", ("jacobian",)), ("loss+jacobian (one pass)", ("loss", "jacobian"))):
        times = timed(model, batch, AttributionSettings(modes=modes, **base), args.repeats)
        rows.append((label, times))
        print(f"{args.samples} samples, F_y, {label:26s}: median {statistics.median(times):6.2f} s "
              f"(runs {', '.join(f'{t:.2f}' for t in times)})")
    total = sum(statistics.median(t) for label, t in rows[:2])
    print(f"both modes timed separately: {total:.2f} s; in one pass: {statistics.median(rows[2][1]):.2f} s (target <= 60 s)")

    if args.extras:
        for label, settings in (
            ("F_y + F_m, both modes", AttributionSettings(private=True, integrated_gradients=False, deletion=False)),
            ("full report pass (F_y, F_m, IG 32 steps, deletion)", AttributionSettings()),
        ):
            start = time.perf_counter()
            result = attribute(model, batch, settings)
            print(f"{args.samples} samples, {label}: {time.perf_counter() - start:.2f} s "
                  f"({', '.join(f'{k} {v:.1f} s' for k, v in result.seconds.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
