"""The MNIST–SVHN pairing protocol of Shi et al. (NeurIPS 2019), seeded and vectorised.

For each digit d keep the first n_d = min(#MNIST_d, #SVHN_d, max_per_class) images of each dataset
(in file order), then append `dm` independent random permutations of each side and zip them. Every
pair shares its label and every kept image appears exactly dm times. Pairs are (P, 2) int64 rows
(mnist_index, svhn_index) into the split's arrays, grouped by digit then by permutation round, as
in the reference script.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 10
MAX_PER_CLASS = 10_000


def check_labels(labels: np.ndarray, name: str) -> None:
    """Raise unless `labels` is a 1-D integer array in 0–9."""
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{name} labels must be a 1-D integer array, got {labels.shape} {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"{name} labels must be in 0–{NUM_CLASSES - 1}, got {labels.min()}–{labels.max()}")


def kept_per_class(mnist_labels: np.ndarray, svhn_labels: np.ndarray, max_per_class: int = MAX_PER_CLASS) -> np.ndarray:
    """n_d = min(#MNIST_d, #SVHN_d, max_per_class) for d = 0..9."""
    m = np.bincount(mnist_labels, minlength=NUM_CLASSES)
    s = np.bincount(svhn_labels, minlength=NUM_CLASSES)
    return np.minimum(np.minimum(m, s), max_per_class)


def pair_count(mnist_labels: np.ndarray, svhn_labels: np.ndarray, dm: int, max_per_class: int = MAX_PER_CLASS) -> int:
    """Number of pairs the protocol makes: dm · Σ_d n_d."""
    return int(dm * kept_per_class(mnist_labels, svhn_labels, max_per_class).sum())


def permuted_rounds(indices: np.ndarray, dm: int, rng: np.random.Generator) -> np.ndarray:
    """dm independent permutations of `indices`, concatenated (dm · len(indices),)."""
    return rng.permuted(np.tile(indices, (dm, 1)), axis=1).ravel()


def pair_indices(
    mnist_labels: np.ndarray,
    svhn_labels: np.ndarray,
    dm: int,
    seed: int,
    stream: int = 0,
    max_per_class: int = MAX_PER_CLASS,
) -> np.ndarray:
    """(P, 2) int64 pairs (mnist_index, svhn_index) by the protocol; same (seed, stream) → same pairs."""
    check_labels(mnist_labels, "MNIST")
    check_labels(svhn_labels, "SVHN")
    if dm < 1:
        raise ValueError(f"dm must be >= 1, got {dm}")
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    rng = np.random.default_rng([seed, stream])
    n = kept_per_class(mnist_labels, svhn_labels, max_per_class)
    blocks = []
    for d in range(NUM_CLASSES):
        mnist_kept = np.flatnonzero(mnist_labels == d)[: n[d]]
        svhn_kept = np.flatnonzero(svhn_labels == d)[: n[d]]
        blocks.append(np.stack([permuted_rounds(mnist_kept, dm, rng), permuted_rounds(svhn_kept, dm, rng)], axis=1))
    return np.concatenate(blocks).astype(np.int64, copy=False)
