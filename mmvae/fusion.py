"""How the joint factor Z_y is inferred from the modalities present in each sample."""

from __future__ import annotations

from itertools import combinations

import torch
from torch import Tensor, nn

from mmvae.latent import DiagonalGaussian, MixtureOfDiagonalGaussians, product_of_experts
from mmvae.nets import mlp


class ConcatFusion(nn.Module):
    """MFM's fusion: concatenate every modality's features (zeroed where absent) and presence flags -> MLP.

    Absent rows are replaced with `torch.where`, so an absent modality's encoder gets zero gradient.
    """

    def __init__(self, feature_dims: dict[str, int], joint_dim: int, hidden: list[int]):
        super().__init__()
        self.names = list(feature_dims)
        in_dim = sum(feature_dims.values()) + len(self.names)
        self.net = mlp(in_dim, hidden, 2 * joint_dim)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> DiagonalGaussian:
        parts = [torch.where(present[m].unsqueeze(1), features[m], torch.zeros_like(features[m])) for m in self.names]
        flags = torch.stack([present[m] for m in self.names], dim=1).to(parts[0].dtype)  # (B, M)
        return DiagonalGaussian.from_params(self.net(torch.cat([*parts, flags], dim=1)))


class ProductOfExpertsFusion(nn.Module):
    """Each modality proposes a Gaussian expert; the joint posterior is their product with a N(0, I) prior expert.

    Any subset of modalities (none included: the prior) gives a valid joint posterior.
    """

    def __init__(self, feature_dims: dict[str, int], joint_dim: int, hidden: list[int]):
        super().__init__()
        self.names = list(feature_dims)
        self.experts = nn.ModuleDict({m: mlp(d, hidden, 2 * joint_dim) for m, d in feature_dims.items()})

    def experts_of(self, features: dict[str, Tensor]) -> dict[str, DiagonalGaussian]:
        """Each modality's own expert q_m(z_y | x_m)."""
        return {m: DiagonalGaussian.from_params(self.experts[m](features[m])) for m in self.names}

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> DiagonalGaussian:
        experts = self.experts_of(features)
        mus = torch.stack([experts[m].mu for m in self.names])  # (M, B, D)
        logvars = torch.stack([experts[m].logvar for m in self.names])  # (M, B, D)
        mask = torch.stack([present[m] for m in self.names])  # (M, B)
        return product_of_experts(mus, logvars, mask)


class MixtureOfExpertsFusion(ProductOfExpertsFusion):
    """MMVAE's fusion (Shi et al. 2019): q(Z_y | x) = (1/|present|) sum over present m of q_m(Z_y | x_m).

    Components (C = M + 1, B, D): the M experts in `names` order, then N(0, I), which has weight 1 exactly
    where no modality is present (so that sample has the prior). Absent experts are replaced by N(0, I) with
    `torch.where` and weighted 0: their encoders get exactly zero gradient, whatever reads the mixture.
    Sampling every component (`rsample_each`, K draws from each expert) is MMVAE's stratified estimator.
    """

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> MixtureOfDiagonalGaussians:
        return mixture_of_present_experts(self.experts_of(features), self.names, present)


def mixture_of_present_experts(experts: dict[str, DiagonalGaussian], names: list[str],
                               present: dict[str, Tensor]) -> MixtureOfDiagonalGaussians:
    """The `moe` fusion's mixture of given experts (also MMVAE+'s, whose experts are its own)."""
    mask = torch.stack([present[m] for m in names])  # (M, B)
    mu = torch.stack([experts[m].mu for m in names])  # (M, B, D)
    logvar = torch.stack([experts[m].logvar for m in names])
    keep = mask.unsqueeze(-1)
    mu = torch.where(keep, mu, torch.zeros_like(mu))
    logvar = torch.where(keep, logvar, torch.zeros_like(logvar))
    flags = mask.to(mu.dtype)
    count = flags.sum(0, keepdim=True)  # (1, B)
    weights = torch.cat([flags / count.clamp_min(1.0), (count == 0).to(mu.dtype)])  # (M + 1, B)
    zeros = torch.zeros_like(mu[:1])
    return MixtureOfDiagonalGaussians(torch.cat([mu, zeros]), torch.cat([logvar, zeros]), weights)


def all_subsets(names: list[str]) -> list[tuple[str, ...]]:
    """Every subset of `names`, the empty one first, then by size (the order of MoPoE's components)."""
    return [s for k in range(len(names) + 1) for s in combinations(names, k)]


class MixtureOfProductsFusion(ProductOfExpertsFusion):
    """MoPoE-VAE's fusion (Sutter et al. 2021): a uniform mixture over the non-empty subsets S of the present
    modalities of PoE(S), the product of their experts (with the N(0, I) prior expert, as the `poe` fusion).

    Components (C = 2^M, B, D), one per subset of `names` in `all_subsets` order; the empty subset's product
    is N(0, I) and has weight 1 exactly where no modality is present. A subset holding an absent modality
    has weight 0 (its product is taken over its present part, so absent encoders get zero gradient).
    MoPoE's code puts the prior expert in the full set's product only; here every product has it, so
    each component is exactly what the `poe` fusion gives for that subset.
    """

    def __init__(self, feature_dims: dict[str, int], joint_dim: int, hidden: list[int]):
        super().__init__(feature_dims, joint_dim, hidden)
        self.subsets = all_subsets(self.names)
        if len(self.subsets) > 4096:
            raise ValueError(f"fusion mopoe: {len(self.names)} modalities make {len(self.subsets)} subsets; at most 12 "
                             "modalities are supported")
        member = torch.tensor([[m in s for m in self.names] for s in self.subsets])  # (C, M) bool
        self.register_buffer("member", member, persistent=False)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> MixtureOfDiagonalGaussians:
        experts = self.experts_of(features)
        mus = torch.stack([experts[m].mu for m in self.names])  # (M, B, D)
        logvars = torch.stack([experts[m].logvar for m in self.names])
        mask = torch.stack([present[m] for m in self.names])  # (M, B)
        products = [product_of_experts(mus, logvars, mask & self.member[c].unsqueeze(1))
                    for c in range(len(self.subsets))]
        # A subset is a component of sample b when all its modalities are present in b.
        inside = (~self.member.unsqueeze(-1) | mask.unsqueeze(0)).all(1)  # (C, B)
        nonempty = self.member.any(1, keepdim=True)  # (C, 1)
        flags = (inside & nonempty).to(mus.dtype)
        count = flags.sum(0, keepdim=True)  # (1, B): 2^|present| - 1
        weights = flags / count.clamp_min(1.0)
        weights = torch.where(nonempty, weights, (count == 0).to(mus.dtype))  # the empty subset: the prior
        return MixtureOfDiagonalGaussians(torch.stack([p.mu for p in products]),
                                          torch.stack([p.logvar for p in products]), weights)


FUSIONS: dict[str, type[nn.Module]] = {
    "concat": ConcatFusion,
    "poe": ProductOfExpertsFusion,
    "moe": MixtureOfExpertsFusion,
    "mopoe": MixtureOfProductsFusion,
}
