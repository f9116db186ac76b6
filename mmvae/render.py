"""Turn model outputs into pictures: image grids for image modalities, small line plots for vectors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from mmvae.modalities import Modality


def save_grid(modality: Modality, x: Tensor, path: Path, nrow: int, title: str | None = None,
              row_names: list[str] | None = None) -> Path:
    """Save samples x (N, *model_shape) of `modality` (modelled space) as one titled PNG grid, nrow per row."""
    if modality.display in ("spectrogram", "tokens"):  # spectrogram tiles + .wav rows; sentences
        from mmvae.media import save_media_grid

        return save_media_grid(modality, x.detach().cpu(), Path(path), nrow, title)
    x = x.detach().float().cpu()
    n = (x.shape[0] // nrow) * nrow or x.shape[0]
    cols = min(nrow, x.shape[0])
    cells = x[:n].reshape(-1, cols, *x.shape[1:])
    return panel_grid(path, cells, modality.display, title or modality.name, row_names=row_names)


def interleave_rows(a: Tensor, b: Tensor, nrow: int) -> Tensor:
    """Rows of `a` and `b` alternately (originals above reconstructions), nrow samples per row."""
    n = (a.shape[0] // nrow) * nrow
    a, b = a[:n].reshape(-1, nrow, *a.shape[1:]), b[:n].reshape(-1, nrow, *b.shape[1:])
    return torch.stack([a, b], dim=1).reshape(-1, *a.shape[2:])


# --- labelled panel grids (swaps, traversals, prior and reconstruction grids) ----------------------------
CONTENT_COLOUR, STYLE_COLOUR = "tab:blue", "tab:orange"


def draw_sample(ax, display: str, x: Tensor, ylim: tuple[float, float] | None = None) -> None:
    """One sample in modelled space on a matplotlib axis, as its modality's `display` says."""
    x = x.detach().float().cpu()
    if display == "image":
        img = x.clamp(0, 1)
        if img.dim() == 3 and img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    elif display == "spectrogram":
        ax.imshow((x[0] if x.dim() == 3 else x).numpy(), origin="lower", aspect="auto", cmap="magma")
    elif display == "tokens":
        ax.text(0.5, 0.5, " ".join(str(int(t)) for t in x.flatten()[:12]), ha="center", va="center", fontsize=5,
                wrap=True)
    else:
        ax.plot(x.flatten().numpy(), lw=0.9, color="black")
        if ylim is not None:
            ax.set_ylim(*ylim)
    ax.set_xticks([])
    ax.set_yticks([])


def _frame(ax, colour: str) -> None:
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(2.0)


def panel_grid(path: Path, cells: Tensor, display: str, title: str, *, row_heads: Tensor | None = None,
               row_display: str | None = None, col_heads: Tensor | None = None, col_display: str | None = None,
               row_label: str | None = None, col_label: str | None = None, row_names: list[str] | None = None,
               col_names: list[str] | None = None, cell_inches: float = 0.75) -> Path:
    """Save an (R, C, *shape) grid of samples with a title, optional donor row/column (framed: blue = content,
    orange = style) and axis labels; curves share one y-range so their amplitudes compare."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, cols = cells.shape[:2]
    top, left = int(col_heads is not None), int(row_heads is not None)
    everything = [t.detach().float().cpu().flatten() for t in (cells, row_heads, col_heads) if t is not None]
    lo, hi = float(torch.cat(everything).min()), float(torch.cat(everything).max())
    ylim = (lo - 0.05 * (hi - lo + 1e-6), hi + 0.05 * (hi - lo + 1e-6))
    width, height = cell_inches * (cols + left) + 0.9, cell_inches * (rows + top) + 1.0
    fig, axes = plt.subplots(rows + top, cols + left, figsize=(width, height), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if top and left:
        axes[0, 0].axis("off")
    for c in range(cols):
        if top:
            draw_sample(axes[0, left + c], col_display or display, col_heads[c], ylim)
            _frame(axes[0, left + c], STYLE_COLOUR)
        if col_names:
            axes[-1, left + c].set_xlabel(col_names[c], fontsize=6)
    for r in range(rows):
        if left:
            draw_sample(axes[top + r, 0], row_display or display, row_heads[r], ylim)
            _frame(axes[top + r, 0], CONTENT_COLOUR)
        if row_names:
            axes[top + r, 0].set_ylabel(row_names[r], fontsize=6, rotation=0, ha="right", va="center")
        for c in range(cols):
            draw_sample(axes[top + r, left + c], display, cells[r, c], ylim)
    fig.suptitle(title, fontsize=8)
    if col_label:
        fig.text(0.5, 1 - 0.55 / height, col_label, ha="center", va="top", fontsize=7, color=STYLE_COLOUR)
    if row_label:
        fig.text(0.25 / width, 0.5, row_label, ha="left", va="center", rotation=90, fontsize=7, color=CONTENT_COLOUR)
    fig.subplots_adjust(left=0.6 / width, right=1 - 0.15 / width, bottom=0.3 / height, top=1 - 0.75 / height,
                        wspace=0.08, hspace=0.08)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
