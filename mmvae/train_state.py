"""The resumable state of a run: position, optimiser tensors, RNG states, and the checks that make resume exact.

A checkpoint holds weights, optimiser moments, the position (step, epoch, batch in epoch), the config
and every rank's RNG states; the loader's order depends on (seed, epoch) only and the LR on the step,
so nothing else needs saving.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmvae.checkpoint import Checkpoint, CheckpointError, check_state_dict_compatible, save_checkpoint
from mmvae.config import ConfigError, ExperimentConfig, config_from_dict

# Config sections that may change between a run and its resumption without breaking exactness.
RESUMABLE_CHANGES = {"name", "out_dir", "logging", "train.epochs", "train.max_steps", "train.eval_every",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "train.eval_batches"}


@dataclass
class Position:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # optimiser steps done within `epoch`


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Split an optimiser state dict into flat tensors (for safetensors) and JSON metadata."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    # A tensor LR (the CUDA-graph step's, train_graph.py) is saved as its number: a checkpoint does not depend on
    # how the LR was held.
    groups = [{k: (float(v) if isinstance(v, Tensor) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    """Inverse of optimizer_to_tensors. A tensor LR stays the same tensor object (a captured CUDA graph reads it),
    now holding the saved value; `capturable` stays this optimiser's (how the update runs, not its state)."""
    tensor_lrs = [g["lr"] if isinstance(g["lr"], Tensor) else None for g in opt.param_groups]
    capturable = [g.get("capturable", False) for g in opt.param_groups]
    state: dict[int, dict] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for group, tensor, flag in zip(opt.param_groups, tensor_lrs, capturable):
        group["capturable"] = flag
        if tensor is not None:
            tensor.fill_(float(group["lr"]))
            group["lr"] = tensor


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        dotted = f"{prefix}{k}"
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, dotted + ".")
        elif a != b:
            out.append(dotted)
    return out


def check_resumable(saved: dict, current: ExperimentConfig, path: Path) -> None:
    """Refuse a resume whose config differs from the checkpoint's beyond RESUMABLE_CHANGES.

    The saved config may be of an older schema: it is migrated first, so an old run resumes under new code.
    """
    try:
        saved_now = config_from_dict(saved, source=f"{path} (saved config)").model_dump(mode="json")
    except ConfigError as e:
        raise CheckpointError(f"{path}: the saved config no longer validates: {e}") from None
    diffs = config_differences(saved_now, current.model_dump(mode="json"))
    blocking = [d for d in diffs if not any(d == r or d.startswith(r + ".") for r in RESUMABLE_CHANGES)]
    if blocking:
        raise CheckpointError(f"{path}: checkpoint was made with a different config; differing keys: {blocking}")


def load_latest_exists(run_dir: Path) -> bool:
    """Whether a run folder already holds a checkpoint pointer or folder."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    return ckpt_dir.is_dir() and any(p.name.startswith("step_") and ".tmp" not in p.name for p in ckpt_dir.iterdir())


def save_training_state(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, position: Position,
                        config: ExperimentConfig, rng: list, world_size: int, extra: dict | None = None) -> None:
    """One atomic checkpoint of everything resume needs (called on rank 0); `extra`: the log windows and the LR
    schedule's length (optional keys of the state, absent from checkpoints of older code)."""
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    state = {
        "position": asdict(position),
        "config": config.model_dump(mode="json"),
        "optimizer": opt_meta,
        "rng": rng,
        "world_size": world_size,
        **(extra or {}),
    }
    save_checkpoint(run_dir, position.step, {"model": model.state_dict(), "optimizer": opt_tensors}, state,
                    keep_last=config.train.keep_checkpoints)


def load_for_resume(run_dir: Path, config: ExperimentConfig, world_size: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, steps_per_epoch: int | None = None,
                    on_corrupt: str = "fallback") -> Checkpoint:
    """The newest checkpoint that verifies and whose contents pass `checkpoint_schema` (else an older one, or a
    one-line refusal, as `on_corrupt` says), checked against this run's config, world size and shapes. Its model
    tensors carry the current parameter names (older code's names are upgraded by the validation).
    Called by the lock-holding writer, so it also cleans leftovers of interrupted saves."""
    from mmvae.checkpoint_schema import load_valid_checkpoint

    ckpt = load_valid_checkpoint(run_dir, model, optimizer, on_corrupt, writer=True, steps_per_epoch=steps_per_epoch,
                                 config=config, world_size=world_size)
    check_resumable(ckpt.state["config"], config, ckpt.path)
    if ckpt.state["world_size"] != world_size:
        raise CheckpointError(f"{ckpt.path}: saved with {ckpt.state['world_size']} rank(s), resuming with {world_size}")
    check_state_dict_compatible(model.state_dict(), ckpt.tensors["model"], ckpt.path)
    return ckpt
