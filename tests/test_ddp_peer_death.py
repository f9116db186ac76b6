"""A DDP peer killed mid-training: no hang, the run folder stays sound, and it resumes (issue 15 / docs/reliability.md).

Two gloo ranks under torchrun checkpoint at every step; rank 1 gets SIGKILL. torchrun must then stop rank 0
and exit non-zero in bounded time; the newest checkpoint must verify, rank 0's lock (left behind by a
process that was killed, not released) must be taken over, and `--resume` must continue from it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mmvae.checkpoint import find_latest_checkpoint, load_checkpoint
from mmvae.config import config_to_yaml
from mmvae.runlock import LOCK_NAME
from tests.conftest import REPO, tiny_config

OVERRIDES = ("train.epochs=40", "train.batch_size=16", "train.checkpoint_every=1", "train.keep_checkpoints=2",
             "train.eval_every=100000", "train.log_every=50", "train.dist_timeout_s=20")


def _torchrun(config: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=0",
            "-m", "mmvae.cli", "train", str(config), "--run-dir", str(run), *extra]


def _rank_process(agent: psutil.Process, rank: int) -> psutil.Process | None:
    for child in agent.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "mmvae.cli" in " ".join(child.cmdline()):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


@pytest.mark.slow
def test_a_killed_peer_stops_the_job_and_the_run_resumes(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(config_to_yaml(tiny_config(tmp_path, OVERRIDES)))
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(_torchrun(config, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while find_latest_checkpoint(run, clean_leftovers=False) is None or \
                load_checkpoint(find_latest_checkpoint(run, clean_leftovers=False)).step < 3:
            assert job.poll() is None, f"the job ended early ({job.returncode}):\n{job.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.1)
        rank1 = _rank_process(psutil.Process(job.pid), 1)
        assert rank1 is not None, "rank 1 not found among torchrun's children"
        rank1.send_signal(signal.SIGKILL)
        started = time.monotonic()
        code = job.wait(timeout=120)  # a hang would time out here
        assert code != 0 and time.monotonic() - started < 90
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    newest = find_latest_checkpoint(run, clean_leftovers=False)
    step = load_checkpoint(newest).step  # verifies: sizes, sha256, strict JSON
    resumed = subprocess.run(_torchrun(config, run, "--resume", "--stop-at-step", str(step + 2)), capture_output=True,
                             text=True, env=env, cwd=REPO, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(find_latest_checkpoint(run, clean_leftovers=False)).step == step + 2
    assert not (run / LOCK_NAME).exists()
