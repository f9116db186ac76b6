"""The training loop: read it top to bottom.

    setup (devices, DDP) -> seed -> model, optimiser, data -> [resume] -> loop:
        lr(step) -> step (train_step.TrainStep; train_graph.GraphedTrainStep under train.cuda_graph)
                 -> log / eval (evaluate.py) / checkpoint (train_state.py)

Resume is exact: the checkpoint holds weights, optimiser moments, step, epoch, position in the
epoch and every RNG state of every rank; the loader's order depends on (seed, epoch) only, and the
LR is a pure function of the step, so nothing else needs saving (see train_state.py).

Under torchrun (WORLD_SIZE > 1) the model is wrapped in DDP; rank 0 alone reads and writes the run
folder, and decisions that depend on it are broadcast so that every rank takes them alike (see
docs/distributed.md). The hot path never synchronises the host with the device (see train_step.py).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from mmvae import distributed
from mmvae.checkpoint import restore_rng_state, rng_state_to_json
from mmvae.config import ExperimentConfig, config_to_yaml
from mmvae.data.labels import LabelFractionSource, with_label_fraction
from mmvae.data.loader import build_loader
from mmvae.data.registry import build_sources
from mmvae.data.source import BatchSource
from mmvae.evaluate import in_training_metrics
from mmvae.families import build_model
from mmvae.losses import check_loss_config
from mmvae.progress import Progress
from mmvae.runlock import RunLock
from mmvae.tracking import Tracker
from mmvae.train_state import (  # noqa: F401  (re-exported: their old home)
    RESUMABLE_CHANGES,
    Position,
    check_resumable,
    config_differences,
    load_for_resume,
    load_latest_exists,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_training_state,
    seed_everything,
)
from mmvae.train_graph import GraphedTrainStep, check_graph_config, graph_optimizer_lr
from mmvae.train_step import NonFiniteLossError, TrainStep

_check_resumable = check_resumable  # the old private name


def lr_at(step: int, total_steps: int, cfg) -> float:
    """Linear warm-up, then constant or cosine decay to lr * min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


