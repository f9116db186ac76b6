"""MoPoE-VAE (Sutter, Daunhawer & Vogt, ICLR 2021, "Generalized multimodal ELBO"): a mixture over the subsets
of the modalities of their products of experts.

    q(z | X) = (1 / (2^M - 1)) sum_{S ⊆ X, S ≠ ∅} PoE(S)                      (the `mopoe` fusion)
    objective = E_{z ~ q(z | X)}[sum_m s_m log p(x_m | z)] - sum_S w_S KL(PoE(S) || p(z))
Followed: the authors' code (and MultiVae's re-implementation). z is one draw of the mixture per sample (a
subset chosen uniformly, then a reparameterised draw of its product), from which every modality is
reconstructed (`recon/<m>`, the standard group); the divergence is the weighted mean of the subsets' closed-
form KLs (`kl/joint`, group `mopoe_kl`), an upper bound of the mixture's KL by convexity.

Departures: each subset's product includes the N(0, I) prior expert (the authors' code adds it to the full
set's product only), so every component is what the `poe` fusion gives for that subset; the authors assign
the batch's samples to subsets in equal consecutive chunks, here each sample draws its subset; with some
modality absent, only the subsets of the present ones are mixed (as MultiVae does for incomplete data).
"""

from __future__ import annotations

from mmvae.config import ConfigError
from mmvae.families.shared_latent import SharedLatentVAE
from mmvae.losses import LOSS_TERMS, LossTerms


class MoPoEVAE(SharedLatentVAE):
    family = "mopoe"
    fusion_name = "mopoe"
    default_loss_terms = ("reconstruction", "heads", "mopoe_kl")


class MoPoEKL(LossTerms):
    """`kl/joint`: sum_S w_S KL(PoE(S) || N(0, I)), averaged over the batch."""

    def names(self, model, cfg):
        if model.config.fusion not in ("mopoe", "moe"):
            raise ConfigError(f"loss term group 'mopoe_kl' needs a mixture fusion, model.fusion: mopoe or moe "
                              f"(got {model.config.fusion!r})")
        return ["kl/joint"]

    def __call__(self, model, out, batch, ctx):
        return {"kl/joint": out.posteriors.joint.mean_component_kl().mean()}


LOSS_TERMS["mopoe_kl"] = MoPoEKL()
