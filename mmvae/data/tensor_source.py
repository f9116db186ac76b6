"""A batch source over per-sample tensors held once (CPU or GPU)."""

from __future__ import annotations

import torch
from torch import Tensor

from mmvae.data.source import Batch


class TensorSource:
    """x: {m: (N, ...)}, present: {m: bool (N,)}, y: long (N,); batches are built by indexing."""

    def __init__(self, x: dict[str, Tensor], present: dict[str, Tensor], y: Tensor, provenance: dict | None = None):
        n = y.shape[0]
        for m, t in {**x, **{f"present[{k}]": v for k, v in present.items()}}.items():
            if t.shape[0] != n:
                raise ValueError(f"tensor source: '{m}' has {t.shape[0]} rows but y has {n}")
        if set(x) != set(present):
            raise ValueError(f"tensor source: modalities in x {sorted(x)} differ from present {sorted(present)}")
        self.x, self.present, self.y = x, present, y
        self.provenance = provenance or {}

    def __len__(self) -> int:
        return self.y.shape[0]

    @property
    def device(self) -> torch.device:
        return self.y.device

    def gather(self, index: Tensor) -> Batch:
        return {
            "x": {m: t[index] for m, t in self.x.items()},
            "present": {m: t[index] for m, t in self.present.items()},
            "y": self.y[index],
        }

    def to(self, device: torch.device | str) -> "TensorSource":
        device = torch.device(device)
        if device == self.device:
            return self
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return TensorSource(move(self.x), move(self.present), self.y.to(device), self.provenance)
