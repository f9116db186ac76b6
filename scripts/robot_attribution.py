"""The robot attribution report (issue 12, item 5): which force time steps and image pixels the contact head and the
joint factor use (mmvae/robot_attribution.py).

  python scripts/robot_attribution.py RUN [--samples 32] [--ig-steps 32] [--seed 0] [--device cpu] [--out DIR]

Writes DIR/robot_attribution.json (per modality: share of the total |IG|, mean |IG| per part, top parts;
completeness) and DIR/robot_attribution.png (force: mean |IG| over the 32 readings; image: a heat map), for the
contact logit and for the joint factor. DIR defaults to RUN/attribution.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--ig-steps", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from mmvae.batch import batch_to
    from mmvae.data.registry import build_sources
    from mmvae.robot_attribution import robot_attribution_report
    from mmvae.robot_metrics import subset
    from mmvae.runs import load_run

    loaded = load_run(args.run, args.device)
    model = loaded.model.eval()
    _, test = build_sources(loaded.config)
    index = subset(test, args.samples, args.seed)
    device = next(model.parameters()).device
    batch = batch_to(test.gather(index.to(test.device)), device)
    report = robot_attribution_report(model, batch, args.ig_steps)
    report.update(run=str(args.run), step=loaded.step, indices=index.tolist())
    out = args.out or args.run / "attribution"
    out.mkdir(parents=True, exist_ok=True)
    (out / "robot_attribution.json").write_text(json.dumps(report, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [k for k in ("contact", "joint") if k in report]
    fig, axes = plt.subplots(len(targets), 2, figsize=(8, 3.2 * len(targets)), squeeze=False)
    for row, key in enumerate(targets):
        mods = report[key]["modalities"]
        if "force" in mods:
            axes[row, 0].bar(range(len(mods["force"]["mean_abs_per_part"])), mods["force"]["mean_abs_per_part"])
            axes[row, 0].set_title(f"{key}: force time steps (share {mods['force']['share']:.2f})", fontsize=9)
            axes[row, 0].set_xlabel("reading (0 = oldest, 31 = newest)", fontsize=8)
        if "image" in mods:
            axes[row, 1].imshow(torch.tensor(mods["image"]["mean_abs_per_part"]).numpy(), cmap="magma")
            axes[row, 1].set_title(f"{key}: image pixels (share {mods['image']['share']:.2f})", fontsize=9)
            axes[row, 1].axis("off")
    fig.tight_layout()
    fig.savefig(out / "robot_attribution.png", dpi=100)
    for key in targets:
        shares = ", ".join(f"{m} {v['share']:.2f}" for m, v in report[key]["modalities"].items())
        print(f"{key}: shares of |IG|: {shares}; completeness error {report[key]['completeness_relative_error']:.3f}")
    print(f"wrote {out / 'robot_attribution.json'} and {out / 'robot_attribution.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
