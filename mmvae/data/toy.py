"""A small built-in two-modality dataset with a known shared/private structure (for demos and tests).

Shared (what the joint factor should capture): a class k in 0..9.
  - "bars":  1x16x16 uint8 image of a bar through the centre at angle k * 18 degrees;
             private style: bar thickness and brightness.
  - "wave":  float vector of 32 samples of a sine whose frequency is 1 + k/2 cycles per window;
             private style: amplitude and phase.
Nothing about one modality's style can be read from the other, so a good model puts the class in
Z_y and the styles in Z_bars / Z_wave. Generated from a seed; labelled as synthetic in provenance.
"""

from __future__ import annotations

import numpy as np
import torch

from mmvae.data.tensor_source import TensorSource

NUM_CLASSES = 10
IMAGE_SIZE = 16
WAVE_LENGTH = 32


def _bars(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N,) labels -> (N, 1, 16, 16) uint8 bars; angle from the label, thickness and brightness random."""
    n = labels.shape[0]
    angle = np.deg2rad(labels * 18.0)[:, None, None]
    thickness = rng.uniform(0.6, 2.4, size=(n, 1, 1))
    brightness = rng.uniform(0.35, 1.0, size=(n, 1, 1))
    coords = np.arange(IMAGE_SIZE) - (IMAGE_SIZE - 1) / 2
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    # Distance of each pixel from the line through the centre with direction (cos a, sin a).
    dist = np.abs(-np.sin(angle) * xx + np.cos(angle) * yy)
    intensity = brightness * np.clip(thickness + 0.5 - dist, 0.0, 1.0)
    noisy = intensity + rng.normal(0.0, 0.03, size=intensity.shape)
    return (np.clip(noisy, 0.0, 1.0) * 255).round().astype(np.uint8)[:, None]


def _waves(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N,) labels -> (N, 32) float32 sines; frequency from the label, amplitude and phase random."""
    n = labels.shape[0]
    t = np.linspace(0.0, 1.0, WAVE_LENGTH, endpoint=False)[None]
    freq = (1.0 + labels / 2.0)[:, None]
    amplitude = rng.uniform(0.3, 1.0, size=(n, 1))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1))
    wave = amplitude * np.sin(2 * np.pi * freq * t + phase) + rng.normal(0.0, 0.02, size=(n, WAVE_LENGTH))
    return wave.astype(np.float32)


def make_toy(size: int, seed: int, missing_prob: float = 0.0) -> TensorSource:
    """Generate `size` samples; with missing_prob > 0 each modality is absent independently (never both)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=size)
    x = {"bars": torch.from_numpy(_bars(labels, rng)), "wave": torch.from_numpy(_waves(labels, rng))}
    absent = rng.random((size, 2)) < missing_prob
    absent[absent.all(1), rng.integers(0, 2)] = False  # keep at least one modality per sample
    present = {"bars": torch.from_numpy(~absent[:, 0]), "wave": torch.from_numpy(~absent[:, 1])}
    for m in x:  # zero the filler rows so nothing about an absent modality leaks
        x[m][~present[m]] = 0
    provenance = {"dataset": "toy (synthetic bars + waves)", "seed": seed, "size": size, "missing_prob": missing_prob}
    return TensorSource(x, present, torch.from_numpy(labels).long(), provenance)
