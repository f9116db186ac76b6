"""`mmvae sample RUN`: prior samples and reconstructions of every modality as PNG grids."""

from __future__ import annotations

from pathlib import Path

import torch

from mmvae.batch import batch_to
from mmvae.data.registry import build_sources
from mmvae.data.sampling import subset_indices
from mmvae.render import interleave_rows, save_grid
from mmvae.runs import LoadedRun


@torch.no_grad()
def write_samples(run: LoadedRun, out_dir: Path, num: int = 64, nrow: int = 8, seed: int = 0) -> list[Path]:
    """Decode `num` prior draws and reconstruct `num` test samples; one PNG per modality and kind.

    Models with condition modalities decode prior draws under the conditions of the test samples."""
    model = run.model
    device = next(model.parameters()).device
    _, test = build_sources(run.config)
    index = subset_indices(test, num, seed)  # seeded and class-balanced: never the first `num` test samples
    batch = batch_to(test.gather(index.to(test.device)), device)
    out = model(batch, sample=False)
    torch.manual_seed(seed)
    written = []
    z_joint, z_private = model.sample_prior(num, device)
    n = z_joint.shape[0]
    cond = {c: f.repeat(-(-n // f.shape[0]), 1)[:n] for c, f in out.cond.items()}
    params = model.decode(z_joint, z_private, cond=cond)
    for m in model.names:
        mean = model.mean(m, params[m])
        written.append(save_grid(model.modalities[m], mean, out_dir / f"prior_{m}.png", nrow, f"{m}: samples of the prior (Z_y and Z_{m} drawn from N(0, I))"))
    for m in model.names:
        recon = model.mean(m, out.params[m])
        both = interleave_rows(out.inputs[m], recon, nrow)
        names = ["data", "recon."] * (both.shape[0] // max(1, 2 * nrow))
        written.append(save_grid(model.modalities[m], both, out_dir / f"recon_{m}.png", nrow,
                                 f"{m}: test samples (rows 'data') and their reconstructions from the posterior means",
                                 row_names=names))
    return written
