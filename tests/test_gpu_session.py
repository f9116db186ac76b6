"""scripts/gpu_session.sh, the one command a GPU lease runs (issue 16): it parses, refuses an unknown mode, and its
stages write where they say. The whole script ran on the CPU at toy sizes (DEVICE=cpu SMOKE=1) before it was
committed; that run takes minutes, so only its cheap stage runs here."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_session.sh"


def test_the_script_parses_and_refuses_an_unknown_mode(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    proc = subprocess.run(["bash", str(SCRIPT), "rnu"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown mode 'rnu'" in proc.stderr


def test_usual_mistakes_are_one_line_errors_before_anything_is_written(tmp_path):
    import sys

    import pytest
    import torch

    base = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "run"], capture_output=True, text=True,
                          env={**base, "STAGES": "env bnech", "DEVICE": "cpu"})
    assert proc.returncode == 2 and "unknown stage 'bnech'" in proc.stderr
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = subprocess.run(["bash", str(SCRIPT), "run"], capture_output=True, text=True, env=base)  # DEVICE=cuda
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_env_stage_writes_its_log_under_out(tmp_path):
    import sys

    import torch

    env = {**os.environ, "OUT": str(tmp_path / "out"), "STAGES": "env", "DEVICE": "cpu", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "run"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "stage env" in log and torch.__version__ in log and "done in" in log
    assert "stage tests" not in log and "stage full" not in log  # only the stages asked for
