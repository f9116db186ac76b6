"""The Shi et al. pairing protocol: exact published counts, shared labels, dm appearances, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.pairing import kept_per_class, pair_count, pair_indices

MNIST_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
SVHN_TRAIN = [4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659]
SVHN_TEST = [1744, 5099, 4149, 2882, 2523, 2384, 1977, 2019, 1660, 1595]


def labels_with_counts(counts: list[int], seed: int) -> np.ndarray:
    """A shuffled label array with exactly these per-class counts."""
    labels = np.repeat(np.arange(10), counts)
    np.random.default_rng(seed).shuffle(labels)
    return labels


def test_class_counts_are_the_real_ones() -> None:
    assert (sum(MNIST_TRAIN), sum(MNIST_TEST)) == (60000, 10000)
    assert (sum(SVHN_TRAIN), sum(SVHN_TEST)) == (73257, 26032)


@pytest.mark.parametrize(
    ("mnist_counts", "svhn_counts", "expected"),
    [(MNIST_TRAIN, SVHN_TRAIN, 1_682_040), (MNIST_TEST, SVHN_TEST, 300_000)],
    ids=["train", "test"],
)
def test_reference_pair_counts_at_dm30(mnist_counts, svhn_counts, expected: int) -> None:
    mnist_labels, svhn_labels = labels_with_counts(mnist_counts, 1), labels_with_counts(svhn_counts, 2)
    pairs = pair_indices(mnist_labels, svhn_labels, dm=30, seed=0)
    assert pairs.shape == (expected, 2) and pairs.dtype == np.int64
    assert pair_count(mnist_labels, svhn_labels, 30) == expected
    # every pair shares its label
    np.testing.assert_array_equal(mnist_labels[pairs[:, 0]], svhn_labels[pairs[:, 1]])
    # every kept image appears exactly dm times, others never; kept = first n_d of each class in file order
    n = kept_per_class(mnist_labels, svhn_labels)
    for column, labels in ((0, mnist_labels), (1, svhn_labels)):
        uses = np.bincount(pairs[:, column], minlength=labels.size)
        kept = np.concatenate([np.flatnonzero(labels == d)[: n[d]] for d in range(10)])
        assert set(np.unique(uses).tolist()) <= {0, 30}
        np.testing.assert_array_equal(np.flatnonzero(uses == 30), np.sort(kept))


def test_tiny_known_answer() -> None:
    mnist_labels = np.array([0, 1, 0, 2])
    svhn_labels = np.array([1, 0, 0, 0, 1])
    pairs = pair_indices(mnist_labels, svhn_labels, dm=2, seed=3)
    # n_0 = 2: mnist {0, 2} with svhn {1, 2}; n_1 = 1: mnist 1 with svhn 0; n_2 = 0 (no SVHN 2)
    assert len(pairs) == 6
    assert pairs[pairs[:, 0] == 1].tolist() == [[1, 0], [1, 0]]
    zeros = pairs[np.isin(pairs[:, 0], [0, 2])]
    assert sorted(zeros[:, 0].tolist()) == [0, 0, 2, 2] and sorted(zeros[:, 1].tolist()) == [1, 1, 2, 2]
    assert 3 not in pairs[:, 0] and not np.isin(pairs[:, 1], [3, 4]).any()


def test_each_round_is_a_permutation() -> None:
    mnist_labels = np.arange(50) % 10
    svhn_labels = np.arange(70) % 10
    pairs = pair_indices(mnist_labels, svhn_labels, dm=4, seed=1)
    block = pairs[:5]  # digit 0, round 1: a permutation of the five kept zeros on each side
    assert sorted(block[:, 0].tolist()) == [0, 10, 20, 30, 40]
    assert sorted(block[:, 1].tolist()) == [0, 10, 20, 30, 40]


def test_cap_per_class() -> None:
    labels = np.zeros(30, np.int64)
    pairs = pair_indices(labels, labels, dm=2, seed=0, max_per_class=7)
    assert len(pairs) == 14 and pairs.max() == 6


def test_same_seed_identical_other_seed_or_stream_different() -> None:
    m, s = labels_with_counts(MNIST_TEST, 0), labels_with_counts(SVHN_TEST, 1)
    a = pair_indices(m, s, dm=3, seed=7)
    np.testing.assert_array_equal(a, pair_indices(m, s, dm=3, seed=7))
    assert not np.array_equal(a, pair_indices(m, s, dm=3, seed=8))
    assert not np.array_equal(a, pair_indices(m, s, dm=3, seed=7, stream=1))


def test_bad_arguments() -> None:
    good = np.arange(10)
    with pytest.raises(ValueError, match="dm must be >= 1"):
        pair_indices(good, good, dm=0, seed=0)
    with pytest.raises(ValueError, match="SVHN labels must be in 0–9"):
        pair_indices(good, good + 1, dm=1, seed=0)
    with pytest.raises(ValueError, match="MNIST labels must be a 1-D integer array"):
        pair_indices(good.astype(float), good, dm=1, seed=0)
