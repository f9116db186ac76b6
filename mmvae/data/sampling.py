"""Fair subsets for metrics: seeded and class-balanced, never "the first N".

Prepared splits may be stored grouped by class (the MNIST–SVHN test pairs are), so reading the first N
samples measures mostly one class. Every metric that uses part of a split draws its part here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmvae.batch import labels as batch_labels
from mmvae.data.source import BatchSource


def source_labels(source: BatchSource, chunk: int = 65_536) -> Tensor:
    """The labels of every sample (CPU long tensor; -1 where unknown or unlabelled)."""
    y = getattr(source, "y", None)
    if isinstance(y, Tensor):
        return y.cpu()
    n = len(source)
    parts = [batch_labels(source.gather(torch.arange(lo, min(lo + chunk, n), device=source.device))).cpu()
             for lo in range(0, n, chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def balanced_subset(labels: Tensor, n: int, seed: int) -> Tensor:
    """`n` distinct indices into `labels` (N,), seeded, with every class in equal shares (to within one).

    Classes are the distinct label values (-1, unknown, counts as one class). Each class gives
    floor(n / C) samples and a seeded choice of classes gives one more, capped by the class's size (what
    a small class cannot give, the others give). Within a class the samples are a seeded random choice.
    The result is shuffled, so that any prefix of it is balanced too. n >= N: a seeded permutation of all.
    """
    labels = labels.cpu()
    total = labels.shape[0]
    gen = torch.Generator().manual_seed(seed)
    if n >= total:
        return torch.randperm(total, generator=gen)
    classes = torch.unique(labels)
    members = [torch.nonzero(labels == c).squeeze(1) for c in classes]
    members = [m[torch.randperm(m.numel(), generator=gen)] for m in members]
    sizes = torch.tensor([m.numel() for m in members])
    quota = torch.zeros(len(members), dtype=torch.long)
    remaining = n
    # Water-filling: share what is left equally among the classes that still have samples.
    while remaining > 0:
        open_ = torch.nonzero(quota < sizes).squeeze(1)
        share, extra = divmod(remaining, open_.numel())
        grant = torch.full((open_.numel(),), share, dtype=torch.long)
        grant[torch.randperm(open_.numel(), generator=gen)[:extra]] += 1
        grant = torch.minimum(grant, sizes[open_] - quota[open_])
        quota[open_] += grant
        remaining -= int(grant.sum())
    chosen = torch.cat([m[: int(q)] for m, q in zip(members, quota)])
    return chosen[torch.randperm(chosen.numel(), generator=gen)]


def subset_indices(source: BatchSource, limit: int | None, seed: int = 0) -> Tensor:
    """The indices a metric over at most `limit` samples uses: all of them (in order) when limit is None or
    covers the split, else a seeded class-balanced subset."""
    n = len(source)
    if limit is None or limit >= n:
        return torch.arange(n)
    return balanced_subset(source_labels(source), limit, seed)
