"""The trainer: learning, save/load, exact resume in a fresh process, non-finite stops, run-folder safety."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from mmvae.checkpoint import CheckpointError, load_latest
from mmvae.config import config_to_yaml
from mmvae.runs import load_run
from mmvae.tracking import read_metrics
from mmvae.train import NonFiniteLossError, train
from tests.conftest import REPO, tiny_config


def _final_tensors(run_dir):
    ckpt = load_latest(run_dir)
    return ckpt.state["position"], {g: ckpt.tensors[g] for g in ("model", "optimizer")}


def _assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for group in a:
        assert a[group].keys() == b[group].keys()
        for name in a[group]:
            assert torch.equal(a[group][name], b[group][name]), f"{group}/{name} differs"


def test_tiny_model_loss_falls_and_every_term_is_logged(tmp_path):
    train(tiny_config(tmp_path, ("train.epochs=6",)), tmp_path / "run")
    records = [r for r in read_metrics(tmp_path / "run") if "loss/total" in r]
    assert records[-1]["loss/total"] < records[0]["loss/total"] - 50
    assert {"loss/recon/bars", "loss/kl/joint", "loss/kl/private/wave", "loss/label", "grad_norm", "lr"} <= set(records[-1])


def test_shipped_toy_config_learns_the_shared_class(tmp_path):
    from mmvae.config import load_config

    cfg = load_config(REPO / "configs/toy.yaml", ["train.epochs=4", "logging.wandb_mode=disabled", "logging.progress_bar=false"])
    summary = train(cfg, tmp_path / "run")
    assert summary["eval/label_accuracy"] > 0.6  # chance is 0.1; 0.84 measured after these 256 steps


def test_saved_run_loads_with_identical_outputs(tmp_path):
    cfg = tiny_config(tmp_path, ("train.epochs=1",))
    train(cfg, tmp_path / "run")
    ckpt = load_latest(tmp_path / "run")
    run = load_run(tmp_path / "run")
    from mmvae.data.toy import make_toy
    from mmvae.model import FactorizedMultimodalVAE

    reference = FactorizedMultimodalVAE(cfg.model)
    reference.load_state_dict(ckpt.tensors["model"])
    reference.eval()
    batch = make_toy(8, seed=9).gather(torch.arange(8))
    with torch.no_grad():
        a, b = reference(batch, sample=False), run.model(batch, sample=False)
    assert all(torch.equal(a.params[m], b.params[m]) for m in a.params)
    assert torch.equal(a.logits, b.logits) and run.step == ckpt.state["position"]["step"]


def _cli_train(config_path, run_dir, *extra):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "mmvae.cli", "train", str(config_path), "--run-dir", str(run_dir), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One reference run of the tiny config: 3 epochs of 8 steps, checkpoint every 8."""
    base = tmp_path_factory.mktemp("resume")
    config_path = base / "tiny.yaml"
    config_path.write_text(config_to_yaml(tiny_config(base)))
    train(tiny_config(base), base / "reference")
    return config_path, _final_tensors(base / "reference")


@pytest.mark.parametrize("stop_at", [1, 5, 8, 13], ids=["step1", "mid-epoch", "epoch-boundary", "mid-epoch-2"])
def test_resume_in_a_fresh_process_is_bitwise_identical(uninterrupted, tmp_path, stop_at):
    config_path, (ref_position, ref_tensors) = uninterrupted
    run_dir = tmp_path / "run"
    train(yaml_config(config_path), run_dir, stop_at_step=stop_at)
    assert load_latest(run_dir).state["position"]["step"] == stop_at
    _cli_train(config_path, run_dir, "--resume")  # a new Python process
    position, tensors = _final_tensors(run_dir)
    assert position == ref_position
    _assert_bitwise_equal(tensors, ref_tensors)
    # The log too: every line (training windows and evaluations) equals the uninterrupted run's.
    assert _log(run_dir) == _log(config_path.parent / "reference")


def _log(run_dir):
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(run_dir)]


