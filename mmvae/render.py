"""Turn model outputs into pictures: image grids for image modalities, small line plots for vectors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from mmvae.modalities import Modality


def save_grid(modality: Modality, x: Tensor, path: Path, nrow: int, title: str | None = None) -> Path:
    """Save samples x (N, *shape) of `modality` (floats in data space) as one PNG grid, row-major, nrow per row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if modality.display in ("spectrogram", "tokens"):  # spectrogram tiles + .wav rows; sentences
        from mmvae.media import save_media_grid

        return save_media_grid(modality, x.detach().cpu(), path, nrow, title)
    x = x.detach().float().cpu()
    if modality.display == "image":
        from torchvision.utils import save_image

        scale = max(1, 48 // x.shape[-1])  # small images are enlarged (nearest) so a grid is readable
        if scale > 1:
            x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
        save_image(x.clamp(0, 1), path, nrow=nrow, padding=2, pad_value=0.5)
        return path
    return _save_line_grid(x.flatten(1), path, nrow, title)


def _save_line_grid(x: Tensor, path: Path, nrow: int, title: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = x.shape[0]
    rows = -(-n // nrow)
    fig, axes = plt.subplots(rows, nrow, figsize=(1.3 * nrow, 0.9 * rows), squeeze=False, sharey=True)
    lo, hi = float(x.min()), float(x.max())
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i < n:
            ax.plot(x[i].numpy(), lw=1.0, color="tab:blue")
            ax.set_ylim(lo - 0.05 * abs(lo), hi + 0.05 * abs(hi))
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, 0.96 if title else 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def interleave_rows(a: Tensor, b: Tensor, nrow: int) -> Tensor:
    """Rows of `a` and `b` alternately (originals above reconstructions), nrow samples per row."""
    n = (a.shape[0] // nrow) * nrow
    a, b = a[:n].reshape(-1, nrow, *a.shape[1:]), b[:n].reshape(-1, nrow, *b.shape[1:])
    return torch.stack([a, b], dim=1).reshape(-1, *a.shape[2:])
