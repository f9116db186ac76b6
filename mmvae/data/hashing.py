"""Counter-based hashing: random-looking numbers that are a pure function of (seed, index, stream).

No RNG state is kept or advanced, so every DDP rank, every resume and every epoch gets the same value for the
same sample. Used by the robot pairs (alignment negatives) and by `data.label_fraction` (which training
samples keep their label).
"""

from __future__ import annotations

import numpy as np


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def counter_hash(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
    """A uint64 per index, a pure function of (seed, index, stream)."""
    key = _splitmix64(np.array([(seed * 0x100000001B3 + stream) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return _splitmix64(np.asarray(index, dtype=np.int64).astype(np.uint64) ^ key)


def uniform(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
    """Floats in [0, 1), a pure function of (seed, index, stream)."""
    return (counter_hash(seed, index, stream) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
