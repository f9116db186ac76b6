"""Open a finished (or interrupted, or still training) run folder: its config, weights and data.

Reading never modifies the run folder and takes no lock, so it is safe beside a live training: the newest
checkpoint that verifies and passes `mmvae.checkpoint_schema` is used; anything else is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmvae.checkpoint import check_state_dict_compatible
from mmvae.checkpoint_schema import load_valid_checkpoint
from mmvae.config import ExperimentConfig, load_config
from mmvae.families import build_model
from mmvae.families.base import MultimodalModel


@dataclass
class LoadedRun:
    run_dir: Path
    config: ExperimentConfig
    model: MultimodalModel
    step: int
    fell_back_from: list[str] = field(default_factory=list)  # newer checkpoints rejected ("path: reason")
    checkpoint: Path | None = None  # the folder the weights came from


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", on_corrupt: str = "fallback") -> LoadedRun:
    """Config from run_dir/config.yaml, weights from the newest valid checkpoint, model in eval mode.

    `on_corrupt="error"` refuses (CheckpointError) instead of falling back to an older checkpoint.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {config_path} is missing")
    config = load_config(config_path)
    model = build_model(config.model)
    # A reader: cleans nothing, takes no lock; older runs' weight names are upgraded by the validation.
    ckpt = load_valid_checkpoint(run_dir, model, on_corrupt=on_corrupt)
    check_state_dict_compatible(model.state_dict(), ckpt.tensors["model"], ckpt.path)
    model.load_state_dict(ckpt.tensors["model"])
    model.to(device).eval()
    return LoadedRun(run_dir, config, model, int(ckpt.state["position"]["step"]), ckpt.fell_back_from, ckpt.path)
