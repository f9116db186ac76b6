"""DMVAE (Lee & Pavlovic 2021, "Private-Shared Disentangled Multimodal VAE for Learning of Latent Representations").

A shared latent Z_y (the paper's z_s) and a private latent Z_m (z_p) per modality; the same networks as the
factorized family (encoders, PoE experts, private heads, G_y, G_m, decoders), a different objective:

    q_PoE(Z_y | X)  ∝ p(Z_y) Π_{n present} q_n(Z_y | x_n)             the joint posterior (prior expert included)
    q(Z_y | x_n)    ∝ p(Z_y) q_n(Z_y | x_n)                            one unimodal posterior per present n
    loss = ELBO_PoE + Σ_{n present} ELBO_n, where ELBO_s = Σ_{m present} [ E log p(x_m | Z_y ~ q_s, Z_m ~ q(Z_m | x_m))
                                                                        - KL(q(Z_m | x_m) || p) ] - KL(q_s || p)

so every decoder learns to rebuild x_m from the shared factor of x_m itself, of every other modality (the
cross-reconstruction) and of all of them together. Terms (group "dmvae", weights by name as usual):

    recon/<m>              -log p(x_m | Z_y ~ q_PoE, Z_m)                     (size-corrected like recon/<m>)
    recon/<m>/from_<n>     -log p(x_m | Z_y ~ q(Z_y | x_n), Z_m), n = m too   (present m and n)
    kl/joint               KL(q_PoE || N(0, I))
    kl/joint/from_<n>      KL(q(Z_y | x_n) || N(0, I))
    kl/private/<m>         KL(q(Z_m | x_m) || N(0, I)) × (1 + number of present modalities): once per ELBO

Followed: the sum of the PoE ELBO and one ELBO per unimodal shared posterior, each reconstructing every
present modality with its own private latent (the paper's objective; MultiVae's DMVAE has the same terms,
its masks for missing modalities too); one private sample shared by all ELBOs (the authors' code). Departs:
(1) q(Z_y | x_n) is the PoE of x_n's expert and the prior expert, not the bare expert: it is then the very
posterior that swaps and metrics use for "Z_y from n alone" (posteriors(joint_from=[n])); with one modality
present the PoE and unimodal ELBOs coincide, so the loss is twice that modality's ELBO. (2) KLs in closed
form; the authors' code estimates them by minibatch-weighted sampling (its β-TC split with every β = 1 targets
the same KL). (3) The authors' released MNIST–SVHN script zeroes the PoE reconstruction; the paper and
MultiVae keep it, and so does this. (4) Per-modality weights λ_m are `loss.weights` (`recon/mnist*`), and
the size correction (`recon_weight: auto`) applies to every reconstruction of a modality.
Unsupervised: the zoo config has no label head (a configured head is still trained: group "heads").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mmvae.batch import Batch, element_mask, restrict_present
from mmvae.config import ConfigError, ModelConfig
from mmvae.families.base import ForwardOutput, Posteriors
from mmvae.families.factorized import FactorizedMultimodalVAE
from mmvae.heads import masked_batch_mean
from mmvae.latent import DiagonalGaussian, product_of_experts
from mmvae.losses import LOSS_TERMS, LossTerms


@dataclass
class DMVAEOutput(ForwardOutput):
    unimodal: dict[str, DiagonalGaussian] = field(default_factory=dict)  # q(Z_y | x_n), (B, Dy) each
    z_unimodal: dict[str, Tensor] = field(default_factory=dict)  # Z_y drawn from each, (B, Dy)
    from_unimodal: dict[tuple[str, str], Tensor] = field(default_factory=dict)  # (m, n): params of x_m from q(Z_y|x_n)


class DMVAE(FactorizedMultimodalVAE):
    family = "dmvae"
    default_loss_terms = ("dmvae", "heads")

    def __init__(self, config: ModelConfig):
        if config.fusion != "poe":
            raise ConfigError(f"family dmvae infers the shared factor by a product of experts: set model.fusion: poe "
                              f"(got {config.fusion!r})")
        if config.joint_subset_drop:
            raise ConfigError("family dmvae cross-reconstructs from every unimodal posterior in its objective; "
                              "set model.joint_subset_drop: 0")
        super().__init__(config)

    def poe(self, experts: dict[str, DiagonalGaussian], present: dict[str, Tensor]) -> DiagonalGaussian:
        """PoE of the present experts and the N(0, I) prior expert, (B, Dy)."""
        mus = torch.stack([experts[m].mu for m in self.names])  # (M, B, Dy)
        logvars = torch.stack([experts[m].logvar for m in self.names])
        return product_of_experts(mus, logvars, torch.stack([present[m] for m in self.names]))

    def forward(self, batch: Batch, sample: bool = True) -> DMVAEOutput:
        """The PoE pass (as the factorized family) plus the decodings from every unimodal posterior."""
        masks = batch.get("mask", {})
        inputs = self.preprocess(batch["x"], masks)
        present = batch["present"]
        encodings = self.encode_modalities(inputs, masks)
        experts = self.fusion.experts_of({m: encodings[m].h for m in self.names})
        joint = self.poe(experts, present)
        unimodal = {n: self.poe(experts, restrict_present(present, [n])) for n in self.names}
        private = {m: DiagonalGaussian.from_params(self.private_heads[m](encodings[m].h)) for m in self.private_names}
        draw = (lambda q: q.rsample()) if sample else (lambda q: q.mu)  # noqa: E731
        z_joint = draw(joint)
        z_uni = {n: draw(q) for n, q in unimodal.items()}
        z_private = {m: draw(q) for m, q in private.items()}
        cond = self.condition_features(encodings)
        # One decoder call per modality over the stacked shared draws [PoE, from n_1, ..., from n_M]: (S*B, ...).
        sources = 1 + len(self.names)
        f_all = self.joint_features(torch.cat([z_joint, *z_uni.values()]))  # (S*B, Fy)
        f_private = {m: self.private_features[m](z) for m, z in z_private.items()}
        tiled_cond = {c: f.repeat(sources, 1) for c, f in cond.items()}
        params, from_uni = {}, {}
        for m in self.names:
            f_m = f_private[m].repeat(sources, 1) if m in f_private else None
            chunks = self.decode_from_features(m, f_all, f_m, tiled_cond).chunk(sources)
            params[m] = chunks[0]
            from_uni.update({(m, n): chunks[1 + i] for i, n in enumerate(self.names)})
        f_joint = f_all[: z_joint.shape[0]]
        heads = self.run_heads(z_joint, f_joint, f_private, encodings, cond, batch, z_private,
                               {m: q.mu for m, q in private.items()})
        post = Posteriors(joint=joint, private=private, encodings=encodings)
        return DMVAEOutput(inputs, post, z_joint, z_private, params, heads, f_joint, f_private, cond, masks,
                           unimodal=unimodal, z_unimodal=z_uni, from_unimodal=from_uni)

    def term_scales(self) -> dict[str, float]:
        weights = self.reconstruction_weights()
        return {**{f"recon/{m}": w for m, w in weights.items()},
                **{f"recon/{m}/from_{n}": w for m, w in weights.items() for n in self.names}}


class DMVAETerms(LossTerms):
    """The DMVAE objective (see the module docstring): the PoE ELBO plus one ELBO per unimodal posterior."""

    def names(self, model, cfg):
        if cfg.prior_match != "kl":
            raise ConfigError("family dmvae's objective is an ELBO: set loss.prior_match: kl")
        ms = model.names
        return [*(f"recon/{m}" for m in ms), *(f"recon/{m}/from_{n}" for m in ms for n in ms),
                "kl/joint", *(f"kl/joint/from_{n}" for n in ms), *(f"kl/private/{m}" for m in model.private_names)]

    def __call__(self, model, out, batch, ctx):
        self.names(model, ctx.config)
        present = batch["present"]

        def nll(m: str, params: Tensor) -> Tensor:  # (B,)
            return -model.modalities[m].log_prob(params, out.inputs[m], element_mask(batch, m))

        terms: dict[str, Tensor] = {}
        for m in model.names:
            terms[f"recon/{m}"] = masked_batch_mean(nll(m, out.params[m]), present[m])
            for n in model.names:
                terms[f"recon/{m}/from_{n}"] = masked_batch_mean(nll(m, out.from_unimodal[m, n]), present[m] & present[n])
        terms["kl/joint"] = out.posteriors.joint.kl_to_standard_normal().mean()
        for n, q in out.unimodal.items():
            terms[f"kl/joint/from_{n}"] = masked_batch_mean(q.kl_to_standard_normal(), present[n])
        elbos = 1 + torch.stack([present[n] for n in model.names]).sum(0)  # (B,): the PoE ELBO and each unimodal one
        for m, q in out.posteriors.private.items():
            terms[f"kl/private/{m}"] = masked_batch_mean(q.kl_to_standard_normal() * elbos, present[m])
        return terms


LOSS_TERMS["dmvae"] = DMVAETerms()
