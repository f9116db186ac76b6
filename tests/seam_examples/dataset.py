"""A dataset entry: the toy data plus an "action" modality (a condition) and a target that is not an input.

Recipe "add a dataset": a build function and one `DatasetEntry` in `DATASETS`.
"""

from __future__ import annotations

import torch

from mmvae.data.registry import DatasetEntry
from mmvae.data.tensor_source import TensorSource
from mmvae.data.toy import make_toy


def _with_action(source: TensorSource, seed: int) -> TensorSource:
    n = len(source)
    gen = torch.Generator().manual_seed(seed)
    action = torch.randn(n, 4, generator=gen)
    x = {**source.x, "action": action}
    present = {**source.present, "action": torch.ones(n, dtype=torch.bool)}
    brightness = source.x["bars"].float().mean(dim=(1, 2, 3)) / 255.0  # (N,)
    return TensorSource(x, present, source.y, {**source.provenance, "example": "toy + action"},
                        targets={"brightness": brightness}, meta={"index": torch.arange(n)})


def build(config):
    train = make_toy(config.data.train_size, seed=config.seed)
    test = make_toy(config.data.test_size, seed=config.seed + 1_000_000)
    return _with_action(train, config.seed), _with_action(test, config.seed + 1)


TOY_WITH_ACTION = DatasetEntry("toy_with_action_example", build, "toy data, an action and a brightness target")
