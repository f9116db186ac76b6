"""Shared fixtures: a tiny toy config that trains in about a second."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmvae.config import ExperimentConfig, apply_override, config_from_dict

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")


def tiny_tree(out_dir: Path | str = "runs") -> dict:
    """A two-modality toy experiment small enough for unit tests."""
    return {
        "name": "tiny",
        "seed": 3,
        "out_dir": str(out_dir),
        "data": {"name": "toy", "train_size": 512, "test_size": 128},
        "model": {
            "joint_dim": 4,
            "joint_feature_dim": 16,
            "fusion": "poe",
            "fusion_hidden": [32],
            "num_classes": 10,
            "label_hidden": [16],
            "modalities": {
                "bars": {"kind": "image_mlp", "shape": [1, 16, 16], "hidden": [32], "private_dim": 2,
                         "private_feature_dim": 8, "likelihood": "laplace", "likelihood_scale": 0.1},
                "wave": {"kind": "vector", "shape": [32], "hidden": [32], "private_dim": 2,
                         "private_feature_dim": 8, "likelihood": "gaussian", "likelihood_scale": 0.1},
            },
        },
        "train": {"epochs": 3, "batch_size": 64, "lr": 2e-3, "eval_every": 8, "checkpoint_every": 8,
                  "log_every": 4, "eval_batches": 2},
        "logging": {"wandb_mode": "disabled", "progress_bar": False},
    }


def tiny_config(out_dir: Path | str = "runs", overrides: tuple[str, ...] = ()) -> ExperimentConfig:
    tree = tiny_tree(out_dir)
    for o in overrides:
        apply_override(tree, o)
    return config_from_dict(tree)


@pytest.fixture
def tiny(tmp_path) -> ExperimentConfig:
    return tiny_config(tmp_path / "runs")
