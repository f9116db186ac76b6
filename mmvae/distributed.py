"""The one place that owns devices and torch.distributed. Every helper is a no-op in a single process.

Launch with torchrun: it sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; a process
group is created only when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU) with an explicit timeout, so a
rank that dies or diverges makes the others fail after `timeout_s` instead of hanging for ever.
See docs/distributed.md for single- and multi-node commands.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when CUDA is available, else cpu; 'cuda' without CUDA is an error."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device = cuda but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                "use --nproc_per_node <= the number of GPUs on each node"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if requested not in ("auto", "cpu"):
        raise ValueError(f"unknown device {requested!r}")
    return torch.device("cpu")


def setup(device: str = "auto", timeout_s: int = 600) -> DistEnv:
    """Read torchrun's environment; start the process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,  # NCCL: connect eagerly, fail early
        )
    return DistEnv(rank, local_rank, world_size, dev)


def teardown() -> None:
    """Destroy the process group if one exists."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean over ranks (a copy; the input is unchanged)."""
    if not dist.is_initialized():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def all_reduce_max(t: Tensor) -> Tensor:
    """Max over ranks (a copy), for decisions every rank must take the same way."""
    if not dist.is_initialized():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def decide_on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result, or the exception it raised, to every rank.

    For decisions that read files only rank 0 is guaranteed to see (the run folder, checkpoints):
    every rank returns the same value or raises the same error, so no rank is left waiting in a
    collective while another has stopped. Objects travel between our own processes (pickled in
    memory by torch.distributed); nothing is unpickled from a file.
    """
    if not dist.is_initialized():
        return fn()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # shared with the other ranks, then raised everywhere
            box[0] = ("error", exc)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def all_gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate (N_r, ...) tensors from every rank along dim 0, keeping the gradient path.

    Ranks may hold different N_r (e.g. after dropping absent samples, possibly all of them): the sizes
    are exchanged first, which costs one host-device synchronisation; rows are padded to the largest
    N_r (at least one, since some backends reject empty messages) and the padding is cut off again.
    The backward pass sums every rank's gradient for this rank's rows (reduce-scatter), so with DDP's
    mean over ranks the parameter gradient equals that of the loss on the concatenated batch.
    """
    if not dist.is_initialized():
        return t
    import torch.distributed.nn.functional as dist_fn  # differentiable collectives

    world = dist.get_world_size()
    sizes = torch.empty(world, dtype=torch.long, device=t.device)
    dist.all_gather_into_tensor(sizes, torch.tensor([t.shape[0]], dtype=torch.long, device=t.device))
    sizes_int = sizes.tolist()  # the one synchronisation
    biggest = max(1, max(sizes_int))
    padded = torch.cat([t, t.new_zeros(biggest - t.shape[0], *t.shape[1:])]) if t.shape[0] < biggest else t
    gathered = dist_fn.all_gather(padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes_int)])
