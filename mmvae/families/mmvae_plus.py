"""MMVAE+ (Palumbo, Daunhawer & Vogt, ICLR 2023, "MMVAE+: enhancing the generative quality of multimodal VAEs
without compromises").

A shared latent z (Z_y) with a mixture-of-experts posterior and a modality-specific latent w_m (Z_m) per modality:

    q(z | X)     = (1/|P|) Σ_{m ∈ P} q(z | x_m)          P: the present modalities; q(z | x_m) = the PoE fusion's
                                                          expert m alone (no prior expert), mixed as the `moe` fusion mixes (fusion.mixture_of_present_experts)
    q(w_m | x_m)   the private head of m
    p(z), p(w_m) = N(0, I)  (fixed);   r_n(w_n) = N(0, diag(s_n²)), s_n = aux_scale · D_n · softmax(θ_n)  (learned θ_n)

Objective (the paper's looser IWAE bound, stratified over the mixture: one stratum per present modality m,
K samples each), term `iwae/<m>` = -(1/|P|) · log (1/K) Σ_k exp lw_{m,k}, with

    z_k ~ q(z | x_m), w_k ~ q(w_m | x_m), w̃_{n,k} ~ r_n (n ≠ m)
    lw_{m,k} = λ_m log p(x_m | z_k, w_k) + Σ_{n ∈ P, n ≠ m} λ_n log p(x_n | z_k, w̃_{n,k})
               + β [log p(z_k) + log p(w_k) - log q(z_k | X) - log q(w_k | x_m)]

(λ: the size correction `recon_weight`, inside the log weight as the paper's llik_scaling). Cross-modal
generation, in the objective and in evaluation (`cross_private`), takes w of the target from r_n, never
from the target's posterior; r_n is learned only through those cross reconstructions.

Estimator (`family_options.estimator`): "dreg" (the paper's): the value is the bound above, the gradient
the doubly-reparameterised one (Tucker et al. 2019): log q with stopped posterior parameters, and the
encoder's path gradient through z and w weighted by the squared normalised importance weights. "iwae": the
plain gradient of the bound. With K = 1 the bound is the ELBO of the stratum.

Followed: the official code (epalu/mmvaeplus: p(u) fixed, r's scale softmax-normalised and learnable, the
looser bound, β inside lw) and MultiVae's MMVAEPlus (masks for missing modalities: strata and mixture over the
present ones, averaged over their number). Departs: Gaussian posteriors and priors (the paper uses Laplace
on PolyMNIST/CUB; MultiVae offers both), shared-z and private-w heads on one encoder trunk per modality (the
paper uses separate trunks), and a stratum's w̃ draws are not DReG-weighted (as in the official code).
The official code detaches nothing in its "DReG" (MultiVae notes this); here the posterior parameters are
stopped in log q, as DReG prescribes. The official test-time cross generation draws w from p(w); here it
draws from r_n, as in training (with aux_scale 1 the two differ only in how r spreads its scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mmvae.batch import Batch, element_mask
from mmvae.config import ConfigError, ModelConfig
from mmvae.families.base import ForwardOutput, Posteriors
from mmvae.families.factorized import FactorizedMultimodalVAE
from mmvae.fusion import mixture_of_present_experts
from mmvae.latent import DiagonalGaussian, MixtureOfDiagonalGaussians, standard_normal_log_prob
from mmvae.losses import LOSS_TERMS, LossTerms


class MMVAEPlusOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    K: int = Field(default=10, ge=1)  # importance samples per stratum (MultiVae's default)
    estimator: Literal["dreg", "iwae"] = "dreg"
    beta: float = Field(default=1.0, gt=0)  # weight of the prior/posterior log-ratio inside lw
    aux_scale: float = Field(default=1.0, gt=0)  # mean scale of the auxiliary priors r_n
    learn_aux_prior: bool = True  # learn how r_n's scale is spread over its dimensions


@dataclass
class MMVAEPlusOutput(ForwardOutput):
    """What the objective needs, per stratum m (index i in names): Z (M, K, B, Dy) drawn from q(z | x_m), the
    stratum's own w_m (K, B, Dm), and every modality's likelihood parameters from every stratum (M, K, B, ...)."""

    strata_z: Tensor | None = None
    strata_w: dict[str, Tensor] = field(default_factory=dict)
    strata_params: dict[str, Tensor] = field(default_factory=dict)
    hooked: bool = False  # DReG hooks registered (once per forward)


class MMVAEPlus(FactorizedMultimodalVAE):
    family = "mmvae_plus"
    Options = MMVAEPlusOptions
    default_loss_terms = ("mmvae_plus", "heads")

    def __init__(self, config: ModelConfig):
        if config.fusion != "poe":
            raise ConfigError("family mmvae_plus uses the PoE fusion's experts as its unimodal posteriors q(z | x_m) "
                              f"(mixed here): set model.fusion: poe (got {config.fusion!r})")
        if config.joint_subset_drop:
            raise ConfigError("family mmvae_plus samples z from every unimodal posterior in its objective; "
                              "set model.joint_subset_drop: 0")
        super().__init__(config)
        self.aux_logits = nn.ParameterDict({  # θ_n of r_n; zeros: every dimension at aux_scale
            m: nn.Parameter(torch.zeros(config.modalities[m].private_dim), requires_grad=self.options.learn_aux_prior)
            for m in self.private_names})

    # --- posteriors and priors --------------------------------------------------------------------
    def experts(self, features: dict[str, Tensor]) -> dict[str, DiagonalGaussian]:
        """q(z | x_m) for every observed modality, (B, Dy) each."""
        return self.fusion.experts_of({m: features[m] for m in self.names})

    def fuse(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> MixtureOfDiagonalGaussians:
        """q(z | X): the mixture of the present modalities' experts."""
        return mixture_of_present_experts(self.experts(features), self.names, present)

    def aux_std(self, name: str) -> Tensor:
        """r_n's standard deviations (Dn,): aux_scale · Dn · softmax(θ_n), so their mean stays aux_scale."""
        theta = self.aux_logits[name]
        return self.options.aux_scale * theta.numel() * torch.softmax(theta, 0)

    def cross_private(self, like: dict[str, Tensor]) -> dict[str, Tensor]:
        """w for cross-modal generation: draws of the auxiliary priors r_n, never the target's posterior."""
        return {m: torch.randn_like(z) * self.aux_std(m) for m, z in like.items()}

    # --- training forward -----------------------------------------------------------------------------
    def forward(self, batch: Batch, sample: bool = True) -> MMVAEPlusOutput:
        """K draws per stratum and every modality decoded from each; `sample=False`: one draw at the means
        (w̃ at r's mean, 0)."""
        masks = batch.get("mask", {})
        inputs = self.preprocess(batch["x"], masks)
        present = batch["present"]
        encodings = self.encode_modalities(inputs, masks)
        experts = self.experts({m: encodings[m].h for m in self.names})
        joint = mixture_of_present_experts(experts, self.names, present)
        private = {m: DiagonalGaussian.from_params(self.private_heads[m](encodings[m].h)) for m in self.private_names}
        k = self.options.K if sample else 1
        draw = (lambda q: q.rsample(k)) if sample else (lambda q: q.mu.unsqueeze(0))  # noqa: E731  (K, B, D)
        zs = torch.stack([draw(experts[m]) for m in self.names])  # (M, K, B, Dy)
        own_w = {m: draw(q) for m, q in private.items()}  # (K, B, Dm)
        # The strata read w through an alias: DReG's hook scales the gradient of that path only, not that of
        # the one-sample outputs (z_private, f_private, heads) taken from the same draws below.
        strata_w = {m: w.view_as(w) for m, w in own_w.items()}
        cond = self.condition_features(encodings)
        strata = len(self.names) * k
        f_all = self.joint_features(zs.flatten(0, 2))  # (M*K*B, Fy)
        tiled_cond = {c: f.repeat(strata, 1) for c, f in cond.items()}
        strata_params = {}
        for n in self.names:
            f_n = None
            if n in private:
                # stratum m decodes x_n with its own w if m == n, else with w̃ ~ r_n
                ws = [strata_w[n] if m == n else self.aux_draw(n, own_w[n], sample) for m in self.names]
                f_n = self.private_features[n](torch.stack(ws).flatten(0, 2))  # (M*K*B, Fn)
            p = self.decode_from_features(n, f_all, f_n, tiled_cond)
            strata_params[n] = p.reshape(len(self.names), k, -1, *p.shape[1:])  # (M, K, B, ...)
        # The plain outputs (reconstructions, heads): stratum m's own decoding of x_m at its first draw.
        index = {m: i for i, m in enumerate(self.names)}
        params = {m: strata_params[m][index[m], 0] for m in self.names}
        z_private = {m: w[0] for m, w in own_w.items()}
        z_joint = joint.rsample() if sample else joint.mean
        f_joint = self.joint_features(z_joint)
        f_private = {m: self.private_features[m](z) for m, z in z_private.items()}
        heads = self.run_heads(z_joint, f_joint, f_private, encodings, cond, batch, z_private,
                               {m: q.mu for m, q in private.items()})
        post = Posteriors(joint=joint, private=private, encodings=encodings)
        return MMVAEPlusOutput(inputs, post, z_joint, z_private, params, heads, f_joint, f_private, cond, masks,
                               strata_z=zs, strata_w=strata_w, strata_params=strata_params)

    def aux_draw(self, name: str, like: Tensor, sample: bool) -> Tensor:
        """w̃ ~ r_n shaped like `like` (K, B, Dn), reparameterised (r's scale learns); its mean 0 without sampling."""
        return torch.randn_like(like) * self.aux_std(name) if sample else torch.zeros_like(like)

    def term_scales(self) -> dict[str, float]:
        return {}  # the size correction is inside the log weights


