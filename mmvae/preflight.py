"""Checks a command runs before it writes anything: a config that validates can still be untrainable.

`check_train` refuses, each in one ConfigError line naming the key: a model that cannot be built from its
config (unknown kind, a shape the kind does not take, unknown options, ...), one with more than
`MAX_PARAMETERS` parameters or more than the machine's memory can train (counted on the meta device, so
nothing is allocated), modalities the dataset does not provide, `train.device=cuda` without a GPU, and
`train.batch_size` / `train.grad_accum_steps` that leave no full optimiser step in an epoch. `--resume`
into a folder that does not exist is refused too. All of it runs before the run folder is created.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from mmvae.checkpoint import NoCheckpointError
from mmvae.config import ConfigError, ExperimentConfig

MAX_PARAMETERS = 2_000_000_000
TRAIN_BYTES_PER_PARAMETER = 16  # fp32 weights, gradients and two AdamW moments


def _fmt(n: float) -> str:
    return f"{n:,.0f}" if n < 1e7 else f"{n:.2g}"


def count_parameters(config: ExperimentConfig) -> tuple[int, dict[str, int]]:
    """Parameters of the model the config describes, in total and per top-level part; nothing is allocated."""
    from mmvae.families import build_model

    try:
        with torch.device("meta"):
            model = build_model(config.model)
    except (ValueError, TypeError, KeyError, RuntimeError, OverflowError) as exc:
        raise ConfigError(f"model cannot be built from this config: {exc}") from None
    parts: dict[str, int] = {}
    for name, p in model.named_parameters():
        head = name.split(".")
        key = ".".join(head[:2]) if head[0] in ("modalities", "private_heads", "private_features", "heads") else head[0]
        parts[key] = parts.get(key, 0) + p.numel()
    return sum(parts.values()), parts


def _config_key(part: str) -> str:
    """Which config key mostly sizes a model part, for the error message."""
    head, _, name = part.partition(".")
    if head in ("modalities", "private_heads", "private_features") and name:
        return f"model.modalities.{name}"
    if head == "heads" and name:
        return "model.label_hidden" if name == "label" else f"model.heads.{name}"
    return {"fusion": "model.fusion_hidden",
            "joint_features": "model.joint_feature_dim"}.get(head, "model")


def check_model_size(config: ExperimentConfig) -> int:
    total, parts = count_parameters(config)
    biggest = max(parts, key=parts.get) if parts else "model"
    where = f"; the largest part is {biggest} ({_fmt(parts.get(biggest, 0))}): see {_config_key(biggest)}"
    if total > MAX_PARAMETERS:
        raise ConfigError(f"model: {_fmt(total)} parameters, more than the limit of {_fmt(MAX_PARAMETERS)}{where}")
    if config.train.device != "cuda" and not torch.cuda.is_available():
        try:
            import psutil

            memory = psutil.virtual_memory().total
        except Exception:  # noqa: BLE001 - no psutil: skip the memory estimate
            memory = None
        if memory and total * TRAIN_BYTES_PER_PARAMETER > memory:
            raise ConfigError(f"model: {_fmt(total)} parameters need about "
                              f"{total * TRAIN_BYTES_PER_PARAMETER / 2**30:.0f} GiB to train, more than the "
                              f"{memory / 2**30:.0f} GiB of memory here{where}")
    return total


def check_device(config: ExperimentConfig) -> None:
    device = config.train.device
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("key 'train.device': cuda requested but no CUDA device is available "
                          "(use train.device=cpu or auto)")
    if device in ("cuda", "auto") and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible")


def check_compile(config: ExperimentConfig) -> None:
    """DReG (mmvae, mmvae_plus) scales gradients with tensor hooks on intermediate tensors, which
    torch.compile may drop at a graph break: refuse the combination rather than train with another gradient."""
    from mmvae.families import FAMILIES

    if not config.train.compile:
        return
    options = FAMILIES[config.model.family].Options(**config.model.family_options)
    if getattr(options, "estimator", None) == "dreg":
        raise ConfigError(f"key 'train.compile': model family {config.model.family} with the dreg estimator uses "
                          f"gradient hooks that torch.compile may drop; set train.compile=false or "
                          f"model.family_options.estimator=iwae")


def _dataset_facts(config: ExperimentConfig) -> tuple[int | None, set[str] | None]:
    """(training samples, modality names) of the configured dataset, without loading it; None where unknown
    (the dataset's registry entry says, through its `facts`)."""
    from mmvae.data.registry import DATASETS

    entry = DATASETS[config.data.name]
    return entry.facts(config) if entry.facts is not None else (None, None)


def check_data(config: ExperimentConfig) -> None:
    n, provided = _dataset_facts(config)
    if provided is not None:
        missing = sorted(set(config.model.modalities) - provided)
        if missing:
            raise ConfigError(f"key 'model.modalities': {missing} not provided by dataset '{config.data.name}' "
                              f"(it has {sorted(provided)})")
    if n is None:
        return
    tc = config.train
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    per_rank = math.ceil(n / world)
    ranks = f"{world} rank{'s' if world > 1 else ''}"
    if tc.batch_size > per_rank:
        raise ConfigError(f"key 'train.batch_size': {tc.batch_size} is more than the {per_rank} training samples "
                          f"per rank ({n} samples over {ranks}); no full batch can be formed")
    batches = per_rank // tc.batch_size
    if tc.grad_accum_steps > batches:
        raise ConfigError(f"key 'train.grad_accum_steps': {tc.grad_accum_steps} batches per optimiser step, but an "
                          f"epoch has only {batches} batches of {tc.batch_size} per rank")


def check_resume_target(run_dir: Path) -> None:
    if not (Path(run_dir) / "checkpoints").is_dir():
        what = "does not exist" if not Path(run_dir).exists() else "holds no checkpoints folder"
        raise NoCheckpointError(f"--resume: {run_dir} {what}; there is nothing to resume")


def check_train(config: ExperimentConfig, run_dir: Path | None, resume: bool) -> None:
    """Every check above, in the order a user would fix them."""
    check_model_size(config)
    check_data(config)
    check_device(config)
    check_compile(config)
    if resume:
        check_resume_target(Path(run_dir) if run_dir else Path(config.out_dir) / config.name)
