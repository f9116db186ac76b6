"""A small built-in two-modality dataset with a known shared/private structure (for demos and tests).

Shared (what the joint factor should capture): a class k in 0..9.
  - "bars":  1x16x16 uint8 image of a bar through the centre at angle k * 18 degrees;
             private style: bar thickness and brightness.
  - "wave":  float vector of 32 samples of a sine whose frequency is 1 + k/2 cycles per window;
             private style: amplitude and phase.
Nothing about one modality's style can be read from the other, so a good model puts the class in
Z_y and the styles in Z_bars / Z_wave. Generated from a seed; labelled as synthetic in provenance.
The true factors travel in the batch's meta (`thickness`, `brightness`, `amplitude`, `phase`), and
`read_bars` / `read_wave` invert the generator (oracle readers that score generated samples).
"""

from __future__ import annotations

import numpy as np
import torch

from mmvae.data.tensor_source import TensorSource

NUM_CLASSES = 10
IMAGE_SIZE = 16
WAVE_LENGTH = 32


def _bars(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) labels -> ((N, 1, 16, 16) uint8 bars, thickness, brightness); angle from the label, the rest random."""
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
    images = (np.clip(noisy, 0.0, 1.0) * 255).round().astype(np.uint8)[:, None]
    return images, thickness[:, 0, 0], brightness[:, 0, 0]


def _waves(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) labels -> ((N, 32) float32 sines, amplitude, phase); frequency from the label, the rest random."""
    n = labels.shape[0]
    t = np.linspace(0.0, 1.0, WAVE_LENGTH, endpoint=False)[None]
    freq = (1.0 + labels / 2.0)[:, None]
    amplitude = rng.uniform(0.3, 1.0, size=(n, 1))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1))
    wave = amplitude * np.sin(2 * np.pi * freq * t + phase) + rng.normal(0.0, 0.02, size=(n, WAVE_LENGTH))
    return wave.astype(np.float32), amplitude[:, 0], phase[:, 0]


def make_toy(size: int, seed: int, missing_prob: float = 0.0) -> TensorSource:
    """Generate `size` samples; with missing_prob > 0 each modality is absent independently (never both)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=size)
    bars, thickness, brightness = _bars(labels, rng)
    waves, amplitude, phase = _waves(labels, rng)
    x = {"bars": torch.from_numpy(bars), "wave": torch.from_numpy(waves)}
    factors = {"thickness": thickness, "brightness": brightness, "amplitude": amplitude, "phase": phase}
    absent = rng.random((size, 2)) < missing_prob
    absent[absent.all(1), rng.integers(0, 2)] = False  # keep at least one modality per sample
    present = {"bars": torch.from_numpy(~absent[:, 0]), "wave": torch.from_numpy(~absent[:, 1])}
    for m in x:  # zero the filler rows so nothing about an absent modality leaks
        x[m][~present[m]] = 0
    provenance = {"dataset": "toy (synthetic bars + waves)", "seed": seed, "size": size, "missing_prob": missing_prob}
    meta = {k: torch.from_numpy(v.astype(np.float32)) for k, v in factors.items()}
    return TensorSource(x, present, torch.from_numpy(labels).long(), provenance, meta=meta)


# Which modality each style factor belongs to.
STYLE_FACTORS = {"bars": ("thickness", "brightness"), "wave": ("amplitude", "phase")}


def read_bars(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Oracle reader for bar images in [0, 1], (N, 1, 16, 16): class (from the bar's angle), thickness, brightness.

    The angle is the principal axis of the intensity (second moments about the centre); brightness the mean
    of the 8 brightest pixels; thickness from the total intensity, which is about 2 x thickness x brightness
    x the bar's length in the square.
    """
    x = images.float().clamp(0, 1)[:, 0]  # (N, H, W)
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32) - (IMAGE_SIZE - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    w = x / x.sum(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    sxx, syy, sxy = (w * xx * xx).sum((1, 2)), (w * yy * yy).sum((1, 2)), (w * xx * yy).sum((1, 2))
    angle = (0.5 * torch.atan2(2 * sxy, sxx - syy)) % torch.pi
    label = torch.round(angle / (torch.pi / NUM_CLASSES)).long() % NUM_CLASSES
    brightness = x.flatten(1).topk(8, dim=1).values.mean(1)
    length = IMAGE_SIZE / torch.maximum(angle.cos().abs(), angle.sin().abs())
    thickness = x.sum((1, 2)) / (2 * brightness.clamp_min(1e-3) * length)
    return {"class": label, "thickness": thickness, "brightness": brightness}


def read_wave(waves: torch.Tensor) -> dict[str, torch.Tensor]:
    """Oracle reader for waves (N, 32): class (the frequency whose least-squares sine fits best), amplitude, phase."""
    t = torch.linspace(0.0, 1.0, WAVE_LENGTH + 1)[:-1]
    best_err = best_a = best_b = None
    label = torch.zeros(waves.shape[0], dtype=torch.long)
    for k in range(NUM_CLASSES):
        w = 2 * torch.pi * (1.0 + k / 2.0)
        basis = torch.stack([torch.sin(w * t), torch.cos(w * t)], dim=1)  # (T, 2)
        coef = torch.linalg.lstsq(basis, waves.float().T).solution  # (2, N)
        err = ((basis @ coef - waves.float().T) ** 2).sum(0)  # (N,)
        if best_err is None:
            best_err, best_a, best_b = err, coef[0], coef[1]
        else:
            better = err < best_err
            label = torch.where(better, k, label)
            best_err = torch.where(better, err, best_err)
            best_a, best_b = torch.where(better, coef[0], best_a), torch.where(better, coef[1], best_b)
    return {"class": label, "amplitude": torch.sqrt(best_a**2 + best_b**2), "phase": torch.atan2(best_b, best_a) % (2 * torch.pi)}


TOY_READERS = {"bars": read_bars, "wave": read_wave}
