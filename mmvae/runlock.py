"""One writer per run folder: an exclusive `flock` on `RUN/.lock`.

The training that writes a run folder (checkpoints, metrics, config, summary) holds an exclusive,
non-blocking `flock(2)` on `RUN/.lock` for as long as it runs, and writes its pid, host and start time
into that file so that a refused second writer can say who holds it. The kernel drops a `flock` when the
last file descriptor on it closes, so the lock ends with its process however that process ends (normal
exit, exception, SIGKILL, OOM kill); no cleanup is needed. A lock file whose text names a process but
whose `flock` is free is therefore stale (its process is gone): the next writer takes it over and says so.
A clean release removes the file, so a `.lock` left in a run folder means its writer was killed.

Readers (`mmvae evaluate`, `sample`, `swap`, `attribute`, `mmvae.runs.load_run`) never take the lock and
never modify the run folder, so they may run beside a live training.

Notes:
- The descriptor is opened close-on-exec, so programs the trainer starts (wandb's service) do not inherit
  the lock; forked children (DataLoader workers) do share it until they exit, which they do with the trainer.
- On file systems without `flock` (some network or FUSE mounts), and without `fcntl` (Windows), the lock falls
  back to the pid file alone: a live pid on this host, or any pid of another host, blocks (remove the file if
  that training is gone); a dead pid on this host is taken over. That fallback is weaker (two writers that
  start in the same instant can both pass) and is logged as a warning.
- Under DDP only rank 0 takes the lock (`Trainer` asks rank 0 and hands its verdict to every rank).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX (Windows): the pid-file fallback below
    fcntl = None

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_RETRIES = 5
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunLockError(RuntimeError):
    """The run folder is being written by another process, or its lock file cannot be used."""


def _holder_text(info: dict) -> str:
    """'pid 123 on host h, since 2025-01-01 12:00:00 UTC' from the lock file's JSON."""
    if not info:
        return "a process that left no details"
    parts = [f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"]
    started = info.get("started")
    if isinstance(started, (int, float)):
        parts.append(time.strftime("since %Y-%m-%d %H:%M:%S UTC", time.gmtime(started)))
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and not pid_alive(info["pid"]):
        parts.append("that process has exited but a child of it still holds the lock")
    return ", ".join(parts)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _read_info(fd: int) -> dict:
    """The JSON the previous or current holder wrote, or {} (empty, unreadable or not ours)."""
    try:
        raw = os.pread(fd, 4096, 0)
    except OSError:
        return {}
    if not raw.strip():
        return {}
    try:
        info = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"pid": "?", "host": "?", "note": "unreadable lock file"}
    return info if isinstance(info, dict) else {}


class RunLock:
    """Exclusive lock on a run folder. `acquire()` creates the folder if needed; `release()` is idempotent.

    `release()` removes the lock file, and the run folder too if `acquire()` created it and it is still
    empty: a refused or failed start leaves nothing behind.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._created_dir = False
        self.took_over: dict = {}  # the stale holder's details, when acquire() took over a dead writer's lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise RunLockError naming the holder. Returns None (safe to broadcast under DDP)."""
        if self._fd is not None:
            return
        existed = self.run_dir.exists() or self.run_dir.is_symlink()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise RunLockError(f"--run-dir {self.run_dir} exists and is not a folder") from None
        except OSError as exc:
            raise RunLockError(f"{self.run_dir}: cannot create the run folder ({exc.strerror})") from None
        if not self.run_dir.is_dir():
            raise RunLockError(f"--run-dir {self.run_dir} exists and is not a folder")
        self._created_dir = not existed
        for _ in range(_RETRIES):
            self.run_dir.mkdir(parents=True, exist_ok=True)  # a failed start beside us may have just removed it
            fd = self._open()
            try:
                if self._lock(fd):
                    break
            except BaseException:
                os.close(fd)
                self._cleanup_created_dir()
                raise
            os.close(fd)  # the file was replaced while we waited: lock the new one
        else:
            self._cleanup_created_dir()
            raise RunLockError(f"{self.path}: the lock file keeps being replaced; is another program removing it?")
        self._fd = fd
        previous = _read_info(fd)
        if previous:
            self.took_over = previous
            log.warning("%s: taking over the stale lock of %s (that training ended without releasing it)",
                        self.path, _holder_text(previous))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
            os.fsync(fd)
        except OSError as exc:
            self.release()
            raise RunLockError(f"{self.path}: cannot write the lock file ({exc.strerror})") from None
        try:  # the writer's entry point: refuse symlinks leading out of the run folder, a `latest` that is a folder
            from mmvae.checkpoint import check_writer_layout

            check_writer_layout(self.run_dir)
        except BaseException:
            self.release()
            raise

    def _open(self) -> int:
        try:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
            return os.open(self.path, flags, 0o644)
        except OSError as exc:
            self._cleanup_created_dir()
            if exc.errno == errno.ELOOP:
                raise RunLockError(f"{self.path} is a symlink; refusing to lock through it (remove it)") from None
            if exc.errno == errno.EISDIR:
                raise RunLockError(f"{self.path} is a folder, not a lock file (remove it)") from None
            raise RunLockError(f"{self.path}: cannot open the lock file ({exc.strerror})") from None

    def _lock(self, fd: int) -> bool:
        """flock fd; False if the path no longer names the locked file (retry), RunLockError if held."""
        if fcntl is None:
            return self._pid_file_fallback(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockError(
                f"{self.run_dir} is being written by another training ({_holder_text(_read_info(fd))}); "
                "one run folder has one writer: wait for it to finish or stop it (evaluate/sample may run alongside)"
            ) from None
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                raise RunLockError(f"{self.path}: cannot lock ({exc.strerror})") from None
            return self._pid_file_fallback(fd)
        try:  # a releasing holder may have unlinked the file after we opened it: then lock the new one
            same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return same

    def _pid_file_fallback(self, fd: int) -> bool:
        info = _read_info(fd)
        log.warning("%s: this file system does not support flock; relying on the pid in the lock file", self.path)
        pid, host = info.get("pid"), info.get("host")
        if isinstance(pid, int) and pid != os.getpid():
            if host != socket.gethostname() or pid_alive(pid):
                raise RunLockError(
                    f"{self.run_dir} is being written by another training ({_holder_text(info)}); if that training is "
                    f"gone, remove {self.path}"
                )
        return True

    def release(self) -> None:
        """Drop the lock and remove the lock file: a lock file that outlives its writer marks a killed training."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino:
                os.unlink(self.path)  # while still holding it; a waiting acquirer notices and locks a fresh file
            self._cleanup_created_dir()
        except OSError as exc:  # releasing must never mask the error that ended the training
            log.debug("could not remove %s: %s", self.path, exc)
        finally:
            os.close(fd)  # drops the flock

    def _cleanup_created_dir(self) -> bool:
        """If acquire() made the run folder and it is empty (the lock file already gone), remove it."""
        if not self._created_dir:
            return False
        try:
            self.run_dir.rmdir()  # fails, harmlessly, unless the folder is empty
        except OSError:
            return False
        self._created_dir = False
        return True

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a Trainer dropped without train()'s finally still lets go
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def check_not_held(run_dir: str | Path) -> None:
    """Raise RunLockError if a live process holds the run folder's lock (for commands about to replace it)."""
    run_dir = Path(run_dir)
    if not (run_dir / LOCK_NAME).is_file():
        return
    probe = RunLock(run_dir)
    probe.acquire()
    probe.release()
