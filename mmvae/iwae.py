"""Importance-weighted estimate of log p(x) (Burda et al. 2016) for any family with the factorized protocol.

log p(x) ≈ logsumexp_k [log p(x | z_k) + log p(z_k) - log q(z_k | x)] - log K,
with z = (Z_y, Z_m for every modality), q factorised as q(Z_y | x) Π_m q(Z_m | x_m).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmvae.batch import element_mask
from mmvae.families.base import MultimodalModel
from mmvae.latent import standard_normal_log_prob


@torch.no_grad()
def iwae_log_likelihood(model: MultimodalModel, batch: dict, num_samples: int, chunk: int = 100) -> Tensor:
    """(B,) estimates of log p(x_present | conditions) in nats, over the modalities present in each sample."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    inputs = model.preprocess(batch["x"], batch.get("mask"))
    present = batch["present"]
    post = model.encode(inputs, present, batch.get("mask"))
    cond = {c: post.encodings[c].h for c in model.conditions}
    log_weights = []
    for start in range(0, num_samples, chunk):
        k = min(chunk, num_samples - start)
        z_joint = post.joint.rsample(k)  # (k, B, Dy)
        log_w = standard_normal_log_prob(z_joint) - post.joint.log_prob(z_joint)  # (k, B)
        z_private = {}
        for m, q in post.private.items():
            z = q.rsample(k)  # (k, B, Dm)
            z_private[m] = z
            log_w = log_w + torch.where(present[m], standard_normal_log_prob(z) - q.log_prob(z), 0.0)
        flat = lambda t: t.reshape(-1, *t.shape[2:])  # noqa: E731  (k, B, ...) -> (k*B, ...)
        tile = lambda t: flat(t.unsqueeze(0).expand(k, *t.shape))  # noqa: E731  (B, ...) -> (k*B, ...)
        params = model.decode(flat(z_joint), {m: flat(z) for m, z in z_private.items()},
                              cond={c: tile(f) for c, f in cond.items()})
        for m in model.names:
            mask = element_mask(batch, m)
            ll = model.modalities[m].log_prob(params[m], tile(inputs[m]), None if mask is None else tile(mask))
            ll = ll.reshape(k, -1)  # (k, B)
            log_w = log_w + torch.where(present[m], ll, 0.0)
        log_weights.append(log_w)
    return torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(num_samples)
