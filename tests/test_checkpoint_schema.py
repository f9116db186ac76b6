"""Checkpoints whose checksums are consistent but whose contents are wrong (issue 15).

Each case damages a real tiny run's checkpoint and recomputes the manifest, then resumes (the writer) and
loads it (the reader): the result is a CheckpointError naming the file and the problem, or a fallback
to the older verified checkpoint that the summary reports; never a traceback of another kind or a crash.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import torch

from mmvae import checkpoint as ck
from mmvae.checkpoint import CheckpointError, CheckpointSaveError, load_latest, save_checkpoint
from mmvae.runs import load_run
from mmvae.train import train
from tests.ckpt_tools import (
    copy_run,
    make_base_run,
    only_newest,
    renumber,
    rewrite_bytes,
    rewrite_group,
    rewrite_state,
    snapshot,
    step_folder,
)
from tests.conftest import REPO, tiny_config
from tests.ckpt_tools import BASE_OVERRIDES


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base_run(tmp_path_factory.mktemp("schema"))


@pytest.fixture
def run(base, tmp_path):
    return copy_run(base[1], tmp_path / "run")


def _cfg(tmp_path):
    return tiny_config(tmp_path, BASE_OVERRIDES)


def _set(path: str, value):
    def change(state):
        *parents, last = path.split(".")
        node = state
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    return change


def _drop(path: str):
    def change(state):
        *parents, last = path.split(".")
        node = state
        for p in parents:
            node = node[p]
        del node[last]
    return change


STATE_CASES = {
    "step_as_string": (_set("position.step", "16"), r"key 'position.step': Input should be a valid integer.*got '16'"),
    "negative_step": (_set("position.step", -3), r"key 'position.step': Input should be greater than or equal to 0"),
    "step_differs_from_manifest": (_set("position.step", 12), "position.step is 12 but the checkpoint is step 16"),
    "missing_world_size": (_drop("world_size"), "missing key 'world_size'"),
    "missing_position_epoch": (_drop("position.epoch"), "missing key 'position.epoch'"),
    "extra_top_level_key": (_set("bogus", 1), "unexpected key 'bogus'"),
    "empty_rng_list": (_set("rng", []), r"key 'rng': List should have at least 1 item"),
    "two_rng_states_for_one_rank": (lambda s: s["rng"].append(s["rng"][0]), "rng holds 2 state.s. for world_size 1"),
    "rng_torch_cpu_truncated": (lambda s: s["rng"][0].update(torch_cpu=s["rng"][0]["torch_cpu"][:400]),
                                "rng.0..torch_cpu holds 300 bytes"),
    "rng_python_state_short": (lambda s: s["rng"][0]["python"].update(state=s["rng"][0]["python"]["state"][:10]),
                               r"key 'rng.0.python.state': List should have at least 625 items"),
    "world_size_zero": (_set("world_size", 0), "key 'world_size': Input should be greater than or equal to 1"),
    "config_not_a_mapping": (_set("config", [1, 2]), "key 'config': Input should be a valid dictionary"),
    "param_group_lacks_lr": (lambda s: s["optimizer"]["param_groups"][0].pop("lr"), r"param_groups\[0\] lacks \['lr'\]"),
    "param_group_betas_a_string": (lambda s: s["optimizer"]["param_groups"][0].update(betas="0.9"),
                                   r"param_groups\[0\].betas is '0.9'"),
    "param_group_params_short": (lambda s: s["optimizer"]["param_groups"][0].update(params=[0, 1, 2]),
                                 r"param_groups\[0\].params is \[0, 1, 2\]"),
    "no_param_groups": (_set("optimizer.param_groups", []), "key 'optimizer.param_groups': List should have at least 1"),
    "batch_in_epoch_too_large": (_set("position.batch_in_epoch", 9), "batch_in_epoch 9 is not below the 8 steps"),
}


WRITER_ONLY = {"batch_in_epoch_too_large", "param_group_lacks_lr", "param_group_betas_a_string", "param_group_params_short"}


@pytest.mark.parametrize("case", sorted(STATE_CASES))
def test_state_json_with_wrong_contents_is_refused_naming_the_file(run, tmp_path, case):
    change, message = STATE_CASES[case]
    newest = only_newest(run)
    rewrite_state(newest, change)
    before = snapshot(run)
    with pytest.raises(CheckpointError, match=message) as info:
        train(_cfg(tmp_path), run, resume=True)
    assert str(newest / "state.json") in str(info.value)
    assert snapshot(run) == before  # refused before anything was written
    if case in WRITER_ONLY:  # a reader has no optimiser to compare groups with, nor the steps per epoch
        return
    with pytest.raises(CheckpointError, match=message):
        load_run(run)


def test_a_step_past_the_end_of_training_is_refused(run, tmp_path):
    newest = renumber(run, only_newest(run), step=40, epoch=5)
    with pytest.raises(CheckpointError, match=r"position.step 40 is past the end of training \(16 steps"):
        train(_cfg(tmp_path), run, resume=True)
    assert str(newest) in str(pytest.raises(CheckpointError, train, _cfg(tmp_path), run, resume=True).value)


def _drop_tensor(name):
    return lambda t: t.pop(name)


TENSOR_CASES = {
    "optimizer_missing_key": ("optimizer", _drop_tensor("3.exp_avg_sq"),
                              r"optimiser state of parameter 3: missing \['exp_avg_sq'\]"),
    "optimizer_renamed_key": ("optimizer", lambda t: t.update({"3.exp_avgx": t.pop("3.exp_avg")}),
                              r"parameter 3: missing \['exp_avg'\]; unexpected \['exp_avgx'\]"),
    "optimizer_foreign_index": ("optimizer", lambda t: t.update({"999.exp_avg": t["0.exp_avg"].clone()}),
                                "tensor '999.exp_avg' is for parameter 999; the model has 40"),
    "optimizer_garbage_key": ("optimizer", lambda t: t.update({"state": t["0.exp_avg"].clone()}),
                              "unexpected tensor 'state'"),
    "optimizer_wrong_dtype": ("optimizer", lambda t: t.update({"3.exp_avg": t["3.exp_avg"].double()}),
                              "tensor '3.exp_avg' is torch.float64, parameter 3 is torch.float32"),
    "optimizer_step_not_scalar": ("optimizer", lambda t: t.update({"2.step": torch.zeros(3)}),
                                  "tensor '2.step' must be a floating scalar"),
    "optimizer_step_beyond_position": ("optimizer", lambda t: t.update({"2.step": torch.tensor(1e6)}),
                                       "tensor '2.step' counts 1e.06 steps; the checkpoint is step 16"),
    "optimizer_nan_moment": ("optimizer", lambda t: t["1.exp_avg"].fill_(float("nan")), "non-finite"),
    "optimizer_negative_second_moment": ("optimizer", lambda t: t["1.exp_avg_sq"].fill_(-1.0), "negative values"),
    "model_missing_key": ("model", lambda t: t.pop(sorted(t)[0]), "missing keys"),
    "model_wrong_shape": ("model", lambda t: t.update({k: t[k][:1] for k in [sorted(t)[0]]}), "first mismatch"),
}


@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_tensors_with_wrong_contents_are_refused_naming_the_file(run, tmp_path, case):
    group, change, message = TENSOR_CASES[case]
    newest = only_newest(run)
    rewrite_group(newest, group, change)
    before = snapshot(run)
    with pytest.raises(CheckpointError, match=message) as info:
        train(_cfg(tmp_path), run, resume=True)
    assert str(newest / f"{group}.safetensors") in str(info.value)
    assert snapshot(run) == before
    with pytest.raises(CheckpointError, match=message):
        load_run(run)


def test_an_optimizer_tensor_of_the_wrong_shape_is_refused_not_a_segfault(base, tmp_path):
    """Before issue 15 this reached the fused AdamW kernel: SIGSEGV (exit 139). Hence a subprocess."""
    run = copy_run(base[1], tmp_path / "run")
    newest = only_newest(run)
    rewrite_group(newest, "optimizer", lambda t: t.update({"4.exp_avg": torch.zeros(1), "4.exp_avg_sq": torch.zeros(1)}))
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mmvae.cli", "train", str(base[0]), "train.epochs=3", "--run-dir", str(run), "--resume"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert str(newest / "optimizer.safetensors") in last
    assert "tensor '4.exp_avg' has shape (1,), parameter 4 has (32, 256)" in last and "Traceback" not in proc.stderr


def test_a_corrupt_newest_checkpoint_falls_back_and_says_so(run, tmp_path):
    rewrite_state(step_folder(run, 16), _set("position.step", "16"))
    summary = train(_cfg(tmp_path), run, resume=True)
    assert summary["steps"] == 16 and summary["steps_this_session"] == 8  # redone from step 8
    assert len(summary["fell_back_from"]) == 1 and "step_00000016/state.json: key 'position.step'" in summary["fell_back_from"][0]
    assert json.loads((run / "summary.json").read_text())["fell_back_from"] == summary["fell_back_from"]


def test_on_corrupt_error_refuses_instead_of_falling_back(run, tmp_path):
    rewrite_state(step_folder(run, 16), _set("position.step", "16"))
    with pytest.raises(CheckpointError, match=r"step_00000016/state.json: key 'position.step'.*--on-corrupt=error"):
        train(_cfg(tmp_path), run, resume=True, on_corrupt="error")
    with pytest.raises(CheckpointError, match="--on-corrupt=error"):
        load_run(run, on_corrupt="error")
    loaded = load_run(run)
    assert loaded.step == 8 and loaded.checkpoint == step_folder(run, 8) and len(loaded.fell_back_from) == 1


def test_the_final_error_names_the_newest_file_and_problem_not_just_no_checkpoint(run):
    for step in (8, 16):
        rewrite = step_folder(run, step) / "model.safetensors"
        data = bytearray(rewrite.read_bytes())
        data[-5] ^= 0xFF
        rewrite.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_run(run)
    message = str(info.value)
    assert "no checkpoint to load" not in message
    assert f"the newest: {step_folder(run, 16) / 'model.safetensors'}: sha256 mismatch" in message
    assert "1 older one(s) rejected too" in message


def test_a_latest_that_is_a_folder_is_refused_before_training(run, tmp_path):
    (run / "checkpoints" / "latest").unlink()
    (run / "checkpoints" / "latest").mkdir()
    before = snapshot(run)
    with pytest.raises(CheckpointError, match="checkpoints/latest is a folder, not the pointer file"):
        train(_cfg(tmp_path), run, resume=True)
    assert snapshot(run) == before
    with pytest.raises(CheckpointError, match="is a folder"):  # and the save itself never crashes on it
        save_checkpoint(run, 99, {"model": {"w": torch.zeros(1)}}, {})
    assert load_run(run).step == 16  # readers use the step folders


@pytest.mark.parametrize("what", ["checkpoints", "config.yaml", "step_folder", "metrics.jsonl"])
def test_symlinks_leading_outside_the_run_folder_are_refused(run, tmp_path, what):
    outside = tmp_path / "outside"
    outside.mkdir()
    if what == "checkpoints":
        (run / "checkpoints").rename(outside / "checkpoints")
        (run / "checkpoints").symlink_to(outside / "checkpoints")
        link = run / "checkpoints"
    elif what == "step_folder":
        step_folder(run, 16).rename(outside / "step_00000016")
        step_folder(run, 16).symlink_to(outside / "step_00000016")
        link = step_folder(run, 16)
    else:
        (outside / what).write_text("precious")
        (run / what).unlink()
        (run / what).symlink_to(outside / what)
        link = run / what
    before, before_outside = snapshot(run), snapshot(outside)
    with pytest.raises(CheckpointError, match=f"{link} is a symlink to .*outside the run folder"):
        train(_cfg(tmp_path), run, resume=True)
    assert snapshot(run) == before and snapshot(outside) == before_outside


def test_a_save_that_fails_on_the_file_system_names_it_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(3)}}, {"n": 1})
    real = ck._write_file

    def full(path, data):
        if path.name == "state.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(ck, "_write_file", full)
    with pytest.raises(CheckpointSaveError, match=r"step_00000002: could not save the checkpoint of step 2: no space "
                                                  r"left on the device holding .*checkpoints; the previous checkpoint "
                                                  r"is intact") as info:
        save_checkpoint(tmp_path, 2, {"model": {"w": torch.zeros(3)}}, {"n": 2})
    assert info.value.errno == errno.ENOSPC
    got = load_latest(tmp_path, clean_leftovers=False)
    assert got.step == 1 and torch.equal(got.tensors["model"]["w"], torch.ones(3))
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp-" in p.name]


def test_readers_clean_nothing(run):
    leftover = run / "checkpoints" / "step_00000017.tmp-abcdef012345"
    leftover.mkdir()
    old = run / "checkpoints" / "step_00000008.old-abcdef012345"
    old.mkdir()
    before = snapshot(run)
    assert load_run(run).step == 16
    assert snapshot(run) == before


def test_byte_flip_in_state_json_with_recomputed_manifest(run, tmp_path):
    newest = only_newest(run)
    rewrite_bytes(newest, "state.json", lambda b: b.replace(b'"world_size": 1', b'"world_size": "1"'))
    with pytest.raises(CheckpointError, match=r"key 'world_size': Input should be a valid integer"):
        train(_cfg(tmp_path), run, resume=True)


def test_the_command_line_warns_in_one_line_and_reports_the_fallback(base, run, tmp_path, capsys):
    from mmvae.cli import main

    rewrite_state(step_folder(run, 16), _set("rng", []))
    assert main(["evaluate", str(run), "--iwae-samples", "0", "--out", str(tmp_path / "eval")]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("mmvae evaluate: warning:")]
    assert len(warning) == 1 and "step_00000016/state.json: key 'rng'" in warning[0] and "(step 8)" in warning[0]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["step"] == 8 and "step_00000016/state.json" in metrics["fell_back_from"][0]

    assert main(["train", str(base[0]), "--run-dir", str(run), "--resume"]) == 0
    out, err = capsys.readouterr()
    assert "mmvae train: warning: the newest checkpoint was rejected" in err and "resumed from step 8" in err
    summary = json.loads(out[out.index("{"):])
    assert summary["steps_this_session"] == 8 and "step_00000016/state.json" in summary["fell_back_from"][0]
