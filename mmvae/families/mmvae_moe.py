"""MMVAE (Shi, Siddharth, Paige & Torr, NeurIPS 2019): a mixture-of-experts joint posterior, trained with a
stratified importance-weighted bound and the IWAE or DReG gradient estimator.

    q(z | x) = (1/M) sum_m q_m(z | x_m)                                        (the `moe` fusion)
    z_{k,c} ~ q_c(z | x_c),  k = 1..K, for every present expert c              (stratified: K draws each)
    log w_{k,c} = sum_d s_d log p(x_d | z_{k,c}) + log p(z_{k,c}) - log q(z_{k,c} | x)
                  (every modality d is reconstructed from every expert's draws: the cross-reconstructions)
    bound "looser" (the paper's objective, `m_iwae_looser` / `m_dreg_looser` of the authors' code, the one
                    their MNIST-SVHN runs use):  (1/M) sum_c log (1/K) sum_k w_{k,c}
    bound "tight"  (`m_iwae` / `m_dreg`):            log (1/(M K)) sum_{c,k} w_{k,c}
Estimators (`model.family_options.estimator`):
    iwae   the reparameterised gradient of the bound.
    dreg   doubly-reparameterised (Tucker et al. 2019): log q is evaluated with its parameters detached and
           the gradient reaching each draw z_{k,c} is multiplied by its normalised weight w~_{k,c}, so the
           encoder receives sum w~^2 d log w / dz dz/dphi and the decoders sum w~ d log w / dtheta. The value
           is the bound's. With one expert this is exactly unbiased for the IWAE gradient; with the mixture's
           density in log w it is the authors' estimator as published (the identity behind DReG holds per
           expert only where a draw is scored by its own expert's density).
    elbo   the stratified ELBO (1/M) sum_c E_{q_c}[log w], split into named terms `recon/<m>` and
           `kl/joint` (a Monte-Carlo KL of the mixture); equal to the looser bound at K = 1.
The term `nll/iwae` is minus the bound, averaged over the batch.

Departures: Gaussian experts and a fixed N(0, I) prior (the paper: Laplace posteriors and a learned prior
scale); reconstruction size correction s_d = the family's `recon_weight` ("auto": the smallest modality's
size over d's, so SVHN is weighted 784/3072, where the authors scale MNIST up by 3072/784 instead); rows
with some modality absent use the mixture of the present experts only (the paper has complete pairs).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mmvae.batch import Batch, element_mask
from mmvae.config import ConfigError
from mmvae.families.base import ForwardOutput
from mmvae.families.shared_latent import SharedLatentVAE
from mmvae.heads import masked_batch_mean
from mmvae.latent import MixtureOfDiagonalGaussians, standard_normal_log_prob
from mmvae.losses import LOSS_TERMS, LossTerms


class MMVAEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    estimator: Literal["dreg", "iwae", "elbo"] = "dreg"  # the paper's MNIST-SVHN runs: dreg, K = 30, looser
    K: int = Field(default=30, ge=1)  # draws from every expert
    bound: Literal["looser", "tight"] = "looser"  # iwae and dreg: average over experts outside or inside the log


class MMVAE(SharedLatentVAE):
    family = "mmvae"
    fusion_name = "moe"
    Options = MMVAEOptions
    default_loss_terms = ("mmvae_bound", "heads")

    def forward(self, batch: Batch, sample: bool = True) -> ForwardOutput:
        """K draws from every expert, each decoded to every modality (extras "z", "params"); the protocol's
        one-sample fields take, per sample, the first draw of one present expert. `sample=False`: the
        mixture mean, as the factorized model."""
        if not sample:
            return super().forward(batch, sample=False)
        masks = batch.get("mask", {})
        inputs = self.preprocess(batch["x"], masks)
        post = self.encode(inputs, batch["present"], masks)
        q: MixtureOfDiagonalGaussians = post.joint  # components: the M experts, then the prior
        n_experts, k = len(self.names), self.options.K
        z_each = q.rsample_each(k)  # (K, M + 1, B, D)
        z = z_each[:, :n_experts]  # (K, M, B, D): the objective's draws (DReG scales their gradient)
        b, d = z.shape[2], z.shape[3]
        cond = self.condition_features(post.encodings)
        f_all = self.joint_features(z.reshape(-1, d))  # (K*M*B, Fy), row (k*M + c)*B + b
        tiled = self.tile_condition_features(cond, k * n_experts)
        params_all = {m: self.decode_from_features(m, f_all, None, tiled) for m in self.names}
        # One present expert per sample (uniform; any where none is present), its first draw.
        w = q.weights[:n_experts].T  # (B, M)
        w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
        choice = torch.multinomial(w, 1).squeeze(1)  # (B,)
        rows = torch.arange(b, device=z.device)
        z_joint = z_each[0, choice, rows]  # (B, D), outside the DReG-scaled path
        f_joint = self.joint_features(z_joint)
        params = {m: p[choice * b + rows] for m, p in params_all.items()}
        heads = self.run_heads(z_joint, f_joint, {}, post.encodings, cond, batch)
        return ForwardOutput(inputs, post, z_joint, {}, params, heads, f_joint, {}, cond, masks,
                             extras={"z": z, "params": params_all})


def stratified_log_weights(model: MMVAE, out: ForwardOutput, batch: Batch, stop_q_grad: bool) -> Tensor:
    """log w (K, M, B) of every draw of every expert; log q with detached parameters for DReG."""
    z = out.extras["z"]  # (K, M, B, D)
    q = out.posteriors.joint.detach() if stop_q_grad else out.posteriors.joint
    log_w = standard_normal_log_prob(z) - q.log_prob(z)  # (K, M, B)
    return log_w + sum(s * log_likelihoods(model, out, batch, m) for m, s in model.reconstruction_weights().items())


def log_likelihoods(model: MMVAE, out: ForwardOutput, batch: Batch, name: str) -> Tensor:
    """log p(x_m | z_{k,c}) (K, M, B) for every draw, 0 where x_m is absent."""
    z = out.extras["z"]
    k, n_experts, b = z.shape[:3]
    tile = lambda t: t.repeat(k * n_experts, *[1] * (t.dim() - 1))  # noqa: E731  (B, ...) -> (K*M*B, ...)
    mask = element_mask(batch, name)
    ll = model.modalities[name].log_prob(out.extras["params"][name], tile(out.inputs[name]),
                                         None if mask is None else tile(mask)).reshape(k, n_experts, b)
    return torch.where(batch["present"][name], ll, torch.zeros_like(ll))


def iwae_bound(log_w: Tensor, weights: Tensor, tight: bool) -> Tensor:
    """The stratified bound per sample (B,) from log w (K, M, B) and expert weights (M, B); 0 where no expert."""
    k = log_w.shape[0]
    valid = weights > 0  # (M, B)
    has_any = valid.any(0)  # (B,)
    if tight:  # log sum_{c,k} w_c (1/K) exp(log w_{k,c})
        a = torch.where(valid, log_w + weights.clamp_min(1e-30).log(), -math.inf)
        a = torch.where(has_any, a, torch.zeros_like(a))  # (K, M, B), finite in every row
        bound = torch.logsumexp(a.flatten(0, 1), 0) - math.log(k)
    else:  # sum_c w_c log (1/K) sum_k exp(log w_{k,c})
        per = torch.logsumexp(torch.where(valid, log_w, torch.zeros_like(log_w)), 0) - math.log(k)  # (M, B)
        bound = torch.where(valid, weights * per, torch.zeros_like(per)).sum(0)
    return torch.where(has_any, bound, torch.zeros_like(bound))


def normalised_weights(log_w: Tensor, weights: Tensor, tight: bool) -> Tensor:
    """w~ (K, M, B) (no gradient): each draw's share of its bound's sum (over k per expert, or over k and c)."""
    with torch.no_grad():
        valid = weights > 0
        a = torch.where(valid, log_w + (weights.clamp_min(1e-30).log() if tight else 0.0), -math.inf)
        dims = (0, 1) if tight else (0,)
        lse = torch.logsumexp(a, dims, keepdim=True)
        return torch.where(valid & torch.isfinite(lse), (a - lse).exp(), torch.zeros_like(a))


def dreg_bound(log_w: Tensor, z: Tensor, weights: Tensor, tight: bool, extras: dict | None = None) -> Tensor:
    """The bound per sample (B,) with DReG's gradient; `log_w` must use a detached log q. Registers a hook
    on `z` (K, M, B, D) that multiplies its gradient by w~ (as the authors' code does), once per forward:
    `extras["dreg_hooked"]` marks it, so a second loss evaluation of the same output does not square w~."""
    wt = normalised_weights(log_w, weights, tight)  # (K, M, B)
    mix = wt if tight else wt * weights  # the gradient weights of the decoders: d bound / d log w
    surrogate = (mix * log_w).sum((0, 1))  # (B,)
    extras = {} if extras is None else extras
    if z.requires_grad and not extras.get("dreg_hooked"):
        z.register_hook(lambda grad: grad * wt.unsqueeze(-1))
        extras["dreg_hooked"] = True
    value = iwae_bound(log_w.detach(), weights, tight)
    return value + surrogate - surrogate.detach()


class MMVAEBound(LossTerms):
    """`nll/iwae` (estimators iwae, dreg) or `recon/<m>` and `kl/joint` (estimator elbo)."""

    def names(self, model, cfg):
        if not isinstance(model, MMVAE):
            raise ConfigError(f"loss term group 'mmvae_bound' is MMVAE's objective; it needs model.family: mmvae "
                              f"(got {model.family!r})")
        if model.options.estimator == "elbo":
            return [*(f"recon/{m}" for m in model.names), "kl/joint"]
        return ["nll/iwae"]

    def __call__(self, model, out, batch, ctx):
        opts = model.options
        weights = out.posteriors.joint.weights[: len(model.names)]  # (M, B) expert weights
        if opts.estimator == "elbo":
            return self.elbo_terms(model, out, batch, weights)
        tight = opts.bound == "tight"
        log_w = stratified_log_weights(model, out, batch, stop_q_grad=opts.estimator == "dreg")
        if opts.estimator == "dreg":
            bound = dreg_bound(log_w, out.extras["z"], weights, tight, out.extras)
        else:
            bound = iwae_bound(log_w, weights, tight)
        return {"nll/iwae": -bound.mean()}

    @staticmethod
    def elbo_terms(model, out, batch, weights: Tensor) -> dict[str, Tensor]:
        """-(1/M) sum_c E_{q_c}[log p(x_m | z)] per modality and (1/M) sum_c E_{q_c}[log q(z) - log p(z)]."""
        valid = weights > 0

        def average(per_draw: Tensor) -> Tensor:  # (K, M, B) -> (B,): the mean over draws, weighted over experts
            return torch.where(valid, weights * per_draw.mean(0), torch.zeros_like(weights)).sum(0)

        terms = {f"recon/{m}": masked_batch_mean(-average(log_likelihoods(model, out, batch, m)), batch["present"][m])
                 for m in model.names}
        z = out.extras["z"]
        terms["kl/joint"] = average(out.posteriors.joint.log_prob(z) - standard_normal_log_prob(z)).mean()
        return terms


LOSS_TERMS["mmvae_bound"] = MMVAEBound()
