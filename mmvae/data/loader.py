"""Seeded, rank-sharded, resumable batching over a batch source.

Two interchangeable loaders, chosen by `data.loader`; both expose `batches_per_epoch` and
`epoch(epoch, start_batch)` and both shard like torch's DistributedSampler:

* `ShuffledBatches` ("indexed", the default): the epoch's order is a permutation drawn from a
  generator seeded with (seed, epoch) alone; batches are built by indexing the source's tensors
  (on the GPU when `data.on_device`), with no per-sample Python and no worker processes. Passing
  the epoch number to `epoch()` is the equivalent of `DistributedSampler.set_epoch`.
* `DataLoaderBatches` ("dataloader"): a torch DataLoader over the same source, with
  DistributedSampler + set_epoch, for sources whose samples are expensive to build (decoding) and
  are best built in `data.num_workers` worker processes.

Sharding: pad the epoch's order to a multiple of world_size by repeating its head, then rank r takes
every world_size-th index starting at r; every rank sees the same number of batches, so uneven data
never leaves one rank waiting in a collective. Starting mid-epoch slices the order; it never replays
batches and never touches the global RNG, which is what makes resume exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mmvae.batch import Batch
from mmvae.data.source import BatchSource


def _batches_per_epoch(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    per_rank = -(-n // world_size)  # ceil: the padded shard length
    count = per_rank // batch_size if drop_last else -(-per_rank // batch_size)
    if count == 0:
        raise ValueError(f"dataset of {n} samples over {world_size} rank(s) gives no full batch of {batch_size}")
    return count


def _check_args(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")


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
        as_indices: bool = False,
    ):
        """`as_indices`: yield each batch's sample indices (B,) on the source's device instead of the batch (the
        CUDA-graph step gathers the batch itself, inside its graph)."""
        _check_args(batch_size, rank, world_size)
        self.source, self.batch_size, self.seed, self.as_indices = source, batch_size, seed, as_indices
        self.shuffle, self.rank, self.world_size, self.drop_last = shuffle, rank, world_size, drop_last
        self.batches_per_epoch = _batches_per_epoch(len(source), batch_size, world_size, drop_last)

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

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch | torch.Tensor]:
        """Yield batches `start_batch..` of `epoch`, built on the source's device (or their indices, `as_indices`)."""
        # One host-to-device copy per epoch; each batch is then a slice and a gather on the device.
        indices = self.epoch_indices(epoch).to(self.source.device)
        for b in range(start_batch, self.batches_per_epoch):
            chosen = indices[b * self.batch_size : (b + 1) * self.batch_size]
            yield chosen if self.as_indices else self.source.gather(chosen)


class _SourceDataset(Dataset):
    """Map-style view of a batch source; `__getitems__` builds a whole batch in one gather."""

    def __init__(self, source: BatchSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Batch:
        return self.source.gather(torch.tensor([i]))

    def __getitems__(self, indices: list[int]) -> Batch:
        return self.source.gather(torch.tensor(indices, dtype=torch.long))


def _whole_batch(batch: Batch) -> Batch:
    """collate_fn: `__getitems__` already returns the collated batch."""
    return batch


class DataLoaderBatches:
    """A torch DataLoader over a batch source, sharded by DistributedSampler with set_epoch.

    The sampler's order depends on (seed, epoch) alone; the DataLoader gets its own seeded generator
    so creating an iterator does not draw from the global RNG (which would break exact resume).
    """

    def __init__(
        self,
        source: BatchSource,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        _check_args(batch_size, rank, world_size)
        if num_workers and source.device.type != "cpu":
            raise ValueError("data.loader = dataloader with data.num_workers > 0 needs the source on the CPU "
                             "(set data.on_device = false, or num_workers = 0)")
        self.source, self.batch_size, self.seed, self.drop_last = source, batch_size, seed, drop_last
        self.num_workers, self.pin_memory = num_workers, pin_memory
        # drop_last=False: pad by repeating the head, exactly like ShuffledBatches.
        self.sampler = DistributedSampler(_SourceDataset(source), num_replicas=world_size, rank=rank,
                                          shuffle=shuffle, seed=seed, drop_last=False)
        self.batches_per_epoch = _batches_per_epoch(len(source), batch_size, world_size, drop_last)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch` (CPU LongTensor)."""
        self.sampler.set_epoch(epoch)
        return torch.tensor(list(self.sampler), dtype=torch.long)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Yield batches `start_batch..` of `epoch` (on the source's device, pinned when asked)."""
        indices = self.epoch_indices(epoch).tolist()
        bs = self.batch_size
        batches = [indices[b * bs : (b + 1) * bs] for b in range(start_batch, self.batches_per_epoch)]
        loader = DataLoader(
            _SourceDataset(self.source),
            batch_sampler=batches,
            collate_fn=_whole_batch,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch),
            persistent_workers=False,
        )
        yield from loader


def build_loader(source: BatchSource, kind: str, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, pin_memory: bool = False,
                 as_indices: bool = False) -> ShuffledBatches | DataLoaderBatches:
    """The training loader named by `data.loader` ("indexed" or "dataloader"; `as_indices`: indexed only)."""
    if kind == "indexed":
        return ShuffledBatches(source, batch_size, seed, True, rank, world_size, as_indices=as_indices)
    if as_indices:
        raise ValueError("as_indices needs data.loader = indexed")
    if kind == "dataloader":
        return DataLoaderBatches(source, batch_size, seed, True, rank, world_size, num_workers=num_workers,
                                 pin_memory=pin_memory)
    raise ValueError(f"unknown data.loader {kind!r}; expected 'indexed' or 'dataloader'")


def limited_batches(source: BatchSource, batch_size: int, limit: int | None, shuffle: bool = False,
                    seed: int = 0) -> Iterator[Batch]:
    """Batches over at most `limit` samples: every sample when limit is None or covers the split (in order, or
    in a seeded random order with `shuffle`), else a seeded class-balanced subset (data.sampling), never the
    first `limit` samples (a split may be stored grouped by class)."""
    from mmvae.data.sampling import subset_indices

    n = len(source)
    if shuffle and (limit is None or limit >= n):
        indices = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    else:
        indices = subset_indices(source, limit, seed)
    indices = indices.to(source.device)
    for lo in range(0, indices.numel(), batch_size):
        yield source.gather(indices[lo : lo + batch_size])
