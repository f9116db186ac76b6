"""Factor swaps: decode the joint factor of one sample with the private factor of another.

`mmvae swap RUN` writes PNG grids (deterministic with --seed):
  within_<m>.png        row r = Z_y of sample r, column c = Z_m of sample c (first row / column: the donors)
  cross_<a>_to_<b>.png  Z_y inferred from modality a alone (row donors, shown in a), style Z_b of column donors
  prior_<m>.png         rows: Z_y drawn from the prior; columns: Z_m drawn from the prior
  traverse_<m>.png      one row per latent dimension (joint, then private) swept from -3 to 3 around a sample
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mmvae.batch import batch_to, slice_rows
from mmvae.data.registry import build_sources
from mmvae.families.base import MultimodalModel
from mmvae.runs import LoadedRun


def encode_latents(model: MultimodalModel, batch: dict, joint_from: list[str] | None = None
                   ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Posterior means and condition features: (Z_y from the modalities in `joint_from` (default: all present),
    {m: Z_m}, {condition: (B, F_c)})."""
    post = model.posteriors(batch, joint_from)
    cond = {c: post.encodings[c].h for c in model.conditions}
    return post.joint.mean, {m: q.mu for m, q in post.private.items()}, cond


def encode_means(model: MultimodalModel, batch: dict, joint_from: list[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Posterior means: Z_y from the modalities in `joint_from` (default: all present), Z_m from x_m."""
    z_joint, z_private, _ = encode_latents(model, batch, joint_from)
    return z_joint, z_private


def swap_decode(model: MultimodalModel, content: dict, style: dict, modality: str,
                joint_from: list[str] | None = None) -> Tensor:
    """Mean of x_m decoded from Z_y (and conditions) of `content` samples and Z_m of `style` samples (same batch size)."""
    z_joint, _, cond = encode_latents(model, content, joint_from)
    _, z_private = encode_means(model, style)
    params = model.decode(z_joint, z_private, [modality], cond)[modality]
    return model.mean(modality, params)


def _to_display(x: Tensor, size: int) -> Tensor:
    """(N, C, H, W) floats in [0, 1] -> (N, 3, size, size) for grids mixing modalities."""
    x = x.float().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return F.interpolate(x, size=(size, size), mode="nearest") if x.shape[-1] != size else x


def _bordered_grid(cells: Tensor, row_heads: Tensor | None, col_heads: Tensor | None, path: Path, size: int) -> Path:
    """Save an (R, C) grid of images with optional donor images as the first column / first row."""
    from torchvision.utils import save_image

    rows, cols = cells.shape[:2]
    blank = torch.full((1, 3, size, size), 1.0)
    tiles = []
    if col_heads is not None:
        tiles += ([blank] if row_heads is not None else []) + [_to_display(col_heads, size)]
    for r in range(rows):
        if row_heads is not None:
            tiles.append(_to_display(row_heads[r : r + 1], size))
        tiles.append(_to_display(cells[r], size))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([t.cpu() for t in tiles]), path, nrow=cols + (row_heads is not None), padding=2, pad_value=0.5)
    return path


def _pair_grid(model, content: dict, style: dict, modality: str, joint_from: list[str] | None) -> Tensor:
    """(R, C, ...) decoded means: row r content of sample r, column c style of sample c."""
    z_joint, _, cond = encode_latents(model, content, joint_from)
    _, z_private = encode_means(model, style)
    rows, cols = z_joint.shape[0], next(iter(style["present"].values())).shape[0]
    zj = z_joint.repeat_interleave(cols, 0)  # (R*C, Dy)
    zp = {m: z.repeat(rows, 1) for m, z in z_private.items()}
    cond = {c: f.repeat_interleave(cols, 0) for c, f in cond.items()}
    out = model.mean(modality, model.decode(zj, zp, [modality], cond)[modality])
    return out.reshape(rows, cols, *out.shape[1:])


@torch.no_grad()
def write_swap_grids(run: LoadedRun, out_dir: Path, n: int = 8, seed: int = 0) -> list[Path]:
    """All swap grids of a run's test split; returns the PNG paths."""
    model = run.model
    image_names = [m for m in model.names if model.modalities[m].display == "image"]
    size = max(model.modalities[m].shape[-1] for m in image_names) if image_names else 32
    _, test = build_sources(run.config)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    rows = batch_to(test.gather(torch.randperm(len(test), generator=gen)[:n]), device)
    cols = batch_to(test.gather(torch.randperm(len(test), generator=gen)[:n]), device)
    shown_rows = model.preprocess(rows["x"], rows.get("mask"))
    shown_cols = model.preprocess(cols["x"], cols.get("mask"))
    written = []
    for m in image_names:
        cells = _pair_grid(model, rows, cols, m, None)
        written.append(_bordered_grid(cells, shown_rows[m], shown_cols[m],
                                      out_dir / f"within_{m}.png", size))
    for a in image_names:
        for b in image_names:
            if a != b:  # digit read from `a` alone, style (private factor) from b's column donors, drawn as b
                cells = _pair_grid(model, rows, cols, b, joint_from=[a])
                written.append(_bordered_grid(cells, shown_rows[a], shown_cols[b],
                                              out_dir / f"cross_{a}_to_{b}.png", size))
    torch.manual_seed(seed)
    z_joint, z_private = model.sample_prior(n)
    _, _, row_cond = encode_latents(model, rows)  # conditions (if any) of the row samples
    for m in image_names:
        zj = z_joint.repeat_interleave(n, 0)
        zp = {k: z.repeat(n, 1) for k, z in z_private.items()}
        cond = {c: f.repeat_interleave(n, 0) for c, f in row_cond.items()}
        cells = model.mean(m, model.decode(zj, zp, [m], cond)[m]).reshape(n, n, *model.modalities[m].model_shape)
        written.append(_bordered_grid(cells, None, None, out_dir / f"prior_{m}.png", size))
    for m in image_names:
        written.append(_traversal(model, rows, m, out_dir / f"traverse_{m}.png", size))
    from mmvae.swap_media import write_media_swaps  # spectrogram and text modalities (and their cross swaps)

    written += write_media_swaps(model, rows, cols, shown_rows, shown_cols, out_dir, _pair_grid, seed)
    return written


def _traversal(model: MultimodalModel, batch: dict, modality: str, path: Path, size: int, steps: int = 9) -> Path:
    """Rows: each joint dimension, then each private dimension of `modality`, swept over [-3, 3] from sample 0."""
    z_joint, z_private, cond = encode_latents(model, slice_rows(batch, 0, 1))
    cond = {c: f.repeat(steps, 1) for c, f in cond.items()}
    values = torch.linspace(-3, 3, steps)
    rows = []
    for d in range(z_joint.shape[1]):
        zj = z_joint.repeat(steps, 1)
        zj[:, d] = values
        rows.append(model.decode(zj, {m: z.repeat(steps, 1) for m, z in z_private.items()}, [modality], cond)[modality])
    for d in range(z_private[modality].shape[1] if modality in z_private else 0):
        zp = {m: z.repeat(steps, 1) for m, z in z_private.items()}
        zp[modality][:, d] = values
        rows.append(model.decode(z_joint.repeat(steps, 1), zp, [modality], cond)[modality])
    cells = torch.stack([model.mean(modality, r) for r in rows])
    return _bordered_grid(cells, None, None, path, size)


def add_parser(sub) -> None:
    p = sub.add_parser("swap", help="factor-swap grids (within and across modalities, prior, traversals)",
                       description="Write PNG grids where row r takes the joint factor of sample r and column c the private "
                                   "factor of sample c; the first row and column show the donors.")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/swaps)")
    p.add_argument("--n", type=int, default=8, help="rows and columns per grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    from mmvae.runs import load_run

    loaded = load_run(args.run, args.device)
    for path in write_swap_grids(loaded, args.out or args.run / "swaps", args.n, args.seed):
        print(f"wrote {path}")
    return 0
