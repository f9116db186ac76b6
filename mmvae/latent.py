"""Latent factors: diagonal Gaussian posteriors, mixtures of them, KL and MMD prior matching, product of experts.

Every joint posterior a fusion returns follows `JointPosterior`: a mean, reparameterised samples (one or K),
log-densities, and a closed-form KL to N(0, I) where one exists (None: the loss term estimates it by
Monte Carlo from the sample it decodes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


@runtime_checkable
class JointPosterior(Protocol):
    """What a fusion returns: q(Z_y | x_present) for a batch of B samples over D dimensions."""

    @property
    def mean(self) -> Tensor:
        """(B, D): the point used for generation, swaps and attribution."""
        ...

    def rsample(self, num_samples: int | None = None) -> Tensor:
        """Reparameterised samples: (B, D), or (K, B, D) with num_samples=K."""
        ...

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z): (..., B, D) -> (..., B)."""
        ...

    def kl_to_prior(self) -> Tensor | None:
        """Closed-form KL(q || N(0, I)) per sample (B,), or None where there is none."""
        ...


@dataclass
class DiagonalGaussian:
    """q(z|x) = N(mu, diag(exp(logvar))); mu and logvar are (B, D)."""

    mu: Tensor
    logvar: Tensor

    @classmethod
    def from_params(cls, params: Tensor, min_logvar: float = -12.0, max_logvar: float = 8.0) -> "DiagonalGaussian":
        """Split a (B, 2D) head output into mean and a clamped log-variance."""
        mu, logvar = params.chunk(2, dim=-1)
        return cls(mu, logvar.clamp(min_logvar, max_logvar))

    @property
    def mean(self) -> Tensor:
        return self.mu

    @property
    def var(self) -> Tensor:
        return self.logvar.exp()

    @property
    def std(self) -> Tensor:
        return (0.5 * self.logvar).exp()

    def rsample(self, num_samples: int | None = None) -> Tensor:
        """Reparameterised sample z = mu + std * eps: (B, D), or (K, B, D) with num_samples=K."""
        shape = self.mu.shape if num_samples is None else (num_samples, *self.mu.shape)
        eps = torch.randn(shape, dtype=self.mu.dtype, device=self.mu.device)
        return self.mu + self.std * eps

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z|x) summed over dimensions: z (..., B, D) -> (..., B)."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu) ** 2 / self.var).sum(-1)

    def kl_to_standard_normal(self) -> Tensor:
        """Closed-form KL(q || N(0, I)) per sample: (B,)."""
        return 0.5 * (self.mu**2 + self.var - self.logvar - 1.0).sum(-1)

    def kl_to_prior(self) -> Tensor:
        """JointPosterior protocol: the closed form."""
        return self.kl_to_standard_normal()

    def detach(self) -> "DiagonalGaussian":
        return DiagonalGaussian(self.mu.detach(), self.logvar.detach())


@dataclass
class MixtureOfDiagonalGaussians:
    """q(z) = sum_c w_c N(z; mu_c, diag(exp(logvar_c))), per sample; mu, logvar (C, B, D), weights (C, B).

    Components with weight 0 (absent modalities) are never sampled and add nothing to log q. `rsample`
    draws a component per sample from the weights (not differentiable in the weights), then a
    reparameterised point of it; `rsample_each` draws from every component (stratified, as MMVAE's
    objective does). There is no closed-form KL: `kl_to_prior` is None.
    """

    mu: Tensor
    logvar: Tensor
    weights: Tensor

    @property
    def components(self) -> DiagonalGaussian:
        return DiagonalGaussian(self.mu, self.logvar)

    @property
    def mean(self) -> Tensor:
        """The mixture mean sum_c w_c mu_c: (B, D)."""
        return (self.weights.unsqueeze(-1) * self.mu).sum(0)

    def rsample_each(self, num_samples: int | None = None) -> Tensor:
        """One reparameterised draw from every component: (C, B, D), or (K, C, B, D)."""
        return self.components.rsample(num_samples)

    def rsample(self, num_samples: int | None = None) -> Tensor:
        each = self.rsample_each(num_samples)  # (..., C, B, D)
        lead = each.shape[:-3]
        probs = self.weights.T.expand(*lead, *self.weights.T.shape)  # (..., B, C)
        chosen = torch.distributions.Categorical(probs=probs).sample()  # (..., B)
        index = chosen[..., None, :, None].expand(*lead, 1, *each.shape[-2:])  # (..., 1, B, D)
        return each.gather(-3, index).squeeze(-3)

    def log_prob(self, z: Tensor) -> Tensor:
        """log sum_c w_c N(z; mu_c, var_c): z (..., B, D) -> (..., B)."""
        per = self.components.log_prob(z.unsqueeze(-3))  # (..., C, B)
        log_w = torch.where(self.weights > 0, self.weights.clamp_min(1e-30).log(), float("-inf"))
        return torch.logsumexp(per + log_w, dim=-2)

    def kl_to_prior(self) -> None:
        return None

    def mean_component_kl(self) -> Tensor:
        """sum_c w_c KL(q_c || N(0, I)) per sample (B,): by convexity an upper bound of the mixture's KL
        (the divergence MoPoE-VAE optimises)."""
        kl = self.components.kl_to_standard_normal()  # (C, B)
        return torch.where(self.weights > 0, self.weights * kl, torch.zeros_like(kl)).sum(0)

    def detach(self) -> "MixtureOfDiagonalGaussians":
        """The same mixture with no gradient to its parameters (DReG's stop-gradient in log q)."""
        return MixtureOfDiagonalGaussians(self.mu.detach(), self.logvar.detach(), self.weights.detach())


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (LOG_2PI + z**2).sum(-1)


