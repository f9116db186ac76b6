"""Run logging: a local JSONL file of every logged value, and wandb (offline by default). Rank 0 only."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmvae.config import ExperimentConfig


class Tracker:
    """Writes {step, time, values...} lines to metrics.jsonl and mirrors them to wandb when enabled."""

    def __init__(self, run_dir: Path, config: ExperimentConfig, enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._wandb_run = None
        if not enabled:
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


def _init_wandb(run_dir: Path, config: ExperimentConfig, mode: str):
    """Start wandb with its mode fixed up front, without consuming any RNG the training uses."""
    import wandb

    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        os.environ.setdefault("WANDB_SILENT", "true")
        return wandb.init(
            project=config.logging.wandb_project,
            name=config.name,
            dir=str(run_dir),
            mode=mode,
            config=config.model_dump(mode="json"),
            reinit="finish_previous",
        )
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def read_metrics(run_dir: Path) -> list[dict]:
    """All records of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
