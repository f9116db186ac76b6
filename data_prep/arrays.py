"""The in-memory form every raw-format reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LabelledImages:
    """One split of a dataset: images (N, C, H, W) uint8, labels (N,) int64 in 0–9, and the files they came from."""

    images: np.ndarray
    labels: np.ndarray
    files: dict[str, dict] = field(default_factory=dict)
