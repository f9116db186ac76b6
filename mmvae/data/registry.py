"""Datasets by name: how to build a config's train and test sources, which extra metrics the dataset
supports, its reference targets and what its provenance means. `data.name` is a key of `DATASETS`;
evaluation asks the entry instead of branching on the name. Adding a dataset is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mmvae.data.source import BatchSource

if TYPE_CHECKING:
    from mmvae.config import ExperimentConfig

# (metric, ">=" or "<=", full-budget target, quick-CPU floor or None)
Target = tuple[str, str, float, float | None]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    build: Callable[["ExperimentConfig"], tuple[BatchSource, BatchSource]]  # (train, test) on the CPU
    description: str = ""
    title: str = ""  # the dataset's name as people write it
    # Extra metrics beyond loss terms, label accuracy and IWAE: fn(run, train, test, settings) -> dict.
    metrics: Callable[..., dict[str, Any]] | None = None
    targets: list[Target] = field(default_factory=list)
    needs_path: bool = False  # a prepared folder in data.path
    provenance_notes: Callable[[dict], list[str]] | None = None  # markdown lines for metrics.md
    # Checks `mmvae evaluate` runs before any work (e.g. that cached classifiers exist): fn(config) raises.
    preflight: Callable[["ExperimentConfig"], None] | None = None
    # (training samples, modality names) without loading the data, for `mmvae train`'s checks; None: unknown.
    facts: Callable[["ExperimentConfig"], tuple[int | None, set[str] | None]] | None = None
    # The dataset's own lines for metrics.md, consulted before the generic ones: fn() -> [(prefix, count key,
    # meaning)] (e.g. vision_touch's probe/contact/ must not read as the label probe).
    metric_help: Callable[[], list[tuple[str, str | None, str]]] | None = None

    def check_config(self, config: "ExperimentConfig") -> None:
        """Config checks that need the dataset (ValueError names the key)."""
        if self.needs_path and not config.data.path:
            raise ValueError(f"data.path must name a prepared {self.title or self.name} folder ({self.description})")


def _build_toy(config: "ExperimentConfig") -> tuple[BatchSource, BatchSource]:
    from mmvae.data.toy import make_toy

    data = config.data
    train = make_toy(data.train_size, seed=config.seed, missing_prob=data.missing_prob)
    test = make_toy(data.test_size, seed=config.seed + 1_000_000, missing_prob=0.0)
    return train, test


def _build_mnist_svhn(config: "ExperimentConfig") -> tuple[BatchSource, BatchSource]:
    from mmvae.data.mnist_svhn import MnistSvhnPairs

    return MnistSvhnPairs.load(config.data.path, split="train"), MnistSvhnPairs.load(config.data.path, split="test")


def _mnist_svhn_metrics(run, train: BatchSource | None, test: BatchSource, settings) -> dict[str, Any]:
    """Coherence, swap and style metrics scored by the cached digit classifiers; the latent-cycle style score; MIG,
    DCI and SAP against the digit and the style factors (mmvae.mnist_svhn_metrics); linear probes."""
    from mmvae.classifiers import load_digit_classifiers
    from mmvae.metrics import generative_metrics, linear_probes

    device = next(run.model.parameters()).device
    classifiers, record = load_digit_classifiers(run.config.data.path, device)
    metrics: dict[str, Any] = {f"classifier_test_accuracy/{m}": r["test_accuracy"] for m, r in record["modalities"].items()}
    glimit = settings.generative_limit if settings.limit is None else min(settings.limit, settings.generative_limit)
    metrics.update(generative_metrics(run.model, test, classifiers, glimit, prior_samples=glimit, seed=settings.seed))
    from mmvae.disentanglement import latent_cycle_metrics  # the latent-cycle style score (cycle/...)

    metrics.update(latent_cycle_metrics(run.model, test, glimit, settings.seed))
    from mmvae.mnist_svhn_metrics import mnist_svhn_disentanglement

    metrics.update(mnist_svhn_disentanglement(run.model, test, min(glimit, 2000), settings.seed))
    if train is not None:
        metrics.update(linear_probes(run.model, train, test, settings.probe_train, glimit))
    return metrics


def _toy_facts(config: "ExperimentConfig") -> tuple[int | None, set[str] | None]:
    from mmvae.data.toy import make_toy

    return config.data.train_size, set(make_toy(1, seed=0).gather(torch.arange(1))["x"])


def _mnist_svhn_facts(config: "ExperimentConfig") -> tuple[int | None, set[str] | None]:
    from pathlib import Path

    import numpy as np

    from mmvae.data.mnist_svhn import MODALITIES, read_manifest

    names = set(MODALITIES)
    try:
        manifest = read_manifest(Path(config.data.path))
        pairs = Path(config.data.path) / manifest["splits"]["train"]["files"]["pairs"]
        return int(np.load(pairs, mmap_mode="r", allow_pickle=False).shape[0]), names
    except Exception:  # noqa: BLE001 - unreadable data is the loader's to report (DataError)
        return None, names


def _toy_metrics(run, train, test, settings) -> dict[str, Any]:
    from mmvae.toy_metrics import toy_metrics

    return toy_metrics(run, train, test, settings)


# What the demo must show (scored by the toy's oracle readers); the floor column is unused.
TOY_TARGETS: list[Target] = [
    ("swap/accuracy", ">=", 0.90, None),
    ("style_transfer/mean", ">=", 0.80, None),
    ("coherence/cross_mean", ">=", 0.90, None),
    ("probe/joint", ">=", 0.90, None),
    ("probe/private/bars", "<=", 0.25, None),
    ("probe/private/wave", "<=", 0.25, None),
]


def _mnist_svhn_preflight(config: "ExperimentConfig") -> None:
    from pathlib import Path

    from mmvae.classifiers import CACHE_DIR

    record = Path(config.data.path) / CACHE_DIR / "classifiers.json"
    if not record.is_file():
        raise FileNotFoundError(f"{record} is missing: evaluation scores generated digits with cached classifiers; "
                                f"train them once with `mmvae classifiers {config.data.path}`")


def _mnist_svhn_notes(prov: dict) -> list[str]:
    svhn = prov.get("svhn") if isinstance(prov.get("svhn"), dict) else None
    if svhn is None:
        return []
    lines = [f"SVHN source: **{svhn.get('source')}** ({svhn.get('reason', '')})."]
    if svhn.get("source") == "synthetic":
        lines.append("These figures use the offline street-digit stand-in, not real SVHN: they are not comparable "
                     "with published MNIST–SVHN results.")
    from mmvae.mnist_svhn_metrics import disentanglement_note

    note = disentanglement_note(prov)
    if note:
        lines.append(note)
    return lines


def _mnist_svhn_metric_help() -> list[tuple[str, str | None, str]]:
    from mmvae.mnist_svhn_metrics import METRIC_HELP

    return METRIC_HELP


# The classifier rows are the accuracies below which coherence figures are not trustworthy.
MNIST_SVHN_TARGETS: list[Target] = [
    ("classifier_test_accuracy/mnist", ">=", 0.99, 0.99),
    ("classifier_test_accuracy/svhn", ">=", 0.95, 0.95),
    ("coherence/mnist->svhn", ">=", 0.90, 0.80),
    ("coherence/svhn->mnist", ">=", 0.85, 0.80),
    ("coherence/joint", ">=", 0.50, None),
    ("probe/joint/mnist", ">=", 0.95, None),
    ("probe/joint/svhn", ">=", 0.85, None),
    ("probe/private/mnist", "<=", 0.20, 0.25),
    ("probe/private/svhn", "<=", 0.20, 0.25),
    ("swap/accuracy", ">=", 0.90, 0.80),
]

def _build_digits4(config: "ExperimentConfig") -> tuple[BatchSource, BatchSource]:
    from mmvae.data.digits4 import build

    return build(config)


def _digits4_metrics(run, train, test, settings) -> dict[str, Any]:
    from mmvae.digits4_metrics import digits4_metrics

    return digits4_metrics(run, train, test, settings)


def _digits4_notes(prov: dict) -> list[str]:
    from mmvae.digits4_metrics import digits4_notes

    return digits4_notes(prov)


def _digits4_targets() -> list[Target]:
    from mmvae.data.digits4 import DIGITS4_TARGETS

    return DIGITS4_TARGETS


def _build_vision_touch(config: "ExperimentConfig") -> tuple[BatchSource, BatchSource]:
    from mmvae.data.robot import build

    return build(config)


def _vision_touch_notes(prov: dict) -> list[str]:
    from mmvae.data.robot import provenance_notes

    return provenance_notes(prov)


def _vision_touch_metrics(run, train, test, settings) -> dict[str, Any]:
    from mmvae.robot_metrics import vision_touch_metrics

    return vision_touch_metrics(run, train, test, settings)


def _vision_touch_metric_help() -> list[tuple[str, str | None, str]]:
    from mmvae.robot_metrics import ROBOT_METRIC_HELP

    return ROBOT_METRIC_HELP


def _vision_touch_facts(config: "ExperimentConfig") -> tuple[int | None, set[str] | None]:
    from mmvae.data.robot import facts

    return facts(config)


DATASETS: dict[str, DatasetEntry] = {
    "toy": DatasetEntry("toy", _build_toy, "built-in synthetic bars + waves", metrics=_toy_metrics,
                        targets=TOY_TARGETS, facts=_toy_facts),
    "mnist_svhn": DatasetEntry("mnist_svhn", _build_mnist_svhn, "see `mmvae prepare mnist-svhn`", title="MNIST-SVHN",
                               metrics=_mnist_svhn_metrics, targets=MNIST_SVHN_TARGETS, needs_path=True,
                               provenance_notes=_mnist_svhn_notes, preflight=_mnist_svhn_preflight,
                               facts=_mnist_svhn_facts, metric_help=_mnist_svhn_metric_help),
    "digits4": DatasetEntry("digits4", _build_digits4, "see `mmvae prepare digits4`", metrics=_digits4_metrics,
                            targets=_digits4_targets(), needs_path=True, provenance_notes=_digits4_notes),
    "vision_touch": DatasetEntry("vision_touch", _build_vision_touch, "SIMULATED robot episodes in Lee et al.'s format, "
                                 "see `mmvae prepare robot-sim` and docs/robot.md", title="Vision and touch (simulated)",
                                 metrics=_vision_touch_metrics, needs_path=True, provenance_notes=_vision_touch_notes, facts=_vision_touch_facts,
                                 metric_help=_vision_touch_metric_help),
}


def dataset_entry(config: "ExperimentConfig") -> DatasetEntry:
    return DATASETS[config.data.name]


def build_sources(config: "ExperimentConfig") -> tuple[BatchSource, BatchSource]:
    """(train, test) sources on the CPU; the trainer moves them to the device when data.on_device is set."""
    from mmvae.config import ConfigError, did_you_mean

    train, test = dataset_entry(config).build(config)
    probe = train.gather(torch.arange(1))
    provided = sorted(probe["x"])
    missing = sorted(set(config.model.modalities) - set(provided))
    if missing:
        hint = did_you_mean(missing[0], provided)
        raise ConfigError(
            f"key 'model.modalities': config names modalities {missing} that dataset '{config.data.name}' does not "
            f"provide{hint} (it has {provided})"
        )
    for m, mc in config.model.modalities.items():
        stored = list(probe["x"][m].shape[1:])
        if stored != list(mc.shape):
            raise ConfigError(f"key 'model.modalities.{m}.shape': {list(mc.shape)}, but dataset '{config.data.name}' "
                              f"stores {m} as {stored}")
    return train, test
