"""Build the train and test batch sources named by a DataConfig."""

from __future__ import annotations

from mmvae.config import ExperimentConfig
from mmvae.data.source import BatchSource


def build_sources(config: ExperimentConfig) -> tuple[BatchSource, BatchSource]:
    """(train, test) sources on the CPU; the trainer moves them to the device when data.on_device is set."""
    data = config.data
    if data.name == "toy":
        from mmvae.data.toy import make_toy

        train = make_toy(data.train_size, seed=config.seed, missing_prob=data.missing_prob)
        test = make_toy(data.test_size, seed=config.seed + 1_000_000, missing_prob=0.0)
    elif data.name == "mnist_svhn":
        from mmvae.data.mnist_svhn import MnistSvhnPairs

        train = MnistSvhnPairs.load(data.path, split="train")
        test = MnistSvhnPairs.load(data.path, split="test")
    else:  # the config's Literal makes this unreachable; kept as a clear error for new names
        raise ValueError(f"unknown dataset {data.name!r}")
    probe = train.gather(__import__("torch").arange(1))
    missing = sorted(set(config.model.modalities) - set(probe["x"]))
    if missing:
        raise ValueError(
            f"config names modalities {missing} that dataset '{data.name}' does not provide "
            f"(it has {sorted(probe['x'])})"
        )
    return train, test
