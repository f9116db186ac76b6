"""Compare two run folders checkpoint by checkpoint: every model and optimiser tensor bitwise, the position,
RNG states and optimiser metadata exactly, and the logged metrics line by line.

    python scripts/compare_checkpoints.py RUN_A RUN_B

Model tensors are compared under the current parameter names (older runs' names are upgraded the way
`mmvae` upgrades them on load). Exit 0 when everything is identical, 1 otherwise (each difference printed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from mmvae.families.factorized import FactorizedMultimodalVAE

TIMING_KEYS = {"time", "wall_time", "seconds", "steps_per_s", "_timestamp", "_runtime"}


def _tensors(step_dir: Path, group: str) -> dict[str, torch.Tensor]:
    tensors = load_file(str(step_dir / f"{group}.safetensors"))
    return FactorizedMultimodalVAE.upgrade_state_dict(tensors) if group == "model" else tensors


def compare(a: Path, b: Path) -> list[str]:
    problems: list[str] = []
    steps_a = sorted(p.name for p in (a / "checkpoints").glob("step_*"))
    steps_b = sorted(p.name for p in (b / "checkpoints").glob("step_*"))
    if steps_a != steps_b:
        problems.append(f"checkpoint steps differ: {steps_a} vs {steps_b}")
    for step in sorted(set(steps_a) & set(steps_b)):
        da, db = a / "checkpoints" / step, b / "checkpoints" / step
        for group in ("model", "optimizer"):
            ta, tb = _tensors(da, group), _tensors(db, group)
            if set(ta) != set(tb):
                problems.append(f"{step}/{group}: tensor names differ: {sorted(set(ta) ^ set(tb))}")
            for k in sorted(set(ta) & set(tb)):
                if ta[k].dtype != tb[k].dtype or ta[k].shape != tb[k].shape or not torch.equal(ta[k], tb[k]):
                    problems.append(f"{step}/{group}/{k}: differs")
        sa, sb = (json.loads((d / "state.json").read_text()) for d in (da, db))
        for key in ("position", "rng", "optimizer", "world_size"):
            if sa[key] != sb[key]:
                problems.append(f"{step}/state.json: '{key}' differs")
    la = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    strip = lambda row: {k: v for k, v in row.items() if k not in TIMING_KEYS}  # noqa: E731
    if [strip(r) for r in la] != [strip(r) for r in lb]:
        problems.append(f"metrics.jsonl differs ({len(la)} vs {len(lb)} lines)")
    return problems


def main() -> int:
    a, b = Path(sys.argv[1]), Path(sys.argv[2])
    problems = compare(a, b)
    for p in problems:
        print(p)
    print(f"{a} vs {b}: {'IDENTICAL' if not problems else f'{len(problems)} difference(s)'}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
