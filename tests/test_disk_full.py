"""A full disk during training: one line saying what ran out and where, exit 2, and an exact resume (issue 15).

The real test trains into a 2 MiB tmpfs whose free space is cut down to 1.5 checkpoints, so the second save
hits ENOSPC; it needs `mount` (root) and skips cleanly where that is not allowed.
"""

from __future__ import annotations

import errno
import shutil
import subprocess

import pytest
import torch

from mmvae.checkpoint import find_latest_checkpoint, load_latest
from mmvae.cli import main
from tests.ckpt_tools import make_base_run
from tests.conftest import tiny_config


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:200]})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def test_a_full_disk_ends_in_one_line_and_the_run_resumes_exactly(small_tmpfs, tmp_path, capsys):
    config, reference = make_base_run(tmp_path / "ref")  # uninterrupted: checkpoints at 8 and 16
    size = sum(p.stat().st_size for p in (reference / "checkpoints" / "step_00000008").iterdir())
    free = shutil.disk_usage(small_tmpfs).free
    (small_tmpfs / "ballast").write_bytes(b"\0" * (free - int(1.5 * size)))  # room for one checkpoint, not two
    run = small_tmpfs / "run"

    code = main(["train", str(config), "--run-dir", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = _last_line(err)
    assert "step_00000016: could not save the checkpoint of step 16: no space left on the device holding" in last
    assert str(run / "checkpoints") in last and "the previous checkpoint is intact" in last and "--resume" in last
    assert find_latest_checkpoint(run, clean_leftovers=False).name == "step_00000008"
    assert not [p.name for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]  # the failed save cleaned up
    assert not (run / ".lock").exists()  # and the lock was released

    (small_tmpfs / "ballast").unlink()  # space freed: the run continues, bitwise as if never interrupted
    assert main(["train", str(config), "--run-dir", str(run), "--resume"]) == 0
    got, want = load_latest(run), load_latest(reference)
    assert got.step == want.step == 16
    for group in ("model", "optimizer"):
        assert got.tensors[group].keys() == want.tensors[group].keys()
        for k in want.tensors[group]:
            assert torch.equal(got.tensors[group][k], want.tensors[group][k]), f"{group}/{k} differs"


def test_a_full_disk_outside_the_checkpoints_is_one_line_too(tmp_path, monkeypatch, capsys):
    """ENOSPC from any other write of the run (here metrics.jsonl) names what ran out and the run folder."""
    import mmvae.tracking

    def full(self, step, values):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mmvae.tracking.Tracker, "log", full)
    cfg = tmp_path / "tiny.yaml"
    from mmvae.config import config_to_yaml

    cfg.write_text(config_to_yaml(tiny_config(tmp_path)))
    code = main(["train", str(cfg), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert _last_line(err) == (f"mmvae train: error: no space left on the device while writing {tmp_path / 'run'}; "
                               "free some space and rerun with --resume (the last checkpoint is intact)")


@pytest.mark.parametrize("error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory")])
def test_running_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys, error):
    import mmvae.train

    def oom(*args, **kwargs):
        raise error

    monkeypatch.setattr(mmvae.train, "train", oom)
    from mmvae.config import config_to_yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(config_to_yaml(tiny_config(tmp_path)))
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and _last_line(err).startswith("mmvae train: error: out of ")
    assert "memory" in _last_line(err)
