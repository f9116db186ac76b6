"""`mmvae sample RUN`: prior samples and reconstructions of every modality as PNG grids."""

from __future__ import annotations

from pathlib import Path

import torch

from mmvae.data.registry import build_sources
from mmvae.render import interleave_rows, save_grid
from mmvae.runs import LoadedRun


@torch.no_grad()
def write_samples(run: LoadedRun, out_dir: Path, num: int = 64, nrow: int = 8, seed: int = 0) -> list[Path]:
    """Decode `num` prior draws and reconstruct `num` test samples; one PNG per modality and kind."""
    model = run.model
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    written = []
    z_joint, z_private = model.sample_prior(num, device)
    params = model.decode(z_joint, z_private)
    for m in model.names:
        mean = model.modalities[m].mean(params[m])
        written.append(save_grid(model.modalities[m], mean, out_dir / f"prior_{m}.png", nrow, f"{m}: prior samples"))

    _, test = build_sources(run.config)
    batch = test.gather(torch.arange(min(num, len(test))))
    batch = {k: ({m: t.to(device) for m, t in v.items()} if isinstance(v, dict) else v.to(device)) for k, v in batch.items()}
    out = model(batch, sample=False)
    for m in model.names:
        recon = model.modalities[m].mean(out.params[m])
        both = interleave_rows(out.inputs[m], recon, nrow)
        written.append(save_grid(model.modalities[m], both, out_dir / f"recon_{m}.png", nrow, f"{m}: data (odd rows) / reconstruction (even rows)"))
    return written
