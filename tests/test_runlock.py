"""One writer per run folder, readers beside it never hurt it (issue 15). Real processes where it matters."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmvae.checkpoint import find_latest_checkpoint, load_checkpoint
from mmvae.config import config_to_yaml
from mmvae.runlock import LOCK_NAME, RunLock, RunLockError, check_not_held
from mmvae.runs import load_run
from mmvae.train import train
from tests.conftest import REPO, tiny_config

ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
# A writer that runs for several seconds and checkpoints at every step (keeping 2), so that saves, renames
# and pruning are under way nearly all the time.
LONG = ("train.epochs=40", "train.checkpoint_every=1", "train.keep_checkpoints=2", "train.eval_every=100000",
        "train.log_every=50")


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "mmvae.cli", *map(str, args)]


def _start_writer(config: Path, run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(_cli("train", config, "--run-dir", run, *extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)


def _run(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), capture_output=True, text=True, env=ENV, cwd=REPO, timeout=timeout)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the writer exited ({proc.returncode}) before {what}:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _lock_pid(run: Path) -> int | None:
    try:
        return json.loads((run / LOCK_NAME).read_text()).get("pid")
    except (OSError, ValueError):
        return None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture
def long_config(tmp_path) -> Path:
    path = tmp_path / "long.yaml"
    path.write_text(config_to_yaml(tiny_config(tmp_path, LONG)))
    return path


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_killed_writers_lock_is_taken_over(long_config, tmp_path):
    run = tmp_path / "run"
    # 2,000 epochs: the writer must still be alive for both refusals on a quiet machine too (the test kills it).
    endless = tmp_path / "endless.yaml"
    endless.write_text(config_to_yaml(tiny_config(tmp_path, (*LONG, "train.epochs=2000"))))
    writer = _start_writer(endless, run)
    try:
        _wait_for(lambda: _lock_pid(run) == writer.pid and find_latest_checkpoint(run, clean_leftovers=False),
                  writer, what="the writer's lock and first checkpoint")
        for extra in (["--resume"], []):  # with --resume it used to be accepted: two writers in one folder
            second = _run("train", endless, "--run-dir", run, *extra)
            assert second.returncode == 2, second.stderr[-2000:]
            last = _last_line(second.stderr)
            assert f"is being written by another training (pid {writer.pid} on host {socket.gethostname()}" in last
            assert "Traceback" not in second.stderr
        assert writer.poll() is None  # the refused writers did not disturb the live one
        os.kill(writer.pid, signal.SIGKILL)  # kill -9: no finally, no atexit; the kernel drops the flock
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert _lock_pid(run) == writer.pid  # the dead writer's lock file is still there ...
    last = load_checkpoint(find_latest_checkpoint(run, clean_leftovers=False)).step
    resumed = _run("train", endless, "--run-dir", run, "--resume", "--stop-at-step", last + 1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"taking over the stale lock of pid {writer.pid}" in resumed.stderr  # ... and is taken over
    assert not (run / LOCK_NAME).exists()  # a clean exit removes it
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert summary["steps"] == last + 1 and summary["fell_back_from"] == []  # kill -9 broke no checkpoint
    assert not [p.name for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]  # the writer cleaned up


@pytest.mark.slow
def test_readers_beside_a_live_writer_never_hurt_it(long_config, tmp_path):
    """evaluate/sample/load_run used to delete the writer's temporary checkpoint folders, killing its save."""
    run = tmp_path / "run"
    writer = _start_writer(long_config, run)
    decoy = run / "checkpoints" / "step_99999999.tmp-0123456789ab"  # stands in for a save in progress
    try:
        _wait_for(lambda: find_latest_checkpoint(run, clean_leftovers=False) is not None, writer,
                  what="the first checkpoint")
        decoy.mkdir()
        evaluate = subprocess.Popen(_cli("evaluate", run, "--iwae-samples", 0, "--out", tmp_path / "eval"),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
        reads, steps = 0, set()
        while writer.poll() is None and reads < 400:
            loaded = load_run(run)  # in-process reader, as fast as it can, while saves and prunes go on
            steps.add(loaded.step)
            reads += 1
        assert evaluate.wait(timeout=120) == 0, evaluate.stderr.read()[-3000:]
        assert writer.wait(timeout=120) == 0, writer.stderr.read()[-3000:]
    finally:
        for proc in (writer,):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert reads > 20 and len(steps) > 5  # the reads really overlapped many saves
    assert decoy.is_dir()  # readers clean nothing; only the writer may, under its lock
    final = find_latest_checkpoint(run, clean_leftovers=False)
    assert load_checkpoint(final).step == 320
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_a_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    with caplog.at_level(logging.WARNING, logger="mmvae.runlock"):
        summary = train(tiny_config(tmp_path, ("train.epochs=1",)), run)
    assert summary["finished"]
    assert f"taking over the stale lock of pid {dead.pid} on host {socket.gethostname()}" in caplog.text
    assert not (run / LOCK_NAME).exists()


def test_a_held_lock_refuses_a_writer_and_is_released_after_every_failure(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, ("train.epochs=1",))
    with RunLock(run) as held:
        assert held.held and _lock_pid(run) == os.getpid()
        with pytest.raises(RunLockError, match=f"is being written by another training \\(pid {os.getpid()}"):
            train(cfg, run)
        with pytest.raises(RunLockError):
            check_not_held(run)  # what `mmvae demo` asks before replacing a folder
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # the refused writer wrote nothing
    assert not run.exists()  # the lock made the folder, and removed it again, being the only thing in it
    train(cfg, run)
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(cfg, run)  # refused after taking the lock ...
    assert not (run / LOCK_NAME).exists()
    train(cfg, run, resume=True)  # ... which it released


def test_a_refused_start_leaves_no_half_made_run_folder(tmp_path):
    run = tmp_path / "fresh"
    with pytest.raises(Exception, match="no checkpoint"):
        train(tiny_config(tmp_path, ("train.epochs=1",)), run, resume=True)
    assert not run.exists()


def test_a_symlinked_lock_file_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "elsewhere").write_text("precious")
    (run / LOCK_NAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunLockError, match="is a symlink"):
        RunLock(run).acquire()
    assert (tmp_path / "elsewhere").read_text() == "precious"