def test_a_resume_after_kill_does_not_log_steps_twice(uninterrupted, tmp_path):
    import json

    config_path, _ = uninterrupted
    run_dir = tmp_path / "run"
    train(yaml_config(config_path), run_dir, stop_at_step=8)
    # What a kill -9 between a log line and the next checkpoint leaves: lines past the checkpoint's step.
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 12, "time": 0.0, "loss/total": 1.0}) + "\n")
    train(yaml_config(config_path), run_dir, resume=True)
    steps = [r["step"] for r in read_metrics(run_dir) if "loss/total" in r]
    assert len(steps) == len(set(steps)) and _log(run_dir) == _log(config_path.parent / "reference")


def test_extending_a_run_continues_at_the_final_learning_rate(tmp_path):
    cfg = tiny_config(tmp_path, ("train.max_steps=8", "train.log_every=1"))
    train(cfg, tmp_path / "run")
    before = [r["lr"] for r in read_metrics(tmp_path / "run") if "lr" in r]
    train(tiny_config(tmp_path, ("train.max_steps=12", "train.log_every=1")), tmp_path / "run", resume=True)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run") if "lr" in r]
    assert lrs[:8] == before and len(lrs) == 12
    final = cfg.train.lr * cfg.train.min_lr_ratio
    assert lrs[8:] == pytest.approx([final] * 4)  # the schedule was fixed at the start: it stays at its end
    # Negative control: a run of 12 steps from the start follows another schedule.
    train(tiny_config(tmp_path, ("train.max_steps=12", "train.log_every=1")), tmp_path / "long")
    assert [r["lr"] for r in read_metrics(tmp_path / "long") if "lr" in r][:8] != before


def test_negative_control_resume_without_rng_restore_differs(uninterrupted, tmp_path, monkeypatch):
    config_path, (_, ref_tensors) = uninterrupted
    run_dir = tmp_path / "run"
    train(yaml_config(config_path), run_dir, stop_at_step=5)
    monkeypatch.setattr("mmvae.train.restore_rng_state", lambda state: None)
    torch.manual_seed(12345)  # what a fresh process without the restore would effectively have
    train(yaml_config(config_path), run_dir, resume=True)
    _, tensors = _final_tensors(run_dir)
    with pytest.raises(AssertionError, match="differs"):
        _assert_bitwise_equal(tensors, ref_tensors)


def yaml_config(path):
    from mmvae.config import load_config

    return load_config(path)


def test_non_finite_loss_stops_naming_the_term_and_step(tmp_path, monkeypatch):
    import mmvae.train_step as train_module  # the step (and its loss call) lives here since the trainer split

    real = train_module.compute_loss

    def poisoned(model, out, batch, cfg, step, gather=None):
        result = real(model, out, batch, cfg, step, gather)
        if step == 2:  # the third optimiser step
            result.terms["recon/wave"] = result.terms["recon/wave"] * float("nan")
            result.total = result.total * float("nan")
        return result

    monkeypatch.setattr(train_module, "compute_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"'loss/recon/wave' at step 3 on rank 0"):
        train(tiny_config(tmp_path), tmp_path / "run")
    # The NaN step was never checkpointed: whatever exists is finite (load_latest verifies that).
    ckpt = load_latest(tmp_path / "run")
    assert ckpt is None or ckpt.state["position"]["step"] < 3


def test_existing_run_folder_is_not_overwritten_without_resume(tmp_path):
    cfg = tiny_config(tmp_path, ("train.epochs=1",))
    train(cfg, tmp_path / "run")
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(cfg, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


def test_resume_with_a_foreign_config_is_refused(tmp_path):
    train(tiny_config(tmp_path, ("train.epochs=1",)), tmp_path / "run")
    other = tiny_config(tmp_path, ("train.epochs=1", "model.joint_dim=6"))
    with pytest.raises(CheckpointError, match=r"different config.*model.joint_dim"):
        train(other, tmp_path / "run", resume=True)


def test_resume_may_extend_training(tmp_path):
    train(tiny_config(tmp_path, ("train.epochs=1",)), tmp_path / "run")
    summary = train(tiny_config(tmp_path, ("train.epochs=2",)), tmp_path / "run", resume=True)
    assert summary["steps"] == 16 and summary["steps_this_session"] == 8


def test_missing_modalities_train_without_error(tmp_path):
    summary = train(tiny_config(tmp_path, ("data.missing_prob=0.4", "train.epochs=1")), tmp_path / "run")
    assert summary["finished"]
