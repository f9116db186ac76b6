"""One optimiser step: forward, loss, backward over gradient-accumulated micro-batches, clipping, the update,
non-finite bookkeeping and the compiled variants of the forward + loss.

The hot path never synchronises the host with the device: the logged values travel as one device vector
(names fixed at the first step), the non-finite flags stay on the device, and both reach the host only
when the loop asks (`check_finite`, at log and checkpoint steps).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from mmvae import distributed
from mmvae.batch import batch_to
from mmvae.config import ExperimentConfig
from mmvae.families.base import MultimodalModel
from mmvae.losses import compute_loss


class NonFiniteLossError(RuntimeError):
    """A loss term or the gradient norm became NaN/inf; raised identically on every rank."""


class TrainStep:
    """Owns the DDP wrapper, autocast, torch.compile and the non-finite flags of one run."""

    def __init__(self, model: MultimodalModel, optimizer: torch.optim.Optimizer, lr_scales: list[float],
                 config: ExperimentConfig, env: distributed.DistEnv, compile_mode: str | None = None):
        tc = config.train
        self.model, self.optimizer, self.lr_scales, self.config, self.env = model, optimizer, lr_scales, config, env
        on_cuda = env.device.type == "cuda"
        self.ddp = DDP(model, device_ids=[env.device.index] if on_cuda else None) if env.is_distributed else None
        self.gather = distributed.all_gather_with_grad if (config.loss.mmd_gather and env.is_distributed) else None
        self.autocast = torch.autocast(env.device.type, dtype=torch.bfloat16) if tc.precision == "bf16" else nullcontext()
        self.schedules_end = config.loss.schedules_end  # no loss weight changes from this step on
        # forward + loss. Single process: compile both as one graph. DDP: compile the wrapped module (the
        # documented route, which splits the graph at gradient buckets so all-reduce overlaps backward).
        self.forward = self.ddp if self.ddp is not None else model
        self._forward_loss_fn = self._forward_loss_during_warmup = self._forward_loss
        # CUDA graphs ("reduce-overhead") are used in one process only; they replay fixed scalars, so the
        # steps of the weight warm-ups (where the loss changes with the step) run a default-mode graph.
        self.cudagraphs = bool(tc.compile and self.ddp is None and compile_mode and "reduce-overhead" in compile_mode)
        if tc.compile:
            if self.ddp is not None:
                no_graphs = compile_mode if not (compile_mode and "reduce-overhead" in compile_mode) else None
                self.forward = torch.compile(self.ddp, mode=no_graphs)
            else:
                self._forward_loss_fn = torch.compile(self._forward_loss, mode=compile_mode)
                self._forward_loss_during_warmup = (torch.compile(self._warmup_forward_loss) if self.cudagraphs
                                                    else self._forward_loss_fn)
        self.log_names: list[str] | None = None
        self._first_bad: Tensor | None = None  # (terms,) long: first step at which each term was non-finite, or -1

    def _forward_loss(self, batch: dict, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward and composite loss: (total, detached terms keyed for logging). Compiled as one graph."""
        out = self.forward(batch)
        loss = compute_loss(self.model, out, batch, self.config.loss, step, self.gather)
        return loss.total, loss.as_log()

    def _warmup_forward_loss(self, batch: dict, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The same as _forward_loss; a separate code object, so that it gets its own compiled graph."""
        return self._forward_loss(batch, step)

    def set_lr(self, lr: float) -> None:
        """The scheduled LR, times each parameter group's lr_scale."""
        for group, scale in zip(self.optimizer.param_groups, self.lr_scales):
            group["lr"] = lr if scale == 1.0 else lr * scale

    def __call__(self, micro_batches: list[dict], step: int, lr: float) -> Tensor:
        """Forward/backward over the micro-batches, clip, update; returns the logged values as one device vector
        ordered as `log_names` (loss terms, total, grad_norm). No .item(), no Python branch on a device value."""
        if not self.model.training:
            self.model.train()
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # outputs of the previous step's graphs may be reused
        self.set_lr(lr)
        n = len(micro_batches)
        logged: Tensor | None = None
        # The loss depends on the step only through the weight schedules, which are constant from
        # schedules_end on: clamping keeps a compiled graph from being re-specialised (or, with CUDA
        # graphs, re-recorded) at every step, and changes no value.
        loss_step = min(step, self.schedules_end) if self.config.train.compile else step
        forward_loss = self._forward_loss_during_warmup if step < self.schedules_end else self._forward_loss_fn
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
        logged = clip_and_update(self.model, self.optimizer, self.config.train.grad_clip, logged)
        self.optimizer.zero_grad(set_to_none=True)
        self._first_bad = note_non_finite(self._first_bad, logged, step)
        return logged

    def check_finite(self) -> None:
        """Synchronise the non-finite flags across ranks; every rank raises the same error."""
        raise_if_non_finite(self._first_bad, self.log_names, self.env)


def clip_and_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip: float | None,
                    values: Tensor) -> Tensor:
    """Clip the gradients (foreach, no sync), take the optimiser step; returns `values` (terms,) with the
    pre-clip gradient norm appended: the logged vector (terms + 1,)."""
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"), foreach=True)
    optimizer.step()
    return torch.cat([values, grad_norm.detach().float().reshape(1)])


def note_non_finite(first_bad: Tensor | None, values: Tensor, step: int | Tensor) -> Tensor:
    """`first_bad` (values,) long — per logged value, the step + 1 at which it was first non-finite, or -1 —
    updated in place with this step's `values` (made on the first call). Device tensors only: no sync, and the
    same buffer at every step, as a CUDA graph needs."""
    if first_bad is None:
        first_bad = torch.full(values.shape, -1, dtype=torch.long, device=values.device)
    newly_bad = ~torch.isfinite(values) & (first_bad < 0)
    first_bad.copy_(torch.where(newly_bad, step + 1, first_bad))
    return first_bad


def raise_if_non_finite(first_bad: Tensor | None, names: list[str] | None, env: distributed.DistEnv) -> None:
    """Raise NonFiniteLossError (the same on every rank) if any rank's `first_bad` (values,) — the first step + 1
    at which each logged value was non-finite, -1 where never — flags a value. Synchronises the host."""
    if first_bad is None or names is None:
        return
    # (world, terms) of first-bad-step + 1, zero where fine; each rank fills its own row, then a sum shares them.
    table = torch.zeros((env.world_size, len(names)), dtype=torch.long, device=env.device)
    table[env.rank] = first_bad + 1
    if env.is_distributed:
        dist.all_reduce(table)
    table = (table - 1).cpu()
    bad = (table >= 0).nonzero().tolist()
    if bad:
        details = ", ".join(f"'{names[t]}' at step {int(table[r, t])} on rank {r}" for r, t in bad)
        raise NonFiniteLossError(f"non-finite values: {details}; stopping (last good checkpoint kept)")
