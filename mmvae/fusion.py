"""How the joint factor Z_y is inferred from the modalities present in each sample."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmvae.latent import DiagonalGaussian, product_of_experts
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


FUSIONS: dict[str, type[nn.Module]] = {"concat": ConcatFusion, "poe": ProductOfExpertsFusion}
