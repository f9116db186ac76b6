"""The batch contract between data sources, models, heads, losses and tools, and the helpers that move,
slice and collate batches. Every data source, the loaders, `sample`, `evaluate`, swaps and attribution use
these helpers instead of their own code.

A batch is a plain dict (DDP, torch.compile and pin_memory handle it without custom code):

    {
        "x":       {modality: Tensor (B, ...)},     # the stored dtype (uint8 images, float features, int tokens)
        "present": {modality: BoolTensor (B,)},     # False where a sample lacks that modality
        "mask":    {modality: BoolTensor (B, L)},   # optional: True on real elements of padded sequences
        "y":       LongTensor (B,),                 # optional: class label, -1 where unknown
        "targets": {name: Tensor (B, ...)},         # optional: supervision that is not an input (flow, contact)
        "meta":    {name: Tensor (B, ...)},         # optional: bookkeeping (episode id, step)
    }

Where a modality is absent its row in "x" still exists (any filler value, usually zeros) so that
shapes stay static; the model and losses read "present" and ignore those rows. A batch without "y" is
unlabelled: `labels(batch)` gives -1 for every sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Batch = dict
REQUIRED_KEYS = ("x", "present")
NESTED_KEYS = ("x", "present", "mask", "targets", "meta")  # {name: Tensor}
KEYS = (*NESTED_KEYS, "y")


def map_tensors(batch: Batch, fn: Callable[[Tensor], Tensor]) -> Batch:
    """A new batch with `fn` applied to every tensor; the structure (and key order) is kept."""
    out: Batch = {}
    for key, value in batch.items():
        if key in NESTED_KEYS:
            out[key] = {name: fn(t) for name, t in value.items()}
        elif key == "y":
            out[key] = fn(value)
        else:
            raise KeyError(f"batch has an unknown key {key!r}; allowed: {list(KEYS)}")
    return out


def batch_to(batch: Batch, device: torch.device | str, non_blocking: bool = True) -> Batch:
    """Move every tensor of a batch to `device` (no-op for tensors already there)."""
    return map_tensors(batch, lambda t: t.to(device, non_blocking=non_blocking))


def take(batch: Batch, index: Tensor) -> Batch:
    """Rows `index` (LongTensor (N,), on the batch's device) of every tensor."""
    return map_tensors(batch, lambda t: t.index_select(0, index))


def slice_rows(batch: Batch, start: int, stop: int | None = None) -> Batch:
    """Rows start..stop of every tensor (views, no copy)."""
    return map_tensors(batch, lambda t: t[start:stop])


def collate(batches: Sequence[Batch]) -> Batch:
    """Concatenate batches (same keys and names) along the batch axis; a single sample has B = 1."""
    if not batches:
        raise ValueError("collate needs at least one batch")
    first = batches[0]
    out: Batch = {}
    for key, value in first.items():
        if key in NESTED_KEYS:
            out[key] = {name: torch.cat([b[key][name] for b in batches]) for name in value}
        elif key == "y":
            out[key] = torch.cat([b["y"] for b in batches])
        else:
            raise KeyError(f"batch has an unknown key {key!r}; allowed: {list(KEYS)}")
    return out


def sample_at(batch: Batch, i: int) -> Batch:
    """Sample i as an unbatched dict (tensors without the batch axis), e.g. for a map-style Dataset."""
    return map_tensors(batch, lambda t: t[i])


def stack_samples(samples: Sequence[Batch]) -> Batch:
    """Stack unbatched samples (`sample_at`) into a batch: the inverse of sample_at over a whole batch."""
    return collate([map_tensors(s, lambda t: t.unsqueeze(0)) for s in samples])


def batch_size(batch: Batch) -> int:
    """B, read from the first presence mask."""
    return next(iter(batch["present"].values())).shape[0]


def labels(batch: Batch) -> Tensor:
    """The labels, or -1 for every sample of an unlabelled batch: (B,) long."""
    y = batch.get("y")
    if y is not None:
        return y
    present = next(iter(batch["present"].values()))
    return torch.full(present.shape, -1, dtype=torch.long, device=present.device)


def element_mask(batch: Batch, name: str) -> Tensor | None:
    """The per-element mask (B, L) of modality `name`, or None where it is not padded."""
    return batch.get("mask", {}).get(name)


def restrict_present(present: dict[str, Tensor], keep: Sequence[str] | None) -> dict[str, Tensor]:
    """Presence limited to the modalities in `keep` (None: unchanged), e.g. Z_y inferred from one modality."""
    if keep is None:
        return present
    return {m: p & (m in keep) for m, p in present.items()}


def check_batch(batch: Batch, names: Sequence[str]) -> None:
    """Raise ValueError naming what is wrong if `batch` does not follow the contract for modalities `names`."""
    unknown = sorted(set(batch) - set(KEYS))
    if unknown:
        raise ValueError(f"batch has unknown key(s) {unknown}; allowed: {list(KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in batch:
            raise ValueError(f"batch lacks {key!r}")
    missing = sorted(set(names) - set(batch["x"]))
    if missing:
        raise ValueError(f"batch lacks modalities {missing} in 'x' (has {sorted(batch['x'])})")
    n = batch_size(batch)
    for key in NESTED_KEYS:
        for name, t in batch.get(key, {}).items():
            if t.shape[0] != n:
                raise ValueError(f"batch['{key}']['{name}'] has {t.shape[0]} rows, expected {n}")
    for name, p in batch["present"].items():
        if p.dtype != torch.bool or p.dim() != 1:
            raise ValueError(f"batch['present']['{name}'] must be a (B,) bool tensor, got {tuple(p.shape)} {p.dtype}")
    for name, mk in batch.get("mask", {}).items():
        if mk.dtype != torch.bool or mk.dim() != 2:
            raise ValueError(f"batch['mask']['{name}'] must be a (B, L) bool tensor, got {tuple(mk.shape)} {mk.dtype}")
    if "y" in batch and (batch["y"].shape != (n,) or batch["y"].dtype != torch.long):
        raise ValueError(f"batch['y'] must be a ({n},) long tensor, got {tuple(batch['y'].shape)} {batch['y'].dtype}")