@pytest.mark.slow
def test_under_ddp_rank_0_alone_takes_the_lock_and_both_ranks_hear_its_verdict(tmp_path):
    from tests.test_ddp import _torchrun_train

    config = tmp_path / "tiny.yaml"
    config.write_text(config_to_yaml(tiny_config(tmp_path, ("train.epochs=1", "train.batch_size=16"))))
    ok = _torchrun_train(config, tmp_path / "run")  # rank 1 taking it too would refuse itself
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunLock(tmp_path / "run"):
        refused = _torchrun_train(config, tmp_path / "run", "--resume", timeout_s=90)
    assert refused.returncode != 0
    assert refused.stderr.count("is being written by another training") >= 2, refused.stderr[-3000:]


def test_without_flock_the_pid_file_decides(tmp_path, monkeypatch, caplog):
    import mmvae.runlock as runlock

    monkeypatch.setattr(runlock, "fcntl", None)  # as on a file system without flock, or without fcntl
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": 0}))
    with pytest.raises(RunLockError, match=f"pid {os.getppid()} on host .*if that training is gone, remove"):
        RunLock(run).acquire()  # a live process on this host
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    with caplog.at_level(logging.WARNING, logger="mmvae.runlock"):
        with RunLock(run):
            assert _lock_pid(run) == os.getpid()
    assert "does not support flock" in caplog.text and f"stale lock of pid {dead.pid}" in caplog.text
    assert not (run / LOCK_NAME).exists()
