"""Run logging: a local JSONL file of every logged value, and wandb (offline by default). Rank 0 only.

wandb: offline runs live in RUN/wandb/offline-run-*; `wandb sync RUN/wandb/offline-run-*` uploads them later.
The wandb run id is kept in RUN/wandb_run_id, so a resumed training continues the same wandb run and
`mmvae evaluate` writes its figures into that run's summary.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import string
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmvae.config import ExperimentConfig


class Tracker:
    """Writes {step, time, values...} lines to metrics.jsonl and mirrors them to wandb when enabled."""

    def __init__(self, run_dir: Path | None, config: ExperimentConfig, enabled: bool = True):
        self.enabled = enabled and run_dir is not None
        self.path = run_dir / "metrics.jsonl" if run_dir is not None else None
        self._wandb_run = None
        if not self.enabled:
            return
        mode = config.logging.wandb_mode
        if mode != "disabled":
            self._wandb_run = _init_wandb(run_dir, config, mode)

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Append one record; tensors are converted to Python numbers."""
        if not self.enabled:
            return
        record = {"step": step, "time": time.time()}
        for k, v in values.items():
            record[k] = v.item() if isinstance(v, torch.Tensor) else v
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=step)

    def close(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None


WANDB_ID_FILE = "wandb_run_id"


def wandb_run_id(run_dir: Path, create: bool) -> str | None:
    """The run folder's wandb run id (made and saved on first use when `create`)."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip() or None
    if not create:
        return None
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))  # wandb's id format
    path.write_text(run_id + "\n")
    return run_id


def _init_wandb(run_dir: Path, config: ExperimentConfig, mode: str, create: bool = True):
    """Start (or continue) the run folder's wandb run, without consuming any RNG the training uses."""
    import wandb

    run_id = wandb_run_id(run_dir, create)
    if run_id is None:
        return None
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        os.environ.setdefault("WANDB_SILENT", "true")
        return wandb.init(
            project=config.logging.wandb_project,
            name=config.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            mode=mode,
            config=config.model_dump(mode="json"),
            reinit="finish_previous",
        )
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def write_summary(run_dir: Path, config: ExperimentConfig, values: dict[str, Any]) -> bool:
    """Put evaluation figures into the summary of the run folder's wandb run; False when it has none or wandb
    is disabled (by the config or WANDB_MODE=disabled)."""
    mode = os.environ.get("WANDB_MODE", config.logging.wandb_mode)
    if mode == "disabled" or config.logging.wandb_mode == "disabled":
        return False
    run = _init_wandb(Path(run_dir), config, mode, create=False)
    if run is None:
        return False
    numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for k, v in numbers.items():
        run.summary[k] = v
    run.finish()
    return True


def read_metrics(run_dir: Path) -> list[dict]:
    """All records of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
