"""The composite loss: one small function per term; the total is the weighted sum of named terms.

Terms (all averaged over the batch, absent samples contributing zero):
  recon/<m>            -log p(x_m | Z_y, Z_m)
  label                cross-entropy of the label head on F_y (samples with y >= 0)
  kl/joint, kl/private/<m>     closed-form KL to N(0, I)          (prior_match = kl)
  mmd/joint, mmd/private/<m>   MMD to N(0, I) samples               (prior_match = mmd)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmvae.config import LossConfig
from mmvae.latent import mmd_to_standard_normal
from mmvae.model import FactorizedMultimodalVAE, ForwardOutput

GatherFn = Callable[[Tensor], Tensor]


@dataclass
class LossResult:
    terms: dict[str, Tensor]  # unweighted scalar terms
    weights: dict[str, float]
    total: Tensor

    def as_log(self, prefix: str = "loss/") -> dict[str, Tensor]:
        """Every term and the total, keyed for logging."""
        return {**{prefix + k: v.detach() for k, v in self.terms.items()}, prefix + "total": self.total.detach()}


def masked_batch_mean(per_sample: Tensor, mask: Tensor) -> Tensor:
    """Sum over present samples divided by the batch size: (B,) -> ()."""
    return torch.where(mask, per_sample, torch.zeros_like(per_sample)).sum() / per_sample.shape[0]


def reconstruction_term(model: FactorizedMultimodalVAE, out: ForwardOutput, name: str, present: Tensor) -> Tensor:
    """-E_q log p(x_m | z), absent samples excluded."""
    nll = -model.modalities[name].log_prob(out.params[name], out.inputs[name])
    return masked_batch_mean(nll, present)


def label_term(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy on samples whose label is known (y >= 0)."""
    known = y >= 0
    ce = F.cross_entropy(logits.float(), y.clamp(min=0), reduction="none")
    return masked_batch_mean(ce, known)


def prior_terms(out: ForwardOutput, present: dict[str, Tensor], cfg: LossConfig, gather: GatherFn | None) -> dict[str, Tensor]:
    """KL or MMD between every factor's posterior and N(0, I)."""
    post = out.posteriors
    terms: dict[str, Tensor] = {}
    if cfg.prior_match == "kl":
        terms["kl/joint"] = post.joint.kl_to_standard_normal().mean()
        for m, q in post.private.items():
            terms[f"kl/private/{m}"] = masked_batch_mean(q.kl_to_standard_normal(), present[m])
        return terms
    gather = gather or (lambda t: t)
    terms["mmd/joint"] = mmd_to_standard_normal(gather(out.z_joint), cfg.mmd_kernel)
    for m, z in out.z_private.items():
        # Absent samples get weight 0: fixed shapes, no boolean indexing, no host synchronisation.
        weights = gather(present[m].to(z.dtype))
        terms[f"mmd/private/{m}"] = mmd_to_standard_normal(gather(z), cfg.mmd_kernel, weights=weights)
    return terms


def beta_warmup(step: int, warmup_steps: int) -> float:
    """Linear ramp 0 -> 1 over warmup_steps (1 when there is no warm-up)."""
    return 1.0 if warmup_steps == 0 else min(1.0, step / warmup_steps)


def compute_loss(
    model: FactorizedMultimodalVAE,
    out: ForwardOutput,
    batch: dict,
    cfg: LossConfig,
    step: int,
    gather: GatherFn | None = None,
) -> LossResult:
    """All named terms, their weights, and the weighted total."""
    present = batch["present"]
    terms: dict[str, Tensor] = {}
    weights: dict[str, float] = {}
    for m, w in model.reconstruction_weights().items():
        terms[f"recon/{m}"] = reconstruction_term(model, out, m, present[m])
        weights[f"recon/{m}"] = cfg.recon_weight * w
    if out.logits is not None:
        terms["label"] = label_term(out.logits, batch["y"])
        weights["label"] = cfg.label_weight
    for key, value in prior_terms(out, present, cfg, gather).items():
        terms[key] = value
        if key.endswith("/joint"):
            beta = cfg.beta_joint * beta_warmup(step, cfg.beta_joint_warmup_steps)
        else:
            own = model.config.modalities[key.rsplit("/", 1)[1]].private_beta
            beta = (cfg.beta_private if own is None else own) * beta_warmup(step, cfg.beta_private_warmup_steps)
        weights[key] = cfg.prior_weight * beta
    total = sum(weights[k] * terms[k] for k in terms)
    return LossResult(terms, weights, total)
