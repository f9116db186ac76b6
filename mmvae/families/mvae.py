"""MVAE (Wu & Goodman, NeurIPS 2018): a product-of-experts joint posterior trained with sub-sampled ELBOs.

    q(z | X_S) ∝ p(z) prod_{m in S} q_m(z | x_m)                  (the `poe` fusion, prior expert included)
    ELBO(X_S) = E_{q(z | X_S)}[sum_{m in S} s_m log p(x_m | z)] - KL(q(z | X_S) || p(z))
    objective = ELBO(X) + sum_m ELBO(x_m) + sum_{j=1..k} ELBO(X_j)   (the paper's sub-sampled training)
Each ELBO reconstructs only the modalities of its subset S, from one draw of PoE(S). The terms:
    recon/<m>, kl/joint                                 the joint ELBO (the standard groups)
    recon/<m>/from_<m>, kl/joint/from_<m>               each unimodal ELBO (group `mvae_subsets`)
    recon/from_random<j>, kl/joint/from_random<j>       X_j, j = 1..k: a random subset of 2..M-1 modalities drawn
                                                        per step for the whole batch (needs M >= 3; its recon
                                                        term sums the size-corrected modalities of X_j)
k is `model.family_options.random_subsets` (0 by default; with two modalities the joint and unimodal ELBOs
already cover every subset). β annealing, as the paper, is a `loss.weights` warm-up on `kl/*`.

Departures: each modality's configured likelihood (the paper: Bernoulli images, categorical labels); the size
correction s_m is the modality's `recon_weight` (the paper's λ_m); a sample whose modalities of S are all absent
has the prior as PoE(S) and adds nothing to ELBO(X_S); the random subsets are drawn uniformly among those of
2..M-1 modalities.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from mmvae.batch import Batch, element_mask, restrict_present
from mmvae.config import ConfigError, ModelConfig
from mmvae.families.base import ForwardOutput
from mmvae.families.shared_latent import SharedLatentVAE
from mmvae.fusion import all_subsets
from mmvae.heads import masked_batch_mean
from mmvae.losses import LOSS_TERMS, LossTerms


class MVAEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    random_subsets: int = Field(default=0, ge=0)  # the paper's k: random subsets of 2..M-1 modalities per step


class MVAE(SharedLatentVAE):
    family = "mvae"
    fusion_name = "poe"
    Options = MVAEOptions
    default_loss_terms = ("reconstruction", "heads", "prior", "mvae_subsets")

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        if self.options.random_subsets and len(self.names) < 3:
            raise ConfigError(f"model.family_options.random_subsets: {self.options.random_subsets} needs at least 3 "
                              f"observed modalities (with {len(self.names)} the joint and unimodal ELBOs are every subset)")
        self.middle_subsets = [list(s) for s in all_subsets(self.names) if 2 <= len(s) < len(self.names)]

    @property
    def unimodal(self) -> list[str]:
        """Modalities with a unimodal ELBO of their own (none with one modality: it is the joint ELBO)."""
        return self.names if len(self.names) > 1 else []

    def subsets(self) -> dict[str, list[str]]:
        """The sub-sampled ELBOs of this step, by term suffix: every modality alone, then k random subsets."""
        out = {f"from_{m}": [m] for m in self.unimodal}
        for j in range(self.options.random_subsets):
            pick = int(torch.randint(len(self.middle_subsets), ()))
            out[f"from_random{j + 1}"] = self.middle_subsets[pick]
        return out

    def forward(self, batch: Batch, sample: bool = True) -> ForwardOutput:
        """The joint ELBO's pieces as the factorized model, plus {suffix: (subset, q(z | X_S), params)} in
        extras["subsets"] for the sub-sampled ELBOs (only when sampling)."""
        out = super().forward(batch, sample)
        if not sample:
            return out
        features = {m: out.posteriors.encodings[m].h for m in self.names}
        subsets = {}
        for suffix, names in self.subsets().items():
            q = self.fuse(features, restrict_present(batch["present"], names))  # PoE over the present part of S
            f = self.joint_features(q.rsample())
            subsets[suffix] = (names, q, {m: self.decode_from_features(m, f, None, out.cond) for m in names})
        out.extras["subsets"] = subsets
        return out

    def term_scales(self) -> dict[str, float]:
        weights = self.reconstruction_weights()
        return {**super().term_scales(), **{f"recon/{m}/from_{m}": w for m, w in weights.items()}}


class MVAESubsetTerms(LossTerms):
    """The unimodal (and random-subset) ELBOs of MVAE's sub-sampled objective."""

    def names(self, model, cfg):
        if not isinstance(model, MVAE):
            raise ConfigError(f"loss term group 'mvae_subsets' is MVAE's objective; it needs model.family: mvae "
                              f"(got {model.family!r})")
        single = [t for m in model.unimodal for t in (f"recon/{m}/from_{m}", f"kl/joint/from_{m}")]
        rand = [t for j in range(model.options.random_subsets)
                for t in (f"recon/from_random{j + 1}", f"kl/joint/from_random{j + 1}")]
        return [*single, *rand]

    def __call__(self, model, out, batch, ctx):
        present = batch["present"]
        weights = model.reconstruction_weights()
        terms = {}
        for suffix, (names, q, params) in out.extras["subsets"].items():
            nll = {m: masked_batch_mean(-model.modalities[m].log_prob(params[m], out.inputs[m], element_mask(batch, m)),
                                        present[m]) for m in names}
            if suffix.startswith("from_random"):
                terms[f"recon/{suffix}"] = sum(weights[m] * v for m, v in nll.items())
            else:
                terms.update({f"recon/{m}/{suffix}": v for m, v in nll.items()})
            terms[f"kl/joint/{suffix}"] = q.kl_to_standard_normal().mean()
        return terms


LOSS_TERMS["mvae_subsets"] = MVAESubsetTerms()
