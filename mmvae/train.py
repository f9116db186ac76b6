"""The training loop: read it top to bottom.

    setup (devices, DDP) -> seed -> model, optimiser, data -> [resume] -> loop:
        lr(step) -> grad-accumulated forward/backward -> clip -> step -> log / eval / checkpoint

Resume is exact: the checkpoint holds weights, optimiser moments, step, epoch, position in the
epoch and every RNG state of every rank; the loader's order depends on (seed, epoch) only, and the
LR is a pure function of the step, so nothing else needs saving.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from mmvae import distributed
from mmvae.checkpoint import (
    CheckpointError,
    check_state_dict_compatible,
    load_latest,
    restore_rng_state,
    rng_state_to_json,
    save_checkpoint,
)
from mmvae.config import ExperimentConfig, config_to_yaml
from mmvae.data.loader import ShuffledBatches
from mmvae.data.registry import build_sources
from mmvae.data.source import BatchSource, batch_to
from mmvae.losses import compute_loss
from mmvae.model import FactorizedMultimodalVAE
from mmvae.tracking import Tracker

# Config sections that may change between a run and its resumption without breaking exactness.
RESUMABLE_CHANGES = {"name", "out_dir", "logging", "train.epochs", "train.max_steps", "train.eval_every",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "train.eval_batches"}


class NonFiniteLossError(RuntimeError):
    """A loss term or the gradient norm became NaN/inf; raised identically on every rank."""


@dataclass
class Position:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # optimiser steps done within `epoch`


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, total_steps: int, cfg) -> float:
    """Linear warm-up, then constant or cosine decay to lr * min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


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
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    """Inverse of optimizer_to_tensors."""
    state: dict[int, dict] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


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


def _check_resumable(saved: dict, current: ExperimentConfig, path: Path) -> None:
    diffs = config_differences(saved, current.model_dump(mode="json"))
    blocking = [d for d in diffs if not any(d == r or d.startswith(r + ".") for r in RESUMABLE_CHANGES)]
    if blocking:
        raise CheckpointError(f"{path}: checkpoint was made with a different config; differing keys: {blocking}")


