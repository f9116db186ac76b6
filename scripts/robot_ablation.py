"""Helpers of scripts/robot_ablation.sh (issue 12, item 5): ablation configs, evaluation with the robot metrics, the
table.

  python scripts/robot_ablation.py config CONFIG VARIANT OUT.yaml   write CONFIG without the variant's modalities
  python scripts/robot_ablation.py evaluate RUN [evaluate options]   `mmvae evaluate` (kept for the ablation script)
                                                                     into the vision_touch entry if it is not yet
  python scripts/robot_ablation.py table RUN...                      a markdown table of the runs' eval/metrics.json

Variants (the action stays as the heads' condition in every one):
  all          image, depth, force, proprio
  vision_only  image, depth
  force_only   force (no image: the flow head and its loss weights are dropped)
  no_proprio   image, depth, force
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import yaml

VARIANTS = {"all": ("image", "depth", "force", "proprio"), "vision_only": ("image", "depth"),
            "force_only": ("force",), "no_proprio": ("image", "depth", "force")}
# A key of eval/metrics.json, or a ratio "a / b" of two keys (the targets are ratios to the baselines).
COLUMNS = [("flow/epe", "flow EPE (px)"), ("flow/epe_zero_baseline", "zero-flow EPE"),
           ("flow/epe / flow/epe_zero_baseline", "EPE / zero-flow (target ≤ 0.5)"),
           ("contact/accuracy", "contact acc"), ("contact/balanced_accuracy", "contact bal. acc"),
           ("contact/f1", "contact F1"), ("contact/base_rate", "contact base rate"),
           ("alignment/accuracy", "alignment acc"), ("next_pose/mse", "next-pose MSE"),
           ("next_pose/mse_no_motion", "no-motion MSE"),
           ("next_pose/mse / next_pose/mse_no_motion", "MSE / no-motion (target ≤ 0.3)"), ("probe/contact/joint/balanced_accuracy", "probe contact (Z_y)"),
           ("probe/pose/joint/r2", "probe pose R² (Z_y)"), ("robot_aligned_samples", "aligned test rows"),
           ("step", "steps")]


def full_recon_weights(modalities: dict) -> dict[str, float]:
    """Each observed modality's reconstruction weight in the full model, made explicit. "auto" means (smallest
    modality's size) / (own size) over the modalities present, so dropping the small ones (proprio, force) would
    multiply the image and depth weights by up to 2,048 and change the budget between reconstruction and heads:
    every variant keeps the weights the full model has."""
    observed = {m: mc for m, mc in modalities.items() if mc.get("role") != "condition"}
    sizes = {m: math.prod(mc["shape"]) for m, mc in observed.items()}
    smallest = min(sizes.values())
    return {m: smallest / sizes[m] if mc.get("recon_weight", "auto") == "auto" else float(mc["recon_weight"])
            for m, mc in observed.items()}


def ablation_tree(tree: dict, variant: str) -> dict:
    """The config tree with only the variant's observed modalities (conditions kept); heads that read a removed
    modality's skips, and their loss weights, are dropped."""
    keep = set(VARIANTS[variant])
    model = tree["model"]
    weights_in_full = full_recon_weights(model["modalities"])
    mods = {m: ({**mc, "recon_weight": weights_in_full[m]} if m in weights_in_full else mc)
            for m, mc in model["modalities"].items() if mc.get("role") == "condition" or m in keep}
    heads, dropped_terms = {}, []
    for name, hc in (model.get("heads") or {}).items():
        source = (hc.get("options") or {}).get("source", "image") if hc["kind"] == "flow" else None
        if source is not None and source not in mods:
            dropped_terms += ["ssl/flow", "ssl/flow_mask"]
            continue
        reads = (hc.get("options") or {}).get("reads")
        if reads is not None:  # an alignment head reads only the modalities the variant keeps
            kept = [m for m in reads if m in mods]
            options = {**hc["options"], "reads": kept}
            if len(kept) < 2:  # nothing left to compare
                options.pop("compare_dim", None)
            hc = {**hc, "options": options}
        heads[name] = hc
    weights = {k: v for k, v in ((tree.get("loss") or {}).get("weights") or {}).items() if k not in dropped_terms}
    out = {**tree, "name": f"{tree.get('name', 'vision_touch')}_{variant}",
           "model": {**model, "modalities": mods, "heads": heads}}
    if "loss" in tree:
        out["loss"] = {**tree["loss"], "weights": weights}
    return out


def evaluate(args: list[str]) -> int:
    """`mmvae evaluate` itself (the vision_touch entry reports the robot metrics)."""
    from mmvae.cli import main

    return main(["evaluate", *args])


def column_value(metrics: dict, key: str) -> float | int | None:
    """metrics[key], or the ratio of two keys for "a / b" (None where either is missing or b is 0)."""
    if " / " not in key:
        return metrics.get(key)
    a, b = (metrics.get(k) for k in key.split(" / "))
    return None if a is None or not b else a / b


def table(runs: list[str]) -> str:
    rows = ["| variant | " + " | ".join(c for _, c in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for run in runs:
        metrics = json.loads((Path(run) / "eval" / "metrics.json").read_text())
        cells = []
        for key, _ in COLUMNS:
            v = column_value(metrics, key)
            cells.append("–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
        rows.append(f"| {Path(run).name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("config", "evaluate", "table"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "config":
        config, variant, out = argv[1:4]
        tree = yaml.safe_load(Path(config).read_text())
        Path(out).write_text(yaml.safe_dump(ablation_tree(tree, variant), sort_keys=False))
        return 0
    if argv[0] == "evaluate":
        return evaluate(argv[1:])
    missing = [r for r in argv[1:] if not (Path(r) / "eval" / "metrics.json").is_file()]
    if missing:
        print(f"robot_ablation: error: {missing[0]}: no eval/metrics.json (evaluate it first: mmvae evaluate "
              f"{missing[0]})", file=sys.stderr)
        return 2
    print(table(argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
