"""Atomic, verifiable, pickle-free checkpoints (safetensors + JSON + sha256 manifest).

Layout of ``run_dir/checkpoints/``::

    step_00000042/            one checkpoint (folder name = step, 8+ digits)
        <group>.safetensors   one per tensor group ("model", "optimizer", ...)
        state.json            JSON-able training state (step, epoch, config, RNG, scheduler, ...)
        manifest.json         written last: format version, step, groups, size + sha256 of every file
    latest                    text file holding the folder name of the newest complete checkpoint

Save protocol: write into ``step_X.tmp-<random>/``, fsync every file, write the manifest last, fsync, rename the
folder to ``step_X``, fsync the parent, then point ``latest`` at it with a temp file and ``os.replace``.
A single writer (rank 0, holding the run folder's lock: ``mmvae.runlock``) is assumed; only it may clean
leftovers (``clean_leftovers=True``). Readers beside a live writer pass ``clean_leftovers=False`` (``load_newest``
does by default): they read the newest checkpoint that verifies and modify nothing. Nothing here ever
unpickles: tensors are read with ``safetensors.torch.load_file`` and everything else with ``json``.
A save that fails on the file system (disk full, I/O error) raises ``CheckpointSaveError`` naming the folder and
the cause; the previous checkpoint is untouched.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

FORMAT_NAME = "mmvae-checkpoint"
FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
LATEST_POINTER = "latest"
MANIFEST_NAME = "manifest.json"
STATE_NAME = "state.json"
TENSOR_SUFFIX = ".safetensors"
FINITE_GROUPS = ("model",)
_STEP_DIR_RE = re.compile(r"^step_(\d{8,})$")
_OLD_DIR_RE = re.compile(r"^(step_\d{8,})\.old-[0-9a-f]+$")
_GROUP_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_TMP_MARK = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt, unsafe or incompatible."""


class NoCheckpointError(CheckpointError):
    """A run folder holds no checkpoint at all."""


class CheckpointVanishedError(CheckpointError):
    """A candidate checkpoint folder does not exist (any more): pruned by a live writer, or a dangling pointer."""


class CheckpointSaveError(CheckpointError):
    """Writing a checkpoint failed on the file system (disk full, I/O error); the previous one is intact."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


ON_CORRUPT = ("fallback", "error")  # what load_newest does when the newest checkpoint is unusable


@dataclass
class Checkpoint:
    """A loaded and verified checkpoint."""

    path: Path
    step: int
    tensors: dict[str, dict[str, torch.Tensor]]
    state: dict[str, Any]
    # Newer candidates that load_newest rejected before settling on this one: "path: reason" each.
    fell_back_from: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# File-system primitives (one function per file event, so tests can inject a crash at each of them)
# --------------------------------------------------------------------------------------------------------------


def _write_file(path: Path, data: bytes) -> None:
    """Create ``path`` (must not exist) and write ``data`` into it."""
    with open(path, "xb") as f:
        f.write(data)


def _fsync_path(path: Path) -> None:
    """Flush a file's data to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, creations) to stable storage."""
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    _fsync_path(path)


