"""Open a finished (or interrupted) run folder: its config, weights and data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mmvae.checkpoint import CheckpointError, check_state_dict_compatible, load_latest
from mmvae.config import ExperimentConfig, load_config
from mmvae.families import build_model, model_class
from mmvae.families.base import MultimodalModel


@dataclass
class LoadedRun:
    run_dir: Path
    config: ExperimentConfig
    model: MultimodalModel
    step: int


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Config from run_dir/config.yaml, weights from the newest verified checkpoint, model in eval mode."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {config_path} is missing")
    config = load_config(config_path)
    ckpt = load_latest(run_dir)
    if ckpt is None:
        raise CheckpointError(f"{run_dir / 'checkpoints'}: no checkpoint to load")
    model = build_model(config.model)
    weights = model_class(config.model).upgrade_state_dict(ckpt.tensors["model"])  # older runs' names
    check_state_dict_compatible(model.state_dict(), weights, ckpt.path)
    model.load_state_dict(weights)
    model.to(device).eval()
    return LoadedRun(run_dir, config, model, int(ckpt.state["position"]["step"]))
