"""The in-memory form every raw-format reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LabelledImages:
    """One split of a dataset: images (N, C, H, W) uint8, labels (N,) int64 in 0–9, the files they came from, and
    the style factors each image was drawn with (N, K) float32 where a generator made them (else None)."""

    images: np.ndarray
    labels: np.ndarray
    files: dict[str, dict] = field(default_factory=dict)
    factors: np.ndarray | None = None
