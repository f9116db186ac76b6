"""The contract between datasets and the trainer: batch sources.

A batch is the dict of `mmvae.batch` (x, present, optional mask, y, targets, meta). A *batch source*
holds every array once (CPU or GPU) and builds a batch for a vector of sample indices by indexing: no
per-sample Python, no copies per pair.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from mmvae.batch import Batch, batch_to  # noqa: F401  (re-exported: the old home of both)


@runtime_checkable
class BatchSource(Protocol):
    """Anything the trainer can draw batches from."""

    def __len__(self) -> int:
        """Number of samples (pairs) in the source."""
        ...

    def gather(self, index: torch.Tensor) -> Batch:
        """Build the batch for the sample indices `index` (LongTensor (B,), on the source's device)."""
        ...

    def to(self, device: torch.device | str) -> "BatchSource":
        """A source whose arrays live on `device` (self when already there)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the arrays live."""
        ...
