"""Test-only examples of every seam (docs/architecture.md shows each as a recipe): a modality with skip
features, a head that reads them and a condition, a loss term, a model family and a dataset (the fusion
recipe's example is the built-in `moe`). Each is one file plus one registry line, made in `register()` (undone
by `unregister()`)."""

from __future__ import annotations

from contextlib import contextmanager

from mmvae.data.registry import DATASETS
from mmvae.families import FAMILIES
from mmvae.heads import HEADS
from mmvae.losses import LOSS_TERMS
from mmvae.modalities import MODALITY_KINDS
from tests.seam_examples.dataset import TOY_WITH_ACTION
from tests.seam_examples.family import JointOnlyVAE
from tests.seam_examples.l2_term import JointL2Term
from tests.seam_examples.skip_image import BrightnessHead, ConvSkipImage

REGISTRY_LINES = [
    (MODALITY_KINDS, ConvSkipImage.kind, ConvSkipImage),
    (HEADS, BrightnessHead.kind, BrightnessHead),
    (LOSS_TERMS, "joint_l2", JointL2Term()),
    (FAMILIES, JointOnlyVAE.family, JointOnlyVAE),
    (DATASETS, TOY_WITH_ACTION.name, TOY_WITH_ACTION),
]


@contextmanager
def registered():
    """Every example registered for the duration of the block."""
    for registry, key, value in REGISTRY_LINES:
        registry[key] = value
    try:
        yield
    finally:
        for registry, key, _ in REGISTRY_LINES:
            registry.pop(key, None)
