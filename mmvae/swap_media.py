"""Swap grids for spectrogram and text modalities: within each, and across every pair that involves one of them
(images included). PNGs of spectrogram tiles with one .wav per grid row beside them; text grids as markdown."""

from __future__ import annotations

from pathlib import Path

import torch

from mmvae.media import swap_grid


@torch.no_grad()
def write_media_swaps(model, rows: dict, cols: dict, shown_rows: dict, shown_cols: dict, out_dir: Path, pair_grid,
                      seed: int = 0) -> list[Path]:
    media = [m for m in model.names if model.modalities[m].display in ("spectrogram", "tokens")]
    if not media:
        return []
    written: list[Path] = []
    mods = model.modalities
    for m in media:
        cells = pair_grid(model, rows, cols, m, None)
        written += swap_grid(mods[m], cells, mods[m], shown_rows[m], mods[m], shown_cols[m], out_dir / f"within_{m}.png")
    for a in model.names:
        for b in model.names:
            if a != b and (a in media or b in media):  # digit read from a alone, style of b's column donors
                cells = pair_grid(model, rows, cols, b, [a])
                written += swap_grid(mods[b], cells, mods[a], shown_rows[a], mods[b], shown_cols[b],
                                     out_dir / f"cross_{a}_to_{b}.png")
    torch.manual_seed(seed)
    n = next(iter(rows["present"].values())).shape[0]
    z_joint, z_private = model.sample_prior(n)
    for m in media:
        zj = z_joint.repeat_interleave(n, 0)
        zp = {k: z.repeat(n, 1) for k, z in z_private.items()}
        cells = model.mean(m, model.decode(zj, zp, [m])[m])
        cells = cells.reshape(n, n, *cells.shape[1:])
        written += swap_grid(mods[m], cells, mods[m], None, mods[m], None, out_dir / f"prior_{m}.png")
    return written