def product_of_experts(mus: Tensor, logvars: Tensor, present: Tensor) -> DiagonalGaussian:
    """Product of Gaussian experts with a N(0, I) prior expert.

    mus, logvars: (M, B, D) one expert per modality; present: (M, B) bool. Absent experts are
    removed with `torch.where`, so they contribute nothing and receive zero gradient.
    Precision T = 1 + sum_m T_m; mean = (sum_m T_m mu_m) / T.
    """
    mask = present.unsqueeze(-1)  # (M, B, 1)
    precision_m = torch.where(mask, torch.exp(-logvars), torch.zeros_like(logvars))
    weighted_mu = torch.where(mask, mus * precision_m, torch.zeros_like(mus))
    precision = 1.0 + precision_m.sum(0)  # the prior expert has precision 1 and mean 0
    mu = weighted_mu.sum(0) / precision
    return DiagonalGaussian(mu, -torch.log(precision))


def mmd_to_standard_normal(z: Tensor, kernel: str = "rbf", prior_samples: Tensor | None = None,
                           weights: Tensor | None = None) -> Tensor:
    """Unbiased MMD^2 between the rows of z (N, D) with weight 1 and N samples of N(0, I).

    rbf: k(a, b) = exp(-||a - b||^2 / D) (the bandwidth of Tsai et al. 2019);
    imq: k(a, b) = C / (C + ||a - b||^2) with C = 2D (Tolstikhin et al. 2018).
    `weights` (N,) of 0/1 leaves rows out (absent samples) while keeping shapes fixed, so nothing
    synchronises with the host. A batch statistic: under DDP pass the all-gathered z (and weights)
    or accept a per-rank estimate.
    """
    n, dim = z.shape
    if n < 2:
        return z.new_zeros(())
    if prior_samples is None:
        prior_samples = torch.randn_like(z)
    w = torch.ones(n, dtype=z.dtype, device=z.device) if weights is None else weights.to(z.dtype)
    n_w = w.sum()
    off_diagonal = 1.0 - torch.eye(n, dtype=z.dtype, device=z.device)

    def k(a: Tensor, b: Tensor) -> Tensor:
        sq = torch.cdist(a, b).pow(2)
        if kernel == "rbf":
            return torch.exp(-sq / dim)
        if kernel == "imq":
            c = 2.0 * dim
            return c / (c + sq)
        raise ValueError(f"unknown MMD kernel {kernel!r}; expected 'rbf' or 'imq'")

    pair_w = off_diagonal * w[:, None] * w[None, :]
    zz = (k(z, z) * pair_w).sum() / (n_w * (n_w - 1)).clamp_min(1.0)
    pp = (k(prior_samples, prior_samples) * off_diagonal).sum() / (n * (n - 1))
    zp = (k(z, prior_samples) * w[:, None]).sum() / (n_w * n).clamp_min(1.0)
    return torch.where(n_w >= 2, zz + pp - 2 * zp, torch.zeros((), dtype=z.dtype, device=z.device))
