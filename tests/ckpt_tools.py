"""Helpers for tests that damage checkpoints on purpose, keeping the manifest consistent (issue 15).

Recomputing the manifest's sizes and sha256 after a change means the checksum layer passes and what is
exercised is the content validation (mmvae.checkpoint_schema) and everything behind it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from mmvae.checkpoint import _sha256, step_dir_name
from mmvae.config import config_to_yaml
from mmvae.train import train
from tests.conftest import tiny_config

BASE_OVERRIDES = ("train.epochs=2",)  # 16 steps, checkpoints at 8 and 16


def make_base_run(base: Path) -> tuple[Path, Path]:
    """A finished tiny run (checkpoints at steps 8 and 16) and its config file: (config.yaml path, run dir)."""
    base.mkdir(parents=True, exist_ok=True)
    config = base / "tiny.yaml"
    config.write_text(config_to_yaml(tiny_config(base, BASE_OVERRIDES)))
    train(tiny_config(base, BASE_OVERRIDES), base / "run")
    return config, base / "run"


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def step_folder(run: Path, step: int) -> Path:
    return run / "checkpoints" / step_dir_name(step)


def only_newest(run: Path) -> Path:
    """Delete every checkpoint but the newest (so nothing can be fallen back to); return the newest."""
    folders = sorted(p for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))
    for p in folders[:-1]:
        shutil.rmtree(p)
    return folders[-1]


def update_manifest(folder: Path, name: str) -> None:
    """Make manifest.json agree with `folder/name` as it is now (size and sha256)."""
    mpath = folder / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["files"][name] = {"size": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}
    mpath.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def rewrite_state(folder: Path, change: Callable[[dict], Any]) -> None:
    """Apply `change` to state.json (in place, or return a replacement dict), then fix the manifest."""
    path = folder / "state.json"
    state = json.loads(path.read_text())
    new = change(state)
    path.write_text(json.dumps(new if isinstance(new, dict) else state, indent=1, sort_keys=True))
    update_manifest(folder, "state.json")


def rewrite_group(folder: Path, group: str, change: Callable[[dict[str, torch.Tensor]], Any]) -> None:
    """Apply `change` to a tensor group's dict (in place, or return a replacement dict), then fix the manifest."""
    path = folder / f"{group}.safetensors"
    tensors = load_file(str(path))
    new = change(tensors)
    path.unlink()
    save_file(new if isinstance(new, dict) else tensors, str(path))
    update_manifest(folder, f"{group}.safetensors")


def rewrite_bytes(folder: Path, name: str, change: Callable[[bytes], bytes]) -> None:
    path = folder / name
    path.write_bytes(change(path.read_bytes()))
    update_manifest(folder, name)


def renumber(run: Path, folder: Path, step: int, epoch: int, batch_in_epoch: int = 0) -> Path:
    """Make a consistent checkpoint of another step out of `folder`: state, manifest, folder name, pointer."""
    def move(state: dict) -> None:
        state["position"] = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch}

    rewrite_state(folder, move)
    mpath = folder / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["step"] = step
    mpath.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    target = folder.with_name(step_dir_name(step))
    folder.rename(target)
    (run / "checkpoints" / "latest").write_text(target.name + "\n")
    return target


def snapshot(root: Path) -> dict[str, bytes | None] | None:
    """Every path under `root` with its bytes (None for folders); None if `root` does not exist."""
    if not root.exists() and not root.is_symlink():
        return None
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("symlink:" + str(p.readlink())).encode()
        elif p.is_dir():
            out[rel] = None
        else:
            out[rel] = p.read_bytes()
    return out