class Trainer:
    """Holds the pieces of one run; `fit()` trains until the configured number of steps."""

    def __init__(self, config: ExperimentConfig, run_dir: Path | None, resume: bool = False,
                 compile_mode: str | None = None, sources: tuple[BatchSource, BatchSource] | None = None,
                 lock: RunLock | None = None, on_corrupt: str = "fallback", graph_capture: bool = True):
        """`run_dir` None trains in memory: nothing is written (no checkpoints, logs or config).
        `compile_mode` goes to torch.compile when train.compile is set (None: its default mode);
        `sources` = (train, test) replaces the sources named by config.data (benchmarks, tests).
        `lock` is the run folder's writer lock (made here when None); `on_corrupt` ("fallback" or "error")
        decides what a corrupt newest checkpoint does at resume. `graph_capture` False runs a `train.cuda_graph`
        step uncaptured (on any device: the reference a captured step is compared with; tests)."""
        if run_dir is None and resume:
            raise ValueError("resume needs a run folder")
        self.config, self.run_dir = config, (Path(run_dir) if run_dir is not None else None)
        tc = config.train
        compile_mode = compile_mode or tc.compile_mode
        self.env = distributed.setup(tc.device, tc.dist_timeout_s)
        on_cuda = self.env.device.type == "cuda"
        check_graph_config(config, self.env.world_size, self.env.device, graph_capture)
        seed_everything(config.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        self.model = build_model(config.model).to(self.env.device)
        check_loss_config(self.model, config.loss)
        groups = self.model.param_groups(tc)
        self.lr_scales = [float(g.pop("lr_scale", 1.0)) for g in groups]
        for group, scale in zip(groups, self.lr_scales):
            if scale == 0.0:  # a frozen group: no gradients, no optimiser state
                for p in group["params"]:
                    p.requires_grad_(False)
        groups = [g for g, scale in zip(groups, self.lr_scales) if scale != 0.0]
        self.lr_scales = [scale for scale in self.lr_scales if scale != 0.0]
        # fused: one multi-tensor kernel per step (CUDA), 7x faster than the default for-loop on CPU. A captured
        # step needs the LR in a device tensor and the update capturable.
        graphed = tc.cuda_graph
        if graphed:  # one LR tensor per group: AdamW would give every group the same default tensor object
            for group, scale in zip(groups, self.lr_scales):
                group["lr"] = graph_optimizer_lr(tc.lr * scale, self.env.device)
        self.optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay, fused=True,
                                           capturable=graphed and graph_capture)
        train_src, test_src = sources if sources is not None else build_sources(config)
        # Few labels (data.label_fraction): only the training batches lose labels; evaluation reads test_src and
        # `mmvae evaluate` builds its own sources, both with every label.
        train_src = with_label_fraction(train_src, config.data.label_fraction, config.seed)
        if config.data.on_device:
            train_src, test_src = train_src.to(self.env.device), test_src.to(self.env.device)
        self.train_source: BatchSource = train_src
        self.test_source: BatchSource = test_src
        self.loader = build_loader(train_src, config.data.loader, tc.batch_size, config.seed, self.env.rank,
                                   self.env.world_size, num_workers=config.data.num_workers,
                                   pin_memory=on_cuda and train_src.device.type == "cpu", as_indices=graphed)
        self.steps_per_epoch = self.loader.batches_per_epoch // tc.grad_accum_steps
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"train.grad_accum_steps={tc.grad_accum_steps} exceeds the {self.loader.batches_per_epoch} batches per epoch"
            )
        # One rule: train.max_steps, when set, is the run's length (the loader runs as many epochs as it takes);
        # train.epochs sets the length only when max_steps is null.
        self.total_steps = tc.max_steps if tc.max_steps is not None else tc.epochs * self.steps_per_epoch
        self.position = Position()
        self.schedule_steps = self.total_steps  # the LR schedule's length, fixed at the run's start
        self._window: tuple[Tensor | None, int] = (None, 0)  # restored by a resume
        self.step: TrainStep | GraphedTrainStep = (
            GraphedTrainStep(self.model, self.optimizer, self.lr_scales, config, self.env, train_src, graph_capture,
                             compile_mode) if graphed
            else TrainStep(self.model, self.optimizer, self.lr_scales, config, self.env, compile_mode))
        writes = self.run_dir is not None
        self.on_corrupt, self.fell_back_from = on_corrupt, []
        self.lock = (lock or RunLock(self.run_dir)) if writes else None
        if writes:  # one writer per run folder: rank 0 takes the lock (before it creates the folder), all get its verdict
            distributed.decide_on_main(self.lock.acquire)
        if self.env.is_main and writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        elif writes:
            distributed.decide_on_main(self._refuse_existing_run)  # same decision on every rank
        if not resume:
            torch.manual_seed(config.seed + 7919 * (self.env.rank + 1))  # distinct sampling noise per rank
        self.tracker = Tracker(self.run_dir, config, enabled=self.env.is_main and writes)
        if self.env.is_main and writes:
            (self.run_dir / "config.yaml").write_text(config_to_yaml(config))
            provenance = getattr(self.train_source, "provenance", {})
            (self.run_dir / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str))

    # Views of the step's pieces, under the names the first version had.
    @property
    def ddp(self):
        return self.step.ddp

    @property
    def autocast(self):
        return self.step.autocast

    @property
    def log_names(self) -> list[str] | None:
        return self.step.log_names

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

    def _gather_objects(self, mine) -> list:
        """Every rank's `mine`, in rank order (a list of one in a single process)."""
        if not self.env.is_distributed:
            return [mine]
        everyone: list = [None] * self.env.world_size
        dist.all_gather_object(everyone, mine)
        return everyone

    def save(self, window: tuple[Tensor | None, int] = (None, 0)) -> None:
        """Checkpoint from rank 0: RNG states and the unlogged part of the log window of every rank included."""
        rng = self._rng_states_of_all_ranks()
        running, steps = window
        windows = self._gather_objects({"steps": steps, "names": self.log_names,
                                        "sum": None if running is None else running.cpu().tolist()})
        if self.env.is_main:
            extra = {"log_window": windows, "schedule_steps": self.schedule_steps}
            save_training_state(self.run_dir, self.model, self.optimizer, self.position, self.config, rng,
                                self.env.world_size, extra)
        distributed.barrier()

    def _restore_window(self, state: dict) -> tuple[Tensor | None, int]:
        """This rank's unlogged window from a checkpoint (float32 sums round-trip exactly through JSON)."""
        windows = state.get("log_window") or []
        mine = windows[self.env.rank] if self.env.rank < len(windows) else None
        if not mine or not mine.get("steps") or mine.get("sum") is None:
            return None, 0
        self.step.log_names = list(mine["names"])
        return torch.tensor(mine["sum"], dtype=torch.float32, device=self.env.device), int(mine["steps"])

    def _truncate_log(self, step: int) -> None:
        """Drop metrics.jsonl lines after the checkpoint's step (a run killed after logging them logs them again)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            tmp = path.with_name(path.name + ".tmp-truncate")
            tmp.write_text("".join(kept))
            tmp.replace(path)

    def _resume(self) -> None:
        # Only rank 0 reads the run folder (other nodes need not share a filesystem); every rank then
        # loads the same tensors, or raises the same error.
        ckpt = distributed.decide_on_main(
            lambda: load_for_resume(self.run_dir, self.config, self.env.world_size, self.model, self.optimizer,
                                    self.steps_per_epoch, self.on_corrupt))
        self.fell_back_from = ckpt.fell_back_from  # newer checkpoints rejected, reported in the summary
        self._window = self._restore_window(ckpt.state)
        # The LR schedule is fixed when a run starts: extending it (a larger max_steps or epochs on resume)
        # continues at the schedule's final value instead of re-shaping the steps already taken.
        self.schedule_steps = int(ckpt.state.get("schedule_steps") or self.total_steps)
        if self.env.is_main:
            self._truncate_log(ckpt.state["position"]["step"])
        self.model.load_state_dict(ckpt.tensors["model"])
        optimizer_from_tensors(self.optimizer, ckpt.tensors["optimizer"], ckpt.state["optimizer"])
        self.position = Position(**ckpt.state["position"])
        restore_rng_state(ckpt.state["rng"][self.env.rank])

    # --- one optimiser step -------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict]) -> dict[str, Tensor]:
        """Forward/backward over the micro-batches, clip, step; returns detached loss terms and grad_norm."""
        return dict(zip(self.log_names or [], self._train_step(micro_batches).unbind()))

    def _train_step(self, micro_batches: list[dict]) -> Tensor:
        """train_step, returning the logged values as one device vector ordered as `self.log_names`."""
        step = self.position.step
        return self.step(micro_batches, step, lr_at(step, self.schedule_steps, self.config.train))

    def check_finite(self) -> None:
        self.step.check_finite()

    # --- evaluation ---------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Mean loss terms and joint-factor label accuracy on the first eval_batches test batches (evaluate.py)."""
        tc = self.config.train
        return in_training_metrics(self.model, self.test_source, self.config.loss, self.position.step, tc.batch_size,
                                   tc.eval_batches, self.config.seed, self.env.device, self.autocast)

    # --- the loop -----------------------------------------------------------------------------------
    def fit(self, stop_at_step: int | None = None) -> dict:
        """Train to total_steps (or stop after `stop_at_step`, checkpointing there); returns a summary."""
        tc = self.config.train
        accum = tc.grad_accum_steps
        pos = self.position
        started, start_step = time.time(), pos.step
        progress = Progress(self.total_steps, self.config.name, "step", initial=pos.step,
                            enabled=self.env.is_main and self.config.logging.progress_bar)
        if pos.step >= self.total_steps:
            progress.event(f"the run is already at step {pos.step:,} of {self.total_steps:,}: nothing to train "
                           "(raise train.max_steps or train.epochs to continue it)")
        eval_metrics: dict[str, float] = {}
        # Sum of logged vectors since the last log line, and its step count; a checkpoint saves the window, so a
        # resumed run's log equals the uninterrupted one (lines only at multiples of log_every and the last step).
        running, steps_in_window = self._window
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
                final = pos.step == self.total_steps
                stop = pos.step == stop_at_step
                checkpoint = (pos.step % tc.checkpoint_every == 0 or final or stop) and self.run_dir is not None
                if pos.step % tc.log_every == 0 or final or checkpoint:
                    self.check_finite()  # never checkpoint a non-finite step
                if pos.step % tc.log_every == 0 or final:
                    self._log_window(running, steps_in_window, progress)
                    running, steps_in_window = None, 0
                if pos.step % tc.eval_every == 0 or final:
                    eval_metrics = self.evaluate() if self.env.is_main else {}
                    self.tracker.log(pos.step, eval_metrics)
                    progress.event(f"eval at step {pos.step:,}: " + ", ".join(
                        f"{k.removeprefix('eval/')} {v:.4g}" for k, v in eval_metrics.items()
                        if k in ("eval/total", "eval/label_accuracy")))
                if checkpoint:
                    self.save((running, steps_in_window))
                    progress.event(f"checkpoint at step {pos.step:,}")
                if stop:
                    stopped_early = True
                    break
                if pos.batch_in_epoch == 0:
                    break  # epoch finished: draw the next epoch's order
            if stopped_early:
                break
        progress.close()
        summary = {
            "steps": pos.step,
            "total_steps": self.total_steps,
            "epochs_completed": pos.epoch,
            "seconds": time.time() - started,
            "steps_this_session": pos.step - start_step,
            "finished": pos.step >= self.total_steps,
            "fell_back_from": self.fell_back_from,  # newer checkpoints rejected at resume ([] if none)
            **({"labels": self.train_source.summary} if isinstance(self.train_source, LabelFractionSource) else {}),
            **eval_metrics,
        }
        if self.env.is_main and self.run_dir is not None:
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
            values["lr"] = float(self.optimizer.param_groups[0]["lr"])  # a tensor under train.cuda_graph
            values["epoch"] = self.position.epoch
            self.tracker.log(self.position.step, values)
            progress.update(self.position.step, loss=values["loss/total"], grad_norm=values["grad_norm"])


def train(config: ExperimentConfig, run_dir: Path | None = None, resume: bool = False, stop_at_step: int | None = None,
          on_corrupt: str = "fallback") -> dict:
    """Train one run into `run_dir` (default: <out_dir>/<name>); returns the summary. The process group is torn
    down on exit. To train without a run folder, use `Trainer(config, None).fit()` (see mmvae.api.fit)."""
    run_dir = Path(run_dir) if run_dir else Path(config.out_dir) / config.name
    lock = RunLock(run_dir)  # taken by the Trainer on rank 0, released here however training ends
    try:
        trainer = Trainer(config, run_dir, resume=resume, lock=lock, on_corrupt=on_corrupt)
        return trainer.fit(stop_at_step=stop_at_step)
    finally:
        lock.release()
        distributed.teardown()
