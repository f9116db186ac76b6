"""Seeded, sharded, resumable batching."""

import pytest
import torch

from mmvae.data.loader import ShuffledBatches
from mmvae.data.toy import make_toy


def test_ranks_partition_the_epoch_and_see_equal_batch_counts():
    source = make_toy(103, seed=0)  # not divisible by 2: padding needed
    shards = [ShuffledBatches(source, 8, seed=5, rank=r, world_size=2, drop_last=False) for r in range(2)]
    a, b = (s.epoch_indices(0) for s in shards)
    assert len(a) == len(b) == 52
    assert set(a.tolist()) | set(b.tolist()) == set(range(103))
    assert shards[0].batches_per_epoch == shards[1].batches_per_epoch


def test_order_depends_on_seed_and_epoch_only():
    source = make_toy(64, seed=0)
    one, two = ShuffledBatches(source, 8, seed=5), ShuffledBatches(source, 8, seed=5)
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(one.epoch_indices(3), two.epoch_indices(3))
    assert not torch.equal(one.epoch_indices(3), one.epoch_indices(4))
    assert not torch.equal(one.epoch_indices(3), ShuffledBatches(source, 8, seed=6).epoch_indices(3))


def test_starting_mid_epoch_continues_the_same_sequence():
    source = make_toy(64, seed=0)
    loader = ShuffledBatches(source, 8, seed=1)
    full = [b["y"] for b in loader.epoch(2)]
    tail = [b["y"] for b in loader.epoch(2, start_batch=5)]
    assert len(full) == 8 and len(tail) == 3
    assert all(torch.equal(x, y) for x, y in zip(full[5:], tail))


def test_too_small_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="no full batch of 64"):
        ShuffledBatches(make_toy(10, seed=0), 64, seed=0)


def test_limited_batches_stop_at_exactly_the_limit():
    from mmvae.data.loader import limited_batches

    source = make_toy(100, seed=0)
    sizes = [b["y"].shape[0] for b in limited_batches(source, 32, limit=70)]
    assert sizes == [32, 32, 6]
    ys = torch.cat([b["y"] for b in limited_batches(source, 32, limit=None)])
    assert torch.equal(ys, source.y)  # unshuffled, everything, in order