def log_weights(model: MMVAEPlus, out: MMVAEPlusOutput, batch: Batch, stop_q: bool) -> Tensor:
    """lw (M, K, B) of every stratum (module docstring); `stop_q`: log q with stopped posterior parameters (DReG)."""
    present = batch["present"]
    names = model.names
    beta = model.options.beta
    lam = model.reconstruction_weights()
    mix = out.posteriors.joint
    if stop_q:
        mix = MixtureOfDiagonalGaussians(mix.mu.detach(), mix.logvar.detach(), mix.weights)
    zs = out.strata_z  # (M, K, B, Dy)
    m_, k, b = zs.shape[:3]
    lw = beta * (standard_normal_log_prob(zs) - mix.log_prob(zs))  # (M, K, B)
    for n in names:
        mask = element_mask(batch, n)
        tile = lambda t: t.unsqueeze(0).expand(m_ * k, *t.shape).flatten(0, 1)  # noqa: E731  (B, ...) -> (M*K*B, ...)
        ll = model.modalities[n].log_prob(out.strata_params[n].flatten(0, 2), tile(out.inputs[n]),
                                          None if mask is None else tile(mask)).reshape(m_, k, b)
        lw = lw + torch.where(present[n], lam[n] * ll, 0.0)
    private = []  # stratum m's own w_m: log p(w_m) - log q(w_m | x_m), (K, B); 0 without a private factor
    for m in names:
        w = out.strata_w.get(m)  # (K, B, Dm)
        if w is None:
            private.append(torch.zeros_like(lw[0]))
            continue
        q = out.posteriors.private[m].detach() if stop_q else out.posteriors.private[m]
        private.append(standard_normal_log_prob(w) - q.log_prob(w))
    return lw + beta * torch.stack(private)


