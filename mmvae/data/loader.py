"""Seeded, rank-sharded, resumable batching over a batch source.

Each epoch's order is a permutation drawn from a generator seeded with (seed, epoch) alone, so a
run can resume at any batch of any epoch without replaying the loader or touching the global RNG.
Sharding follows DistributedSampler: pad the permutation to a multiple of world_size by repeating
its head, then rank r takes every world_size-th index starting at r; every rank sees the same
number of batches, so uneven data never leaves one rank waiting in a collective.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mmvae.data.source import Batch, BatchSource


class ShuffledBatches:
    """Batches of `batch_size` indices per rank, drawn from an epoch-seeded permutation."""

    def __init__(
        self,
        source: BatchSource,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.shuffle, self.rank, self.world_size, self.drop_last = shuffle, rank, world_size, drop_last
        per_rank = -(-len(source) // world_size)  # ceil
        self.batches_per_epoch = per_rank // batch_size if drop_last else -(-per_rank // batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"dataset of {len(source)} samples over {world_size} rank(s) gives no full batch of {batch_size}"
            )

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch` (CPU LongTensor)."""
        n = len(self.source)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        total = -(-n // self.world_size) * self.world_size
        if total > n:
            order = torch.cat([order, order[: total - n]])
        return order[self.rank :: self.world_size]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Yield batches `start_batch..` of `epoch`, built on the source's device."""
        indices = self.epoch_indices(epoch).to(self.source.device)
        for b in range(start_batch, self.batches_per_epoch):
            yield self.source.gather(indices[b * self.batch_size : (b + 1) * self.batch_size])
