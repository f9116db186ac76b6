"""A batch source over per-sample tensors held once (CPU or GPU)."""

from __future__ import annotations

import torch
from torch import Tensor

from mmvae.batch import Batch, batch_to, check_batch, take


class TensorSource:
    """x: {m: (N, ...)}, present: {m: bool (N,)}, y: long (N,) or None (unlabelled), plus optional mask,
    targets and meta dicts of (N, ...) tensors; batches are built by indexing."""

    def __init__(self, x: dict[str, Tensor], present: dict[str, Tensor], y: Tensor | None, provenance: dict | None = None,
                 mask: dict[str, Tensor] | None = None, targets: dict[str, Tensor] | None = None,
                 meta: dict[str, Tensor] | None = None):
        if set(x) != set(present):
            raise ValueError(f"tensor source: modalities in x {sorted(x)} differ from present {sorted(present)}")
        data: Batch = {"x": x, "present": present}
        for key, value in (("mask", mask), ("targets", targets), ("meta", meta)):
            if value:
                data[key] = value
        if y is not None:
            data["y"] = y
        try:
            check_batch(data, list(x))
        except ValueError as e:
            raise ValueError(f"tensor source: {e}") from None
        self.data = data
        self.provenance = provenance or {}

    @property
    def x(self) -> dict[str, Tensor]:
        return self.data["x"]

    @property
    def present(self) -> dict[str, Tensor]:
        return self.data["present"]

    @property
    def y(self) -> Tensor | None:
        return self.data.get("y")

    def __len__(self) -> int:
        return next(iter(self.data["present"].values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.data["present"].values())).device

    def gather(self, index: Tensor) -> Batch:
        return take(self.data, index)

    def to(self, device: torch.device | str) -> "TensorSource":
        device = torch.device(device)
        if device == self.device:
            return self
        moved = batch_to(self.data, device, non_blocking=False)
        return TensorSource(moved["x"], moved["present"], moved.get("y"), self.provenance, moved.get("mask"),
                            moved.get("targets"), moved.get("meta"))
