"""Few labels (`data.label_fraction`): the training batches keep the label of only a fraction of the samples.

Which samples keep theirs is a pure function of (seed, sample index, number of samples): the
round(fraction x N) training samples (at least one) with the smallest counter-based hash (mmvae.data.hashing,
stream LABEL_STREAM) of their index. The hash is a bijection of the index, so the count is exact and the set is
the same on every DDP rank, after every resume and in every epoch; it needs no RNG state. The other samples get
y = -1, which every label term already skips (heads.label_term).

Only the trainer's training batches go through `LabelFractionSource`; `build_sources` and everything that
evaluates (in-training evaluation on the test split, `mmvae evaluate`: label accuracy, probes fitted on the
training split, coherence) read the sources unmasked. The unit is the training sample: in MNIST–SVHN a sample is
a pair, and an image that appears in several pairs may be labelled in some of them and not in others.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor

from mmvae.batch import Batch
from mmvae.data.hashing import counter_hash
from mmvae.data.source import BatchSource

LABEL_STREAM = 0x1ABE1  # the hash stream of label_fraction (the robot pairs use streams 0..3)


def labelled_count(n: int, fraction: float) -> int:
    """How many of `n` samples keep their label: the nearest integer to fraction x n, at least 1 (n > 0)."""
    if fraction >= 1.0:
        return n
    return min(n, max(1, int(np.floor(fraction * n + 0.5)))) if n > 0 else 0


def labelled_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """(n,) bool: the samples that keep their label (the labelled_count smallest hashes of their index)."""
    k = labelled_count(n, fraction)
    mask = np.zeros(n, dtype=bool)
    if k == n:
        mask[:] = True
    elif k > 0:
        h = counter_hash(seed, np.arange(n, dtype=np.int64), LABEL_STREAM)
        mask[np.argpartition(h, k - 1)[:k]] = True
    return mask


class LabelFractionSource:
    """A training source whose batches carry y = -1 except on the labelled samples (see the module docstring)."""

    def __init__(self, source: BatchSource, labelled: Tensor, fraction: float, seed: int):
        if labelled.shape != (len(source),):
            raise ValueError(f"labelled mask of shape {tuple(labelled.shape)} for a source of {len(source)} samples")
        self.source, self.fraction, self.seed = source, fraction, seed
        self.labelled = labelled.to(source.device)

    @classmethod
    def build(cls, source: BatchSource, fraction: float, seed: int) -> "LabelFractionSource":
        return cls(source, torch.from_numpy(labelled_mask(len(source), fraction, seed)), fraction, seed)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def device(self) -> torch.device:
        return self.source.device

    def gather(self, index: Tensor) -> Batch:
        batch = self.source.gather(index)
        y = batch.get("y")
        if y is None:  # an unlabelled source: nothing to hide
            return batch
        keep = self.labelled[index.to(self.labelled.device)].to(y.device)
        return {**batch, "y": torch.where(keep, y, torch.full_like(y, -1))}

    def to(self, device: torch.device | str) -> "LabelFractionSource":
        moved = self.source.to(device)
        return self if moved is self.source else LabelFractionSource(moved, self.labelled, self.fraction, self.seed)

    @property
    def summary(self) -> dict:
        """What the run records (provenance.json and summary.json, key "labels")."""
        return {"label_fraction": self.fraction, "labelled_samples": int(self.labelled.sum()),
                "train_samples": len(self), "chosen_by": f"the smallest counter_hash(seed={self.seed}, index, "
                                                        f"stream={LABEL_STREAM:#x}) of the training samples"}

    @property
    def provenance(self) -> dict:
        inner = getattr(self.source, "provenance", {})
        return {**copy.deepcopy(inner), "labels": self.summary}


def with_label_fraction(source: BatchSource, fraction: float, seed: int) -> BatchSource:
    """The training source as the trainer reads it: unchanged at fraction 1, else its labels masked."""
    return source if fraction >= 1.0 else LabelFractionSource.build(source, fraction, seed)