def _rename(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` (atomic within one file system)."""
    os.rename(src, dst)


def _replace(src: Path, dst: Path) -> None:
    """Atomically replace ``dst`` with ``src``."""
    os.replace(src, dst)


def _remove_tree(path: Path) -> None:
    """Delete a file, a symlink or a directory tree."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def _sha256(path: Path) -> str:
    """Hex sha256 of a file's contents."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _token() -> str:
    """Random suffix for temporary names."""
    return secrets.token_hex(6)


# --------------------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------------------


def step_dir_name(step: int) -> str:
    """Folder name of the checkpoint for ``step``."""
    return f"step_{step:08d}"


def _check_finite(group: str, name: str, tensor: torch.Tensor, where: str) -> None:
    """Raise if a floating/complex tensor holds NaN or Inf."""
    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return
    values = tensor if tensor.element_size() > 1 else tensor.float()
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise CheckpointError(f"{where}: tensor {group}/{name} has {bad} non-finite value(s)")


def _prepare_group(group: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors with no shared storage, validated for safetensors."""
    if not isinstance(tensors, dict):
        raise CheckpointError(f"tensor group {group!r} must be a dict, got {type(tensors).__name__}")
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"tensor group {group!r}: key {name!r} must be a non-empty str")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"tensor group {group!r}: {name!r} is {type(t).__name__}, not a Tensor")
        if t.layout != torch.strided or t.device.type == "meta":
            raise CheckpointError(f"tensor group {group!r}: {name!r} must be a dense, materialised tensor")
        t = t.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key[0] != 0 and key in seen:
            t = t.clone()
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        seen.add(key)
        out[name] = t
    return out


def _check_jsonable(obj: Any, where: str) -> None:
    """Raise unless ``obj`` survives a JSON round trip (str keys, finite floats, plain types)."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise CheckpointError(f"state{where} is {obj!r}; non-finite floats are not valid JSON")
        return
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _check_jsonable(item, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CheckpointError(f"state{where}: key {k!r} is {type(k).__name__}; JSON keys must be str")
            _check_jsonable(v, f"{where}[{k!r}]")
        return
    raise CheckpointError(f"state{where} is {type(obj).__name__}, which is not JSON-able (no pickle here)")


def _state_bytes(state: dict[str, Any]) -> bytes:
    """Serialise the training state as strict JSON."""
    if not isinstance(state, dict):
        raise CheckpointError(f"state must be a dict, got {type(state).__name__}")
    _check_jsonable(state, "")
    return json.dumps(state, allow_nan=False, sort_keys=True, indent=1).encode("utf-8")


def _write_payload(tmp: Path, prepared: dict[str, dict[str, torch.Tensor]], state_data: bytes) -> list[str]:
    """Write and fsync all tensor files and state.json into ``tmp``; return the file names."""
    names = []
    for group, group_tensors in prepared.items():
        name = group + TENSOR_SUFFIX
        save_file(group_tensors, str(tmp / name), metadata={"format": FORMAT_NAME, "group": group})
        _fsync_path(tmp / name)
        names.append(name)
    _write_file(tmp / STATE_NAME, state_data)
    _fsync_path(tmp / STATE_NAME)
    names.append(STATE_NAME)
    return names


def _write_manifest(tmp: Path, step: int, groups: list[str], names: list[str]) -> None:
    """Write manifest.json (last) with size and sha256 of every file, then fsync it and the folder."""
    files = {n: {"size": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)} for n in names}
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "step": step, "groups": groups, "files": files}
    _write_file(tmp / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
    _fsync_path(tmp / MANIFEST_NAME)
    _fsync_dir(tmp)


def _install(tmp: Path, final: Path) -> None:
    """Rename the finished temp folder to its final name, safely replacing an existing one."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f"{final.name}.old-{_token()}")
        _rename(final, old)
    _rename(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        _remove_tree(old)


def _write_pointer(ckpt_dir: Path, name: str) -> None:
    """Point ``latest`` at ``name`` via a temp file and ``os.replace`` (never delete-then-recreate)."""
    tmp = ckpt_dir / f"{LATEST_POINTER}{_TMP_MARK}{_token()}"
    try:
        _write_file(tmp, (name + "\n").encode("ascii"))
        _fsync_path(tmp)
        _replace(tmp, ckpt_dir / LATEST_POINTER)
    except BaseException:
        _best_effort_remove(tmp)
        raise
    _fsync_dir(ckpt_dir)


def _best_effort_remove(path: Path) -> None:
    """Remove ``path`` if possible, swallowing errors (used while an error is already propagating)."""
    try:
        if path.exists() or path.is_symlink():
            _remove_tree(path)
    except Exception as exc:  # noqa: BLE001 - cleanup must not mask the original error
        log.debug("could not remove %s: %s", path, exc)


def save_checkpoint(
    run_dir: Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    keep_last: int = 3,
) -> Path:
    """Atomically save a checkpoint for ``step``, update ``latest`` and prune; return its folder."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"step must be a non-negative int, got {step!r}")
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise CheckpointError(f"keep_last must be an int >= 1, got {keep_last!r}")
    if not isinstance(tensors, dict):
        raise CheckpointError(f"tensors must be a dict of groups, got {type(tensors).__name__}")
    for group in tensors:
        if not isinstance(group, str) or not _GROUP_RE.match(group):
            raise CheckpointError(f"invalid tensor group name {group!r} (letters, digits, '_' and '-' only)")
    prepared = {g: _prepare_group(g, t) for g, t in tensors.items()}
    for group in FINITE_GROUPS:
        for name, t in prepared.get(group, {}).items():
            _check_finite(group, name, t, f"refusing to save step {step}")
    state_data = _state_bytes(state)

    ckpt_dir = Path(run_dir) / CHECKPOINTS_DIR
    _check_pointer_slot(ckpt_dir)
    final = ckpt_dir / step_dir_name(step)
    tmp = ckpt_dir / f"{final.name}{_TMP_MARK}{_token()}"
    try:
        created = not ckpt_dir.is_dir()
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if created:
            _fsync_dir(ckpt_dir.parent)
        try:
            tmp.mkdir()
            names = _write_payload(tmp, prepared, state_data)
            _write_manifest(tmp, step, list(prepared), names)
            _install(tmp, final)
        except BaseException:
            _best_effort_remove(tmp)
            raise
        _write_pointer(ckpt_dir, final.name)
        _prune(ckpt_dir, keep_last, protect=final.name)
    except (OSError, SafetensorError) as exc:
        raise _save_error(exc, final, step) from None
    return final


def _save_error(exc: BaseException, final: Path, step: int) -> CheckpointSaveError:
    """One line for a failed save: what ran out (or failed) and where; the previous checkpoint is intact."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code is None and ("No space left" in text or "os error 28" in text):  # safetensors' Rust I/O errors
        code = errno.ENOSPC
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on the device" if code == errno.ENOSPC else "disk quota exceeded"
        return CheckpointSaveError(
            f"{final}: could not save the checkpoint of step {step}: {what} holding {final.parent}; the previous "
            "checkpoint is intact: free some space and rerun with --resume", code)
    reason = getattr(exc, "strerror", None) or text
    return CheckpointSaveError(f"{final}: could not save the checkpoint of step {step}: {reason}; the previous "
                               "checkpoint is intact", code)


def _check_pointer_slot(ckpt_dir: Path) -> None:
    """Refuse a `latest` that is not a regular file (a folder or a symlink there would break the save at its end)."""
    pointer = ckpt_dir / LATEST_POINTER
    if pointer.is_symlink():
        raise CheckpointError(f"{pointer} is a symlink; it must be the pointer file mmvae writes (remove it)")
    if pointer.exists() and not pointer.is_file():
        kind = "folder" if pointer.is_dir() else "special file"
        raise CheckpointError(f"{pointer} is a {kind}, not the pointer file mmvae writes; move it out of the way")


def check_writer_layout(run_dir: Path) -> None:
    """Before a writer touches `run_dir`: refuse symlinks that lead outside it and a `latest` that is not a file.

    The trainer writes config.yaml, metrics.jsonl, summary.json, checkpoints/... and prunes old checkpoints;
    through a symlink to elsewhere it would write or delete outside the run folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    root = run_dir.resolve()
    ckpt_dir = run_dir / CHECKPOINTS_DIR
    entries = sorted(run_dir.iterdir())
    if ckpt_dir.is_dir() and not ckpt_dir.is_symlink():
        entries += sorted(ckpt_dir.iterdir())
    for path in entries:
        if path.is_symlink():
            target = path.resolve()
            if target != root and root not in target.parents:
                raise CheckpointError(
                    f"{path} is a symlink to {os.readlink(path)}, outside the run folder; a training would write or "
                    "prune through it: refusing (replace it with a real file or folder)")
    if ckpt_dir.exists() and not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir} is not a folder; move it out of the way")
    _check_pointer_slot(ckpt_dir)


def _prune(ckpt_dir: Path, keep_last: int, protect: str) -> None:
    """Delete step folders beyond the newest ``keep_last`` intact ones (never ``protect``)."""
    kept = 1  # the protected, just-saved checkpoint
    for path in _step_dirs(ckpt_dir):
        if path.name == protect:
            continue
        try:
            verify_checkpoint(path, deep=False)
        except CheckpointError:
            continue  # leave broken folders for inspection; resume skips them anyway
        if kept < keep_last:
            kept += 1
            continue
        doomed = ckpt_dir / f"{path.name}{_TMP_MARK}del-{_token()}"
        _rename(path, doomed)  # atomic: a crash mid-delete leaves only a *.tmp-* leftover
        _remove_tree(doomed)


# --------------------------------------------------------------------------------------------------------------
# Verifying and loading
# --------------------------------------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[str, Any]:
    """Parse and structurally validate ``path/manifest.json``."""
    mpath = path / MANIFEST_NAME
    if not mpath.is_file() or mpath.is_symlink():
        raise CheckpointError(f"{mpath}: missing manifest (incomplete or foreign checkpoint)")
    try:
        manifest = json.loads(mpath.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise CheckpointError(f"{mpath}: unreadable manifest JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{mpath}: not an {FORMAT_NAME} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{mpath}: unsupported format version {manifest.get('version')!r}")
    step, groups, files = manifest.get("step"), manifest.get("groups"), manifest.get("files")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{mpath}: invalid step {step!r}")
    if not isinstance(groups, list) or not all(isinstance(g, str) and _GROUP_RE.match(g) for g in groups):
        raise CheckpointError(f"{mpath}: invalid groups {groups!r}")
    if not isinstance(files, dict):
        raise CheckpointError(f"{mpath}: 'files' must be an object")
    for name, entry in files.items():
        _check_manifest_entry(mpath, name, entry)
    expected = {g + TENSOR_SUFFIX for g in groups} | {STATE_NAME}
    if set(files) != expected:
        raise CheckpointError(f"{mpath}: files {sorted(files)} do not match groups (expected {sorted(expected)})")
    match = _STEP_DIR_RE.match(path.name)
    if match and int(match.group(1)) != step:
        raise CheckpointError(f"{mpath}: manifest step {step} does not match folder name {path.name}")
    return manifest


def _reject_constant(name: str) -> Any:
    """JSON hook: reject NaN/Infinity, which our writer never emits."""
    raise ValueError(f"non-standard JSON constant {name}")


def _check_manifest_entry(mpath: Path, name: Any, entry: Any) -> None:
    """Validate one manifest file entry (plain file name, int size, hex sha256)."""
    if not isinstance(name, str) or name != Path(name).name or name in ("", ".", "..", MANIFEST_NAME):
        raise CheckpointError(f"{mpath}: invalid file name {name!r} in manifest")
    if not isinstance(entry, dict):
        raise CheckpointError(f"{mpath}: entry for {name} must be an object")
    size, sha = entry.get("size"), entry.get("sha256")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise CheckpointError(f"{mpath}: invalid size {size!r} for {name}")
    if not isinstance(sha, str) or not _SHA_RE.match(sha):
        raise CheckpointError(f"{mpath}: invalid sha256 {sha!r} for {name}")


def verify_checkpoint(path: Path, deep: bool = True) -> dict[str, Any]:
    """Check a folder against its manifest (sizes; sha256 and state.json parse when ``deep``); return the manifest."""
    path = Path(path)
    if path.is_symlink():
        raise CheckpointError(f"{path}: is a symlink; mmvae never writes checkpoint folders as symlinks")
    if not path.is_dir():
        raise CheckpointVanishedError(f"{path}: checkpoint folder does not exist")
    manifest = _read_manifest(path)
    files = manifest["files"]
    for name, entry in files.items():
        fpath = path / name
        if fpath.is_symlink() or not fpath.is_file():
            raise CheckpointError(f"{fpath}: listed in manifest but missing (or not a regular file)")
        size = fpath.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(f"{fpath}: size mismatch (manifest {entry['size']} bytes, on disk {size})")
        if deep and _sha256(fpath) != entry["sha256"]:
            raise CheckpointError(f"{fpath}: sha256 mismatch (file altered or corrupted)")
    extra = sorted(p.name for p in path.iterdir() if p.name not in files and p.name != MANIFEST_NAME)
    if extra:
        raise CheckpointError(f"{path}: files not listed in the manifest: {extra}")
    if deep:
        _load_state(path / STATE_NAME)
    return manifest


def _load_state(fpath: Path) -> dict[str, Any]:
    """Read state.json strictly (UTF-8, standard JSON, an object)."""
    try:
        state = json.loads(fpath.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise CheckpointError(f"{fpath}: unreadable state JSON ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{fpath}: state must be a JSON object, got {type(state).__name__}")
    return state


def _load_group(fpath: Path, group: str) -> dict[str, torch.Tensor]:
    """Read one safetensors file (never pickle); check finiteness for model groups."""
    try:
        tensors = load_file(str(fpath), device="cpu", backend="pread")
    except Exception as exc:  # safetensors raises its own SafetensorError types
        raise CheckpointError(f"{fpath}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    if group in FINITE_GROUPS:
        for name, t in tensors.items():
            _check_finite(group, name, t, str(fpath))
    return tensors


def load_checkpoint(path: Path) -> Checkpoint:
    """Verify a checkpoint folder against its manifest and load it (safetensors + JSON only)."""
    path = Path(path)
    try:
        manifest = verify_checkpoint(path, deep=True)
        tensors = {g: _load_group(path / (g + TENSOR_SUFFIX), g) for g in manifest["groups"]}
        state = _load_state(path / STATE_NAME)
    except OSError as exc:  # unreadable, or removed under us by a writer's pruning
        where = exc.filename or path
        kind = CheckpointVanishedError if isinstance(exc, FileNotFoundError) else CheckpointError
        raise kind(f"{where}: cannot read ({exc.strerror or exc})") from None
    return Checkpoint(path=path, step=manifest["step"], tensors=tensors, state=state)


# --------------------------------------------------------------------------------------------------------------
# Finding the latest checkpoint
# --------------------------------------------------------------------------------------------------------------


def _step_dirs(ckpt_dir: Path) -> list[Path]:
    """Step folders in ``ckpt_dir``, newest step first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir()
             if (m := _STEP_DIR_RE.match(p.name)) and p.is_dir() and not p.is_symlink()]
    return [p for _, p in sorted(found, key=lambda sp: sp[0], reverse=True)]


def _clean_leftovers(ckpt_dir: Path) -> None:
    """Delete ``*.tmp-*`` leftovers and resolve ``step_X.old-*`` folders from interrupted re-saves."""
    if not ckpt_dir.is_dir():
        return
    for p in sorted(ckpt_dir.iterdir()):
        old = _OLD_DIR_RE.match(p.name)
        if old and not (ckpt_dir / old.group(1)).exists() and _is_valid(p):
            log.warning("restoring %s to %s (re-save was interrupted)", p, old.group(1))
            _rename(p, ckpt_dir / old.group(1))
            _fsync_dir(ckpt_dir)
        elif old or _TMP_MARK in p.name:
            log.info("removing leftover %s", p)
            _remove_tree(p)


def _is_valid(path: Path) -> bool:
    """True when ``path`` verifies against its manifest."""
    try:
        verify_checkpoint(path, deep=True)
    except CheckpointError:
        return False
    return True


def _read_pointer(ckpt_dir: Path) -> Path | None:
    """The folder named by ``latest``, or None (with a warning) if absent or malformed."""
    pointer = ckpt_dir / LATEST_POINTER
    if not pointer.is_file() or pointer.is_symlink():
        if pointer.exists() or pointer.is_symlink():
            log.warning("%s: not a regular file; falling back to step folders", pointer)
        return None
    try:
        name = pointer.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("%s: unreadable pointer (%s); falling back to step folders", pointer, exc)
        return None
    if not _STEP_DIR_RE.match(name):
        log.warning("%s: malformed pointer %r; falling back to step folders", pointer, name[:80])
        return None
    return ckpt_dir / name


def _candidates(run_dir: Path, clean_leftovers: bool) -> Iterator[Path]:
    """Candidate checkpoint folders: the ``latest`` target first, then step folders newest first."""
    ckpt_dir = Path(run_dir) / CHECKPOINTS_DIR
    if clean_leftovers:
        _clean_leftovers(ckpt_dir)
    first = _read_pointer(ckpt_dir)
    if first is not None:
        yield first
    for path in _step_dirs(ckpt_dir):
        if path != first:
            yield path


def find_latest_checkpoint(run_dir: Path, clean_leftovers: bool = True) -> Path | None:
    """Newest checkpoint folder that verifies (``latest`` first, then by step), or None.

    Pass ``clean_leftovers=False`` from a reader running alongside a live writer.
    """
    for path in _candidates(run_dir, clean_leftovers):
        try:
            verify_checkpoint(path, deep=True)
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s", path, exc)
            continue
        return path
    return None


def load_latest(run_dir: Path, clean_leftovers: bool = True) -> Checkpoint | None:
    """Load the newest checkpoint that verifies and loads cleanly, or None if there is none."""
    for path in _candidates(run_dir, clean_leftovers):
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s", path, exc)
    return None


def load_newest(
    run_dir: Path,
    validate: Callable[[Checkpoint], None] | None = None,
    on_corrupt: str = "fallback",
    clean_leftovers: bool = False,
) -> Checkpoint:
    """The newest checkpoint that verifies, loads and passes ``validate`` (which raises CheckpointError to reject).

    ``on_corrupt="fallback"``: a rejected candidate is skipped with a warning and the next older one tried; the
    result's ``fell_back_from`` lists what was skipped. ``"error"``: the first rejection is raised. With no usable
    checkpoint, the CheckpointError names the newest candidate's file and problem (NoCheckpointError if there is
    no candidate at all). Modifies nothing unless ``clean_leftovers`` (the lock-holding writer only).
    """
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
    ckpt_dir = Path(run_dir) / CHECKPOINTS_DIR
    for attempt in range(3):  # a reader beside a live writer: rescan if every candidate was pruned under it
        rejected: list[str] = []
        vanished = 0
        for path in _candidates(run_dir, clean_leftovers and attempt == 0):
            try:
                ckpt = load_checkpoint(path)
                if validate is not None:
                    validate(ckpt)
            except CheckpointVanishedError as exc:  # not corruption: gone (pruned), or a dangling pointer
                log.warning("skipping checkpoint %s: %s", path, exc)
                vanished += 1
                continue
            except CheckpointError as exc:
                if on_corrupt == "error":
                    raise CheckpointError(f"{exc} (--on-corrupt=error: not falling back to an older checkpoint)") from None
                log.warning("skipping checkpoint %s: %s", path, exc)
                rejected.append(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
                continue
            ckpt.fell_back_from = rejected
            if rejected:
                log.warning("using the older checkpoint %s (step %d): %d newer one(s) rejected", path, ckpt.step,
                            len(rejected))
            return ckpt
        if rejected or not vanished:
            break
    if not rejected:
        raise NoCheckpointError(f"{ckpt_dir}: no checkpoint to load")
    more = f" ({len(rejected) - 1} older one(s) rejected too)" if len(rejected) > 1 else ""
    raise CheckpointError(f"no usable checkpoint in {ckpt_dir}{more}; the newest: {rejected[0]}")


# --------------------------------------------------------------------------------------------------------------
# Compatibility checks
# --------------------------------------------------------------------------------------------------------------


def check_state_dict_compatible(
    expected: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], source: Path
) -> None:
    """Raise CheckpointError naming missing/unexpected keys and the first shape/dtype mismatch."""
    missing = [k for k in expected if k not in loaded]
    unexpected = [k for k in loaded if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    for key, want in expected.items():
        got = loaded.get(key)
        if got is None:
            continue
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            problems.append(
                f"first mismatch at {key!r}: expected {tuple(want.shape)} {want.dtype}, "
                f"got {tuple(got.shape)} {got.dtype}"
            )
            break
    if problems:
        raise CheckpointError(f"{source}: incompatible state dict: " + "; ".join(problems))


def _short(keys: list[str], limit: int = 10) -> str:
    """Render a key list, truncated after ``limit`` names."""
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}]{more}"


# --------------------------------------------------------------------------------------------------------------
# RNG state as JSON (no pickle)
# --------------------------------------------------------------------------------------------------------------


def _bytes_tensor_to_b64(t: torch.Tensor) -> str:
    """Base64 of a uint8 RNG-state tensor."""
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _b64_to_bytes_tensor(data: Any, what: str) -> torch.Tensor:
    """uint8 tensor from base64 text."""
    if not isinstance(data, str):
        raise CheckpointError(f"rng state: {what} must be base64 text")
    try:
        raw = base64.b64decode(data.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise CheckpointError(f"rng state: {what} is not valid base64 ({exc})") from None
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()


def rng_state_to_json() -> dict[str, Any]:
    """Capture python, numpy (legacy global), torch CPU and all CUDA RNG states as JSON-able data."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    obj: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch_cpu": _bytes_tensor_to_b64(torch.get_rng_state()),
        "torch_cuda": [],
    }
    if torch.cuda.is_available():
        obj["torch_cuda"] = [_bytes_tensor_to_b64(s) for s in torch.cuda.get_rng_state_all()]
    return obj


def restore_rng_state(obj: dict[str, Any]) -> None:
    """Restore RNG states captured by :func:`rng_state_to_json` exactly."""
    if not isinstance(obj, dict):
        raise CheckpointError("rng state must be a JSON object")
    try:
        py, npy = obj["python"], obj["numpy"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
        np_state = (npy["kind"], np.asarray(npy["keys"], dtype=np.uint32), npy["pos"], npy["has_gauss"],
                    npy["cached_gaussian"])
        np.random.set_state(np_state)
        torch.set_rng_state(_b64_to_bytes_tensor(obj["torch_cpu"], "torch_cpu"))
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(f"rng state: cannot restore ({type(exc).__name__}: {exc})") from None
    _restore_cuda_rng(obj.get("torch_cuda", []))


def _restore_cuda_rng(states: Any) -> None:
    """Restore per-device CUDA RNG states; warn when the device count differs from the saved one."""
    if not isinstance(states, list):
        raise CheckpointError("rng state: torch_cuda must be a list")
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(states) != have:
        log.warning("rng state: saved %d CUDA RNG state(s), %d device(s) present; resume will not be exact",
                    len(states), have)
    for index, data in enumerate(states[:have]):
        try:
            torch.cuda.set_rng_state(_b64_to_bytes_tensor(data, f"torch_cuda[{index}]"), device=index)
        except RuntimeError as exc:
            raise CheckpointError(f"rng state: cannot restore torch_cuda[{index}] ({exc})") from None
