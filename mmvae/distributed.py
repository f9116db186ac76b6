"""The one place that owns devices and torch.distributed. Every helper is a no-op in a single process.

Launch with torchrun: it sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; a process
group is created only when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU) with an explicit timeout.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


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
            device_id=dev if dev.type == "cuda" else None,
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


def all_gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate (N_r, ...) tensors from every rank along dim 0, keeping the gradient path.

    Ranks may hold different N_r (e.g. after dropping absent samples): sizes are exchanged first.
    """
    if not dist.is_initialized():
        return t
    import torch.distributed.nn.functional as dist_fn  # differentiable collectives

    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], device=t.device))
    sizes_int = [int(s.item()) for s in sizes]
    biggest = max(sizes_int)
    padded = torch.cat([t, t.new_zeros(biggest - t.shape[0], *t.shape[1:])]) if t.shape[0] < biggest else t
    gathered = dist_fn.all_gather(padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes_int)])
