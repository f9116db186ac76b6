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
from torch import Tensor

from mmvae.batch import batch_to, slice_rows
from mmvae.data.registry import build_sources
from mmvae.families.base import MultimodalModel
from mmvae.render import panel_grid
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
    """All swap grids of a run's test split, for every observed modality; returns the PNG paths."""
    model = run.model
    names = list(model.names)
    display = {m: model.modalities[m].display for m in names}
    plain = [m for m in names if display[m] in ("image", "curve")]  # spectrograms and text: swap_media below
    _, test = build_sources(run.config)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    rows = batch_to(test.gather(torch.randperm(len(test), generator=gen)[:n]), device)
    cols = batch_to(test.gather(torch.randperm(len(test), generator=gen)[:n]), device)
    shown_rows = model.preprocess(rows["x"], rows.get("mask"))
    shown_cols = model.preprocess(cols["x"], cols.get("mask"))
    content, style = "content (Z_y) from the sample on the left", "style (Z_{}) from the sample on top"
    written = []
    for m in plain:
        if m not in getattr(model, "private_names", names):
            continue  # no private factor: nothing to swap
        cells = _pair_grid(model, rows, cols, m, None)
        written.append(panel_grid(out_dir / f"within_{m}.png", cells, display[m],
                                  f"{m}: each cell takes the class of its row and the style of its column",
                                  row_heads=shown_rows[m], col_heads=shown_cols[m], row_label=content,
                                  col_label=style.format(m)))
    for a in plain:
        for b in plain:
            if a != b and b in getattr(model, "private_names", names):
                # class read from `a` alone, style (private factor) from b's column donors, drawn as b
                cells = _pair_grid(model, rows, cols, b, joint_from=[a])
                written.append(panel_grid(out_dir / f"cross_{a}_to_{b}.png", cells, display[b],
                                          f"{b} generated from {a}: class from the {a} on the left, style from the top",
                                          row_heads=shown_rows[a], row_display=display[a], col_heads=shown_cols[b],
                                          row_label=f"content: Z_y inferred from {a} alone", col_label=style.format(b)))
    torch.manual_seed(seed)
    z_joint, z_private = model.sample_prior(n)
    _, _, row_cond = encode_latents(model, rows)  # conditions (if any) of the row samples
    for m in plain:
        zj = z_joint.repeat_interleave(n, 0)
        zp = {k: z.repeat(n, 1) for k, z in z_private.items()}
        cond = {c: f.repeat_interleave(n, 0) for c, f in row_cond.items()}
        cells = model.mean(m, model.decode(zj, zp, [m], cond)[m]).reshape(n, n, *model.modalities[m].model_shape)
        written.append(panel_grid(out_dir / f"prior_{m}.png", cells, display[m],
                                  f"{m} from the prior: Z_y drawn per row, Z_{m} drawn per column",
                                  row_label="same Z_y along a row", col_label=f"same Z_{m} down a column"))
    for m in plain:
        written.append(_traversal(model, rows, m, out_dir / f"traverse_{m}.png"))
    from mmvae.swap_media import write_media_swaps  # spectrogram and text modalities (and their cross swaps)

    written += write_media_swaps(model, rows, cols, shown_rows, shown_cols, out_dir, _pair_grid, seed)
    return written


def _traversal(model: MultimodalModel, batch: dict, modality: str, path: Path, steps: int = 9) -> Path:
    """Rows: each joint dimension, then each private dimension of `modality`, swept over [-3, 3] from sample 0."""
    z_joint, z_private, cond = encode_latents(model, slice_rows(batch, 0, 1))
    cond = {c: f.repeat(steps, 1) for c, f in cond.items()}
    values = torch.linspace(-3, 3, steps)
    rows, names = [], []
    for d in range(z_joint.shape[1]):
        zj = z_joint.repeat(steps, 1)
        zj[:, d] = values
        rows.append(model.decode(zj, {m: z.repeat(steps, 1) for m, z in z_private.items()}, [modality], cond)[modality])
        names.append(f"Z_y[{d}]")
    for d in range(z_private[modality].shape[1] if modality in z_private else 0):
        zp = {m: z.repeat(steps, 1) for m, z in z_private.items()}
        zp[modality][:, d] = values
        rows.append(model.decode(z_joint.repeat(steps, 1), zp, [modality], cond)[modality])
        names.append(f"Z_{modality}[{d}]")
    cells = torch.stack([model.mean(modality, r) for r in rows])
    return panel_grid(path, cells, model.modalities[modality].display,
                      f"{modality}: one latent dimension swept from -3 to 3 per row (the others at sample 0's means)",
                      row_names=names, col_names=[f"{v:.1f}" for v in values.tolist()])


def add_parser(sub) -> None:
    p = sub.add_parser("swap", help="factor-swap grids (within and across modalities, prior, traversals)",
                       description="Write PNG grids where row r takes the joint factor of sample r and column c the private "
                                   "factor of sample c; the first row and column show the donors.")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/swaps)")
    p.add_argument("--n", type=int, default=8, help="rows and columns per grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the donor samples and the prior draws")
    p.add_argument("--device", default="cpu", help="cpu or cuda")


def run(args) -> int:
    from mmvae.runs import load_run

    loaded = load_run(args.run, args.device)
    for path in write_swap_grids(loaded, args.out or args.run / "swaps", args.n, args.seed):
        print(f"wrote {path}")
    return 0
