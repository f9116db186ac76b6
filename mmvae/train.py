"""The training loop: read it top to bottom.

    setup (devices, DDP) -> seed -> model, optimiser, data -> [resume] -> loop:
        lr(step) -> grad-accumulated forward/backward -> clip -> step -> log / eval / checkpoint

Resume is exact: the checkpoint holds weights, optimiser moments, step, epoch, position in the
epoch and every RNG state of every rank; the loader's order depends on (seed, epoch) only, and the
LR is a pure function of the step, so nothing else needs saving.

Under torchrun (WORLD_SIZE > 1) the model is wrapped in DDP; rank 0 alone reads and writes the run
folder, and decisions that depend on it are broadcast so that every rank takes them alike (see
docs/distributed.md). The hot path never synchronises the host with the device: the logged values
travel as one device vector, non-finite flags stay on the device, and both are brought to the host
only at log and checkpoint steps.
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
    restore_rng_state,
    rng_state_to_json,
    save_checkpoint,
)
from mmvae.checkpoint_schema import load_valid_checkpoint  # issue 15
from mmvae.config import ExperimentConfig, config_to_yaml
from mmvae.data.loader import ShuffledBatches, build_loader
from mmvae.data.registry import build_sources
from mmvae.data.source import BatchSource, batch_to
from mmvae.losses import compute_loss
from mmvae.model import FactorizedMultimodalVAE
from mmvae.runlock import RunLock  # issue 15
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

    def __init__(self, config: ExperimentConfig, run_dir: Path, resume: bool = False, compile_mode: str | None = None,
                 sources: tuple[BatchSource, BatchSource] | None = None,
                 lock: RunLock | None = None, on_corrupt: str = "fallback"):  # issue 15
        """`compile_mode` goes to torch.compile when train.compile is set (None: its default mode);
        `sources` = (train, test) replaces the sources named by config.data (benchmarks, tests)."""
        self.config, self.run_dir = config, Path(run_dir)
        tc = config.train
        compile_mode = compile_mode or tc.compile_mode
        self.env = distributed.setup(tc.device, tc.dist_timeout_s)
        on_cuda = self.env.device.type == "cuda"
        seed_everything(config.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        self.model = FactorizedMultimodalVAE(config.model).to(self.env.device)
        # fused: one multi-tensor kernel per step (CUDA), 7x faster than the default for-loop on CPU.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, betas=tc.betas,
                                           weight_decay=tc.weight_decay, fused=True)
        train_src, test_src = sources if sources is not None else build_sources(config)
        if config.data.on_device:
            train_src, test_src = train_src.to(self.env.device), test_src.to(self.env.device)
        self.train_source: BatchSource = train_src
        self.test_source: BatchSource = test_src
        self.loader = build_loader(train_src, config.data.loader, tc.batch_size, config.seed, self.env.rank,
                                   self.env.world_size, num_workers=config.data.num_workers,
                                   pin_memory=on_cuda and train_src.device.type == "cpu")
        self.steps_per_epoch = self.loader.batches_per_epoch // tc.grad_accum_steps
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"train.grad_accum_steps={tc.grad_accum_steps} exceeds the {self.loader.batches_per_epoch} batches per epoch"
            )
        self.total_steps = min(tc.max_steps or 10**18, tc.epochs * self.steps_per_epoch)
        self.position = Position()
        self.ddp = DDP(self.model, device_ids=[self.env.device.index] if on_cuda else None) \
            if self.env.is_distributed else None
        self.gather = distributed.all_gather_with_grad if (config.loss.mmd_gather and self.env.is_distributed) else None
        # forward + loss. Single process: compile both as one graph. DDP: compile the wrapped module (the
        # documented route, which splits the graph at gradient buckets so all-reduce overlaps backward).
        self.forward = self.ddp if self.ddp is not None else self.model
        self._forward_loss_fn = self._forward_loss_during_warmup = self._forward_loss
        # CUDA graphs ("reduce-overhead") are used in one process only; they replay fixed scalars, so the
        # steps of the beta warm-up (where the loss changes with the step) run a default-mode graph.
        self._cudagraphs = bool(tc.compile and self.ddp is None and compile_mode and "reduce-overhead" in compile_mode)
        if tc.compile:
            if self.ddp is not None:
                no_graphs = compile_mode if not (compile_mode and "reduce-overhead" in compile_mode) else None
                self.forward = torch.compile(self.ddp, mode=no_graphs)
            else:
                self._forward_loss_fn = torch.compile(self._forward_loss, mode=compile_mode)
                self._forward_loss_during_warmup = (torch.compile(self._warmup_forward_loss) if self._cudagraphs
                                                    else self._forward_loss_fn)
        self.autocast = torch.autocast(self.env.device.type, dtype=torch.bfloat16) if tc.precision == "bf16" else nullcontext()
        # Logged values travel as one device vector per step (names fixed at the first step); the non-finite
        # bookkeeping lives on the device too, so the hot path never synchronises with the host.
        self.log_names: list[str] | None = None
        self._first_bad: Tensor | None = None  # (terms,) long: first step at which each term was non-finite, or -1
        # issue 15: one writer per run folder. Rank 0 takes the lock (it creates the folder), every rank gets its verdict.
        self.lock, self.on_corrupt, self.fell_back_from = lock or RunLock(self.run_dir), on_corrupt, []
        distributed.decide_on_main(self.lock.acquire)
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        else:
            distributed.decide_on_main(self._refuse_existing_run)  # same decision on every rank
        if not resume:
            torch.manual_seed(config.seed + 7919 * (self.env.rank + 1))  # distinct sampling noise per rank
        self.tracker = Tracker(self.run_dir, config, enabled=self.env.is_main)
        if self.env.is_main:
            (self.run_dir / "config.yaml").write_text(config_to_yaml(config))
            provenance = getattr(self.train_source, "provenance", {})
            (self.run_dir / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str))

    def _refuse_existing_run(self) -> None:
        if load_latest_exists(self.run_dir):
            raise FileExistsError(
                f"run folder {self.run_dir} already holds checkpoints; pass --resume to continue it or choose another --run-dir"
            )

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

    def _load_for_resume(self):
        """Rank 0: the newest verified checkpoint, checked against this run's config, world size and shapes."""
        # issue 15: newest checkpoint whose contents pass checkpoint_schema (else an older one, or a one-line refusal).
        ckpt = load_valid_checkpoint(self.run_dir, self.model, self.optimizer, self.on_corrupt, writer=True,
                                     steps_per_epoch=self.steps_per_epoch, config=self.config, world_size=self.env.world_size)
        _check_resumable(ckpt.state["config"], self.config, ckpt.path)
        if ckpt.state["world_size"] != self.env.world_size:
            raise CheckpointError(
                f"{ckpt.path}: saved with {ckpt.state['world_size']} rank(s), resuming with {self.env.world_size}"
            )
        check_state_dict_compatible(self.model.state_dict(), ckpt.tensors["model"], ckpt.path)
        return ckpt

    def _resume(self) -> None:
        # Only rank 0 reads the run folder (other nodes need not share a filesystem); every rank then
        # loads the same tensors, or raises the same error.
        ckpt = distributed.decide_on_main(self._load_for_resume)
        self.fell_back_from = ckpt.fell_back_from  # issue 15: reported in the summary
        self.model.load_state_dict(ckpt.tensors["model"])
        optimizer_from_tensors(self.optimizer, ckpt.tensors["optimizer"], ckpt.state["optimizer"])
        self.position = Position(**ckpt.state["position"])
        restore_rng_state(ckpt.state["rng"][self.env.rank])

    # --- one optimiser step -------------------------------------------------------------------------
    def _forward_loss(self, batch: dict, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward and composite loss: (total, detached terms keyed for logging). Compiled as one graph."""
        out = self.forward(batch)
        loss = compute_loss(self.model, out, batch, self.config.loss, step, self.gather)
        return loss.total, loss.as_log()

    def _warmup_forward_loss(self, batch: dict, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The same as _forward_loss; a separate code object, so that it gets its own compiled graph."""
        return self._forward_loss(batch, step)

    def train_step(self, micro_batches: list[dict]) -> dict[str, Tensor]:
        """Forward/backward over the micro-batches, clip, step; returns detached loss terms and grad_norm."""
        return dict(zip(self.log_names or [], self._train_step(micro_batches).unbind()))

    def _train_step(self, micro_batches: list[dict]) -> Tensor:
        """train_step, returning the logged values as one device vector ordered as `self.log_names`.

        No host-device synchronisation: no .item(), no Python branch on a device value.
        """
        if not self.model.training:
            self.model.train()
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # outputs of the previous step's graphs may be reused
        step = self.position.step
        lr = lr_at(step, self.total_steps, self.config.train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n = len(micro_batches)
        logged: Tensor | None = None
        # The loss depends on the step only through the beta warm-up (losses.beta_warmup), which is constant
        # from beta_warmup_end on: clamping keeps a compiled graph from being re-specialised (or, with CUDA
        # graphs, re-recorded) at every step, and changes no value.
        loss_step = min(step, self.config.loss.beta_warmup_end) if self.config.train.compile else step
        forward_loss = self._forward_loss_during_warmup if step < self.config.loss.beta_warmup_end else self._forward_loss_fn
        for i, batch in enumerate(micro_batches):
            batch = batch_to(batch, self.env.device)
            sync = self.ddp.no_sync() if (self.ddp is not None and i < n - 1) else nullcontext()
            with sync:
                with self.autocast:
                    total, terms = forward_loss(batch, loss_step)
                (total if n == 1 else total / n).backward()
            if self.log_names is None:
                self.log_names = [*terms, "grad_norm"]
            values = torch.stack([terms[k] for k in self.log_names[:-1]]).float()  # (terms,)
            logged = values if n == 1 else (values / n if logged is None else logged + values / n)
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.config.train.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"), foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        logged = torch.cat([logged, grad_norm.detach().float().reshape(1)])
        self._note_non_finite(logged)
        return logged

    def _note_non_finite(self, values: Tensor) -> None:
        """Remember, per term, the first step at which it was non-finite (device tensors; no sync)."""
        if self._first_bad is None:
            self._first_bad = torch.full(values.shape, -1, dtype=torch.long, device=values.device)
        newly_bad = ~torch.isfinite(values) & (self._first_bad < 0)
        self._first_bad = torch.where(newly_bad, self.position.step + 1, self._first_bad)

    def check_finite(self) -> None:
        """Synchronise the non-finite flags across ranks; every rank raises the same error."""
        if self._first_bad is None or self.log_names is None:
            return
        names = self.log_names
        # (world, terms) of first-bad-step + 1, zero where fine; each rank fills its own row, then a sum shares them.
        table = torch.zeros((self.env.world_size, len(names)), dtype=torch.long, device=self.env.device)
        table[self.env.rank] = self._first_bad + 1
        if self.env.is_distributed:
            dist.all_reduce(table)
        table = (table - 1).cpu()
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
                    with self.autocast:  # the posterior mean is bf16 under autocast; classify it the same way
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
        running: Tensor | None = None  # sum of logged vectors since the last log
        steps_in_window = 0
        stopped_early = False
        while pos.step < self.total_steps:
            batches = self.loader.epoch(pos.epoch, pos.batch_in_epoch * accum)
            while pos.batch_in_epoch < self.steps_per_epoch and pos.step < self.total_steps:
                values = self._train_step([next(batches) for _ in range(accum)])
                running = values if running is None else running + values
                steps_in_window += 1
                pos.step += 1
                pos.batch_in_epoch += 1
                if pos.batch_in_epoch == self.steps_per_epoch:
                    pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
                last = pos.step == self.total_steps or pos.step == stop_at_step
                if pos.step % tc.log_every == 0 or pos.step % tc.checkpoint_every == 0 or last:
                    self.check_finite()
                    self._log_window(running, steps_in_window, progress)
                    running, steps_in_window = None, 0
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
            "fell_back_from": self.fell_back_from,  # issue 15: newer checkpoints rejected at resume ([] if none)
            **eval_metrics,
        }
        if self.env.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.tracker.close()
        return summary

    def _log_window(self, running: Tensor | None, n: int, progress) -> None:
        """Mean of each logged value over the window and over ranks; rank 0 writes it."""
        if n == 0 or running is None or self.log_names is None:
            return
        means = distributed.all_reduce_mean(running / n)
        if self.env.is_main:
            values = dict(zip(self.log_names, means.tolist()))
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


def train(config: ExperimentConfig, run_dir: Path | None = None, resume: bool = False, stop_at_step: int | None = None,
          on_corrupt: str = "fallback") -> dict:  # issue 15: on_corrupt
    """Train one run; returns the summary. The process group is torn down on exit."""
    run_dir = Path(run_dir) if run_dir else Path(config.out_dir) / config.name
    lock = RunLock(run_dir)  # issue 15: taken by Trainer on rank 0, released here however training ends
    try:
        trainer = Trainer(config, run_dir, resume=resume, lock=lock, on_corrupt=on_corrupt)  # issue 15: lock, on_corrupt
        return trainer.fit(stop_at_step=stop_at_step)
    finally:
        lock.release()  # issue 15
        distributed.teardown()
