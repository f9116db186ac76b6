"""The command line end to end, through the installed `mmvae` entry point, on tiny data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmvae.config import config_to_yaml
from tests.conftest import REPO, tiny_config

ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}


def mmvae(*args, cwd=REPO, ok=True):
    proc = subprocess.run([sys.executable, "-m", "mmvae.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)
    if ok:
        assert proc.returncode == 0, f"mmvae {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.parametrize("command", ["train", "evaluate", "sample", "demo", "prepare"])
def test_every_command_has_help(command):
    out = mmvae(command, "--help").stdout
    assert "usage: mmvae " + command in out


def test_train_evaluate_sample_end_to_end(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(config_to_yaml(tiny_config(tmp_path)))
    run = tmp_path / "run"
    summary = json.loads(mmvae_json(config, run))
    assert summary["steps"] == 8 and summary["finished"]
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()

    out = mmvae("evaluate", run, "--iwae-samples", 20, "--iwae-limit", 16).stdout
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert "label_accuracy/all" in metrics and "iwae_log_likelihood/K=20" in metrics
    assert "| label_accuracy/bars |" in out

    mmvae("sample", run, "--num", 16, "--nrow", 4)
    for name in ("prior_bars", "prior_wave", "recon_bars", "recon_wave"):
        png = run / "samples" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def mmvae_json(config: Path, run: Path) -> str:
    """Run `mmvae train` and return the JSON summary it prints last."""
    stdout = mmvae("train", config, "train.epochs=1", "--run-dir", run).stdout
    return stdout[stdout.index("{"):]


def test_bad_override_exits_2_naming_the_key(tmp_path):
    proc = mmvae("train", REPO / "configs/toy.yaml", "train.epochz=3", "--run-dir", tmp_path / "r", ok=False)
    assert proc.returncode == 2
    assert "unknown key 'train.epochz'" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_never_replaces_a_folder_it_did_not_make(tmp_path):
    precious = tmp_path / "my_run"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    proc = mmvae("demo", "--run-dir", precious, ok=False)
    assert proc.returncode == 2 and "was not made by `mmvae demo`" in proc.stderr
    assert (precious / "notes.txt").read_text() == "keep me"


def test_evaluating_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    proc = mmvae("evaluate", tmp_path, ok=False)
    assert proc.returncode == 2 and "is not a run folder" in proc.stderr