class Trainer:
    """Holds the pieces of one run; `fit()` trains until the configured number of steps."""

    def __init__(self, config: ExperimentConfig, run_dir: Path, resume: bool = False):
        self.config, self.run_dir = config, Path(run_dir)
        tc = config.train
        self.env = distributed.setup(tc.device, tc.dist_timeout_s)
        seed_everything(config.seed)  # identical initial weights on every rank
        self.model = FactorizedMultimodalVAE(config.model).to(self.env.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
        train_src, test_src = build_sources(config)
        if config.data.on_device:
            train_src, test_src = train_src.to(self.env.device), test_src.to(self.env.device)
        self.train_source: BatchSource = train_src
        self.test_source: BatchSource = test_src
        self.loader = ShuffledBatches(train_src, tc.batch_size, config.seed, True, self.env.rank, self.env.world_size)
        self.steps_per_epoch = self.loader.batches_per_epoch // tc.grad_accum_steps
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"train.grad_accum_steps={tc.grad_accum_steps} exceeds the {self.loader.batches_per_epoch} batches per epoch"
            )
        self.total_steps = min(tc.max_steps or 10**18, tc.epochs * self.steps_per_epoch)
        self.position = Position()
        self.ddp = DDP(self.model, device_ids=[self.env.device.index] if self.env.device.type == "cuda" else None) \
            if self.env.is_distributed else None
        self.forward = self.ddp if self.ddp is not None else self.model
        if tc.compile:
            self.forward = torch.compile(self.forward)
        self.gather = distributed.all_gather_with_grad if (config.loss.mmd_gather and self.env.is_distributed) else None
        self.autocast = torch.autocast(self.env.device.type, dtype=torch.bfloat16) if tc.precision == "bf16" else nullcontext()
        # Non-finite bookkeeping lives on the device so the hot path never synchronises with the host.
        self._bad_terms: dict[str, Tensor] = {}
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        elif self.env.is_main and load_latest_exists(self.run_dir):
            raise FileExistsError(
                f"run folder {self.run_dir} already holds checkpoints; pass --resume to continue it or choose another --run-dir"
            )
        if not resume:
            torch.manual_seed(config.seed + 7919 * (self.env.rank + 1))  # distinct sampling noise per rank
        self.tracker = Tracker(self.run_dir, config, enabled=self.env.is_main)
        if self.env.is_main:
            (self.run_dir / "config.yaml").write_text(config_to_yaml(config))
            provenance = getattr(self.train_source, "provenance", {})
            (self.run_dir / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str))

    # --- checkpoints ---------------------------------------------------------------------------
    def _rng_states_of_all_ranks(self) -> list:
        mine = rng_state_to_json()
        if not self.env.is_distributed:
            return [mine]
        everyone: list = [None] * self.env.world_size
        dist.all_gather_object(everyone, mine)
        return everyone

    def save(self) -> None:
        """Checkpoint from rank 0 (RNG states of every rank included)."""
        rng = self._rng_states_of_all_ranks()
        if self.env.is_main:
            opt_tensors, opt_meta = optimizer_to_tensors(self.optimizer)
            state = {
                "position": asdict(self.position),
                "config": self.config.model_dump(mode="json"),
                "optimizer": opt_meta,
                "rng": rng,
                "world_size": self.env.world_size,
            }
            save_checkpoint(
                self.run_dir,
                self.position.step,
                {"model": self.model.state_dict(), "optimizer": opt_tensors},
                state,
                keep_last=self.config.train.keep_checkpoints,
            )
        distributed.barrier()

    def _resume(self) -> None:
        ckpt = load_latest(self.run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint found in {self.run_dir / 'checkpoints'}")
        _check_resumable(ckpt.state["config"], self.config, ckpt.path)
        if ckpt.state["world_size"] != self.env.world_size:
            raise CheckpointError(
                f"{ckpt.path}: saved with {ckpt.state['world_size']} rank(s), resuming with {self.env.world_size}"
            )
        expected = self.model.state_dict()
        check_state_dict_compatible(expected, ckpt.tensors["model"], ckpt.path)
        self.model.load_state_dict(ckpt.tensors["model"])
        optimizer_from_tensors(self.optimizer, ckpt.tensors["optimizer"], ckpt.state["optimizer"])
        self.position = Position(**ckpt.state["position"])
        restore_rng_state(ckpt.state["rng"][self.env.rank])

    # --- one optimiser step -------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict]) -> dict[str, Tensor]:
        """Forward/backward over the micro-batches, clip, step; returns detached loss terms."""
        self.model.train()
        lr = lr_at(self.position.step, self.total_steps, self.config.train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n = len(micro_batches)
        logged: dict[str, Tensor] = {}
        for i, batch in enumerate(micro_batches):
            batch = batch_to(batch, self.env.device)
            sync = self.ddp.no_sync() if (self.ddp is not None and i < n - 1) else nullcontext()
            with sync:
                with self.autocast:
                    out = self.forward(batch)
                    loss = compute_loss(self.model, out, batch, self.config.loss, self.position.step, self.gather)
                (loss.total / n).backward()
            for k, v in loss.as_log().items():
                logged[k] = logged.get(k, 0) + v.float() / n
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.config.train.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        logged["grad_norm"] = grad_norm.detach()
        self._note_non_finite(logged)
        return logged

    def _note_non_finite(self, values: dict[str, Tensor]) -> None:
        """Remember, per term, the first step at which it was non-finite (device tensors; no sync)."""
        step = torch.tensor(self.position.step + 1, device=self.env.device)
        for k, v in values.items():
            first = self._bad_terms.setdefault(k, torch.full((), -1, dtype=torch.long, device=self.env.device))
            newly_bad = (~torch.isfinite(v)) & (first < 0)
            self._bad_terms[k] = torch.where(newly_bad, step, first)

    def check_finite(self) -> None:
        """Synchronise the non-finite flags across ranks; every rank raises the same error."""
        if not self._bad_terms:
            return
        names = sorted(self._bad_terms)
        # (world, terms) of first-bad-step + 1, zero where fine; each rank fills its own row, then a sum shares them.
        table = torch.zeros((self.env.world_size, len(names)), dtype=torch.long, device=self.env.device)
        table[self.env.rank] = torch.stack([self._bad_terms[k] for k in names]) + 1
        if self.env.is_distributed:
            dist.all_reduce(table)
        table = table - 1
        bad = (table >= 0).nonzero().tolist()
        if bad:
            details = ", ".join(f"'{names[t]}' at step {int(table[r, t])} on rank {r}" for r, t in bad)
            raise NonFiniteLossError(f"non-finite values: {details}; stopping (last good checkpoint kept)")

    # --- evaluation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss terms and joint-factor label accuracy on the first eval_batches test batches.

        Runs under a forked RNG with a fixed seed, so it neither perturbs training nor varies between runs.
        """
        self.model.eval()
        devices = [self.env.device] if self.env.device.type == "cuda" else []
        totals: dict[str, float] = {}
        correct = count = 0
        loader = ShuffledBatches(self.test_source, self.config.train.batch_size, seed=0, shuffle=False, drop_last=False)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed)
            for i, batch in enumerate(loader.epoch(0)):
                if i >= self.config.train.eval_batches:
                    break
                batch = batch_to(batch, self.env.device)
                with self.autocast:
                    out = self.model(batch)
                    loss = compute_loss(self.model, out, batch, self.config.loss, self.position.step)
                for k, v in loss.as_log("eval/").items():
                    totals[k] = totals.get(k, 0.0) + float(v)
                if out.logits is not None:
                    pred = self.model.classify(out.posteriors.joint.mu).argmax(-1)
                    known = batch["y"] >= 0
                    correct += int((pred[known] == batch["y"][known]).sum())
                    count += int(known.sum())
        n = min(self.config.train.eval_batches, loader.batches_per_epoch)
        metrics = {k: v / n for k, v in totals.items()}
        if count:
            metrics["eval/label_accuracy"] = correct / count
        return metrics

    # --- the loop -----------------------------------------------------------------------------------
    def fit(self, stop_at_step: int | None = None) -> dict:
        """Train to total_steps (or stop after `stop_at_step`, checkpointing there); returns a summary."""
        tc = self.config.train
        accum = tc.grad_accum_steps
        pos = self.position
        started, start_step = time.time(), pos.step
        progress = None
        if self.env.is_main and self.config.logging.progress_bar:
            from tqdm import tqdm

            progress = tqdm(total=self.total_steps, initial=pos.step, desc=self.config.name, disable=None)
        eval_metrics: dict[str, float] = {}
        running: dict[str, Tensor] = {}
        steps_in_window = 0
        stopped_early = False
        while pos.step < self.total_steps:
            batches = self.loader.epoch(pos.epoch, pos.batch_in_epoch * accum)
            while pos.batch_in_epoch < self.steps_per_epoch and pos.step < self.total_steps:
                values = self.train_step([next(batches) for _ in range(accum)])
                for k, v in values.items():
                    running[k] = running.get(k, 0) + v
                steps_in_window += 1
                pos.step += 1
                pos.batch_in_epoch += 1
                if pos.batch_in_epoch == self.steps_per_epoch:
                    pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
                last = pos.step == self.total_steps or pos.step == stop_at_step
                if pos.step % tc.log_every == 0 or pos.step % tc.checkpoint_every == 0 or last:
                    self.check_finite()
                    self._log_window(running, steps_in_window, progress)
                    running, steps_in_window = {}, 0
                if pos.step % tc.eval_every == 0 or last:
                    eval_metrics = self.evaluate() if self.env.is_main else {}
                    self.tracker.log(pos.step, eval_metrics)
                if pos.step % tc.checkpoint_every == 0 or last:
                    self.save()
                if pos.step == stop_at_step:
                    stopped_early = True
                    break
                if pos.batch_in_epoch == 0:
                    break  # epoch finished: draw the next epoch's order
            if stopped_early:
                break
        if progress is not None:
            progress.close()
        summary = {
            "steps": pos.step,
            "epochs_completed": pos.epoch,
            "seconds": time.time() - started,
            "steps_this_session": pos.step - start_step,
            "finished": pos.step >= self.total_steps,
            **eval_metrics,
        }
        if self.env.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.tracker.close()
        return summary

    def _log_window(self, running: dict[str, Tensor], n: int, progress) -> None:
        if n == 0:
            return
        names = sorted(running)
        means = distributed.all_reduce_mean(torch.stack([running[k] / n for k in names]).float())
        if self.env.is_main:
            values = dict(zip(names, means.tolist()))
            values["lr"] = self.optimizer.param_groups[0]["lr"]
            values["epoch"] = self.position.epoch
            self.tracker.log(self.position.step, values)
            if progress is not None:
                progress.n = self.position.step
                progress.set_postfix(loss=f"{values['loss/total']:.3f}", refresh=False)
                progress.refresh()


def load_latest_exists(run_dir: Path) -> bool:
    """Whether a run folder already holds a checkpoint pointer or folder."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    return ckpt_dir.is_dir() and any(p.name.startswith("step_") and ".tmp" not in p.name for p in ckpt_dir.iterdir())


def train(config: ExperimentConfig, run_dir: Path | None = None, resume: bool = False, stop_at_step: int | None = None) -> dict:
    """Train one run; returns the summary. The process group is torn down on exit."""
    run_dir = Path(run_dir) if run_dir else Path(config.out_dir) / config.name
    try:
        trainer = Trainer(config, run_dir, resume=resume)
        return trainer.fit(stop_at_step=stop_at_step)
    finally:
        distributed.teardown()
