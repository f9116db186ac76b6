"""The contract between datasets and the trainer.

A *batch* is a plain dict (collates and moves to a device without custom code):

    {
        "x":       {modality: Tensor (B, ...)},   # raw stored dtype (uint8 images, float features, int tokens)
        "present": {modality: BoolTensor (B,)},   # False where a sample lacks that modality
        "y":       LongTensor (B,),               # class label; -1 where unknown
    }

Where a modality is absent its row in "x" still exists (any filler value, usually zeros) so that
shapes stay static; the model and losses read "present" and ignore those rows.

A *batch source* holds every array once (CPU or GPU) and builds a batch for a vector of sample
indices by indexing: no per-sample Python, no copies per pair.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

Batch = dict


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


def batch_to(batch: Batch, device: torch.device, non_blocking: bool = True) -> Batch:
    """Move every tensor of a batch to `device` (no-op for tensors already there)."""
    return {
        "x": {m: t.to(device, non_blocking=non_blocking) for m, t in batch["x"].items()},
        "present": {m: t.to(device, non_blocking=non_blocking) for m, t in batch["present"].items()},
        "y": batch["y"].to(device, non_blocking=non_blocking),
    }