class MMVAEPlusTerms(LossTerms):
    """iwae/<m>: stratum m's share of the negative looser IWAE bound, averaged over the batch."""

    def names(self, model, cfg):
        return [f"iwae/{m}" for m in model.names]

    def __call__(self, model, out, batch, ctx):
        dreg = model.options.estimator == "dreg"
        lw = log_weights(model, out, batch, stop_q=dreg)  # (M, K, B)
        k = lw.shape[1]
        bound = torch.logsumexp(lw, 1) - math.log(k)  # (M, B)
        if dreg and torch.is_grad_enabled() and out.strata_z.requires_grad:
            weights = torch.softmax(lw, 1).detach()  # normalised importance weights (M, K, B)
            if not out.hooked:  # the path gradient into z and w gets one more factor of the weight
                out.strata_z.register_hook(lambda g: g * weights.unsqueeze(-1))
                for i, m in enumerate(model.names):
                    if m in out.strata_w and out.strata_w[m].requires_grad:
                        out.strata_w[m].register_hook(lambda g, i=i: g * weights[i].unsqueeze(-1))
                out.hooked = True
            surrogate = (weights * lw).sum(1)  # (M, B): its gradient is DReG's (with the hooks)
            bound = bound.detach() + surrogate - surrogate.detach()  # the bound's value, DReG's gradient
        present = torch.stack([batch["present"][m] for m in model.names])  # (M, B)
        share = -bound / present.sum(0).clamp_min(1)  # the average over the present strata
        per = torch.where(present, share, torch.zeros_like(share))
        return {f"iwae/{m}": per[i].sum() / per.shape[1] for i, m in enumerate(model.names)}


LOSS_TERMS["mmvae_plus"] = MMVAEPlusTerms()
