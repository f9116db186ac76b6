"""The whole optimiser step as one CUDA graph (`train.cuda_graph`): gather, forward, loss, backward, clipping,
AdamW and the non-finite bookkeeping, replayed with one graph launch per step.

Why: at batch 128 the GPU needs about 1 ms for a MNIST-SVHN step, while the host needs about 4 ms to launch it
(docs/bench_train.md). A graph replay costs the host a few microseconds. What the graph may not contain is
anything the host decides per step, so everything that changes from step to step lives in device tensors that
the host overwrites before each replay (small copies and fills, no synchronisation):

    index    (B,) long      the batch's sample indices; the graph gathers the batch from the device-held source
    step     () long        the optimiser step; the loss weights are read from `WeightTable` at it
    lr       ()             one per parameter group (AdamW with a tensor LR and capturable=True)

and everything the host reads back lives in device tensors the graph writes: the logged vector (terms, total,
grad_norm) and the first non-finite step of each logged value.

The same step runs uncaptured (`capture=False`, on a CPU and in the tests): that is the reference a captured
replay is compared with, bit for bit, in tests/test_gpu.py. With `train.compile` the forward and loss are compiled
(default mode: fused kernels, no CUDA graphs of its own) and then captured with the rest.

Limits, refused in one line naming the key by `check_graph_config` before training: one process (DDP's
bucketed all-reduce is not captured here), `grad_accum_steps` 1, `data.loader` indexed with `data.on_device`.
A source or modality whose gather or forward copies to the host is refused at the capture, after the warm-up steps.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from mmvae import distributed
from mmvae.config import ConfigError, ExperimentConfig, LossConfig
from mmvae.data.source import BatchSource
from mmvae.families.base import MultimodalModel
from mmvae.losses import all_term_names, compute_loss, configured_weight
from mmvae.train_step import clip_and_update, note_non_finite, raise_if_non_finite

EAGER_WARMUP_STEPS = 3  # uncaptured steps before the capture: lazy state (AdamW moments, cuBLAS workspaces, compile)
# train.compile_mode -> the torch.compile mode used inside the captured step: the modes that make CUDA graphs of their
# own (reduce-overhead; max-autotune turns inductor's cudagraphs on) become their graph-free counterparts.
COMPILE_MODE_INSIDE_GRAPH = {None: None, "default": None, "reduce-overhead": None,
                             "max-autotune": "max-autotune-no-cudagraphs"}


def check_graph_config(config: ExperimentConfig, world_size: int, device: torch.device, capture: bool = True) -> None:
    """Refuse, in one line naming the key, the settings a captured step cannot honour (`capture` False: the
    uncaptured reference, which runs on any device)."""
    if not config.train.cuda_graph:
        return
    problems = []
    if capture and device.type != "cuda":
        problems.append(f"needs a CUDA device (train.device resolves to {device.type})")
    if world_size > 1:
        problems.append(f"runs in one process (WORLD_SIZE={world_size}; DDP's all-reduce is not captured)")
    if config.train.grad_accum_steps != 1:
        problems.append(f"needs train.grad_accum_steps=1 (got {config.train.grad_accum_steps})")
    if config.data.loader != "indexed" or not config.data.on_device:
        problems.append("needs data.loader=indexed with data.on_device=true (the graph gathers each batch on the device)")
    if problems:
        raise ConfigError("key 'train.cuda_graph': " + "; ".join(problems))


class WeightTable:
    """Every loss term's weight at every step up to the end of the warm-ups, as float32 device tables; the weight
    at a device step is one gather. The values are the ones `compute_loss` computes on the host (the same Python
    expression, rounded to float32 as a Python scalar multiplying a float32 term is)."""

    def __init__(self, model: MultimodalModel, cfg: LossConfig, device: torch.device):
        self.end = cfg.schedules_end  # no weight changes from this step on
        scales = model.term_scales()
        self.tables = {
            term: torch.tensor([configured_weight(cfg, term, s) * scales.get(term, 1.0) for s in range(self.end + 1)],
                               dtype=torch.float32, device=device)  # (end + 1,)
            for term in all_term_names(model, cfg)
        }

    def at(self, step: Tensor):
        """weight_of for compute_loss: term -> 0-dim float32 tensor at the device step `step` (0-dim long)."""
        row = step.clamp(max=self.end).reshape(1)
        return lambda term: self.tables[term].index_select(0, row).reshape(())


class GraphedTrainStep:
    """One optimiser step over a batch given by its sample indices; captured as a CUDA graph after
    EAGER_WARMUP_STEPS uncaptured steps when `capture`. The interface matches train_step.TrainStep:
    call it with [indices], the step and the LR; it returns the logged vector (a copy)."""

    def __init__(self, model: MultimodalModel, optimizer: torch.optim.Optimizer, lr_scales: list[float],
                 config: ExperimentConfig, env: distributed.DistEnv, source: BatchSource, capture: bool,
                 compile_mode: str | None = None):
        self.model, self.optimizer, self.lr_scales, self.config, self.source = model, optimizer, lr_scales, config, source
        self.env, self.capture = env, capture
        self.ddp = None  # one process (check_graph_config)
        device = self.device = env.device
        self.lrs: list[Tensor] = [group["lr"] for group in optimizer.param_groups]
        if not all(isinstance(lr, Tensor) and lr.device == device for lr in self.lrs) or \
                len({id(lr) for lr in self.lrs}) != len(self.lrs):
            raise ValueError("GraphedTrainStep needs an optimiser whose groups each hold their own 0-dim LR tensor on "
                             "the training device (graph_optimizer_lr)")
        tc = config.train
        self.index = torch.zeros(tc.batch_size, dtype=torch.long, device=device)  # (B,)
        self.step_tensor = torch.zeros((), dtype=torch.long, device=device)
        self.weights = WeightTable(model, config.loss, device)
        # cache_enabled=False: a cached bf16 copy of a weight must not outlive the captured region.
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
                         if tc.precision == "bf16" else nullcontext())
        self.forward_loss = self._forward_loss
        if tc.compile:  # fused kernels, never CUDA graphs of torch.compile's own inside ours
            self.forward_loss = torch.compile(self._forward_loss, mode=COMPILE_MODE_INSIDE_GRAPH.get(compile_mode))
        self.log_names: list[str] | None = None
        self._first_bad: Tensor | None = None  # (values,) long: first step at which each value was non-finite, or -1
        self._logged: Tensor | None = None  # (values,) the graph's output
        self._graph: torch.cuda.CUDAGraph | None = None
        self._side_stream = torch.cuda.Stream() if capture else None  # where the warm-up steps run
        self.eager_steps = 0

    # --- the step's body: pure device work, no host decision depending on a device value ------------------------
    def _forward_loss(self, batch: dict, step: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.model(batch)
        loss = compute_loss(self.model, out, batch, self.config.loss, step, None, self.weights.at(step))
        return loss.total, loss.as_log()

    def _body(self) -> Tensor:
        batch = self.source.gather(self.index)
        with self.autocast:
            total, terms = self.forward_loss(batch, self.step_tensor)
        total.backward()
        if self.log_names is None:
            self.log_names = [*terms, "grad_norm"]
        values = torch.stack([terms[k] for k in self.log_names[:-1]]).float()  # (terms,)
        logged = clip_and_update(self.model, self.optimizer, self.config.train.grad_clip, values)  # (terms + 1,)
        self._first_bad = note_non_finite(self._first_bad, logged, self.step_tensor)  # made in a warm-up step
        return logged

    # --- the host side: write the inputs, then run or replay ---------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for tensor, scale in zip(self.lrs, self.lr_scales):
            tensor.fill_(lr if scale == 1.0 else lr * scale)

    def __call__(self, micro_batches: list[Tensor], step: int, lr: float) -> Tensor:
        (indices,) = micro_batches  # grad_accum_steps is 1 (check_graph_config)
        if not self.model.training:
            self.model.train()
        self.index.copy_(indices, non_blocking=True)
        self.step_tensor.fill_(step)
        self.set_lr(lr)
        if self._graph is not None:
            self._graph.replay()
        elif not self.capture or self.eager_steps < EAGER_WARMUP_STEPS:
            self._run_eagerly()
        else:
            self._capture_and_replay()
        return self._logged.clone()

    def _run_eagerly(self) -> None:
        # Warm-up steps run on a side stream, as torch.cuda.graph's documentation asks before a capture.
        side = self._side_stream
        if side is not None:
            side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side) if side is not None else nullcontext():
            logged = self._body()
            self.optimizer.zero_grad(set_to_none=True)
        if side is not None:
            torch.cuda.current_stream().wait_stream(side)
        self._logged = logged
        self.eager_steps += 1

    def _capture_and_replay(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates .grad in the graph's pool
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                logged = self._body()
        except RuntimeError as e:  # e.g. a source or modality that copies to the host inside its gather or forward
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"key 'train.cuda_graph': this model and data cannot be captured as one CUDA graph "
                              f"({first}); set train.cuda_graph=false") from e
        self._graph, self._logged = graph, logged
        graph.replay()  # capturing records the step without running it

    def check_finite(self) -> None:
        """At log and checkpoint steps: raise NonFiniteLossError if a logged value was ever non-finite."""
        raise_if_non_finite(self._first_bad, self.log_names, self.env)


def graph_optimizer_lr(lr: float, device: torch.device) -> Tensor:
    """The LR an optimiser of a captured step holds: a 0-dim tensor on the training device, of the precision the
    fused AdamW kernel computes a Python-number LR in (CUDA: float32, `static_cast<float>(lr)`; CPU: double), so
    that a tensor LR and a number LR give the same update bit for bit."""
    return torch.tensor(lr, dtype=torch.float32 if device.type == "cuda" else torch.float64, device=device)
