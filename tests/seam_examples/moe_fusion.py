"""A mixture-of-experts fusion (as MMVAE): q(Z_y | x) = (1/|present|) sum over present m of q_m(Z_y | x_m).

Recipe "add a fusion". It returns a `MixtureOfDiagonalGaussians`, which has no closed-form KL: the prior
term then uses its Monte-Carlo estimate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmvae.latent import DiagonalGaussian, MixtureOfDiagonalGaussians
from mmvae.nets import mlp


class MixtureOfExpertsFusion(nn.Module):
    def __init__(self, feature_dims: dict[str, int], joint_dim: int, hidden: list[int]):
        super().__init__()
        self.names = list(feature_dims)
        self.experts = nn.ModuleDict({m: mlp(d, hidden, 2 * joint_dim) for m, d in feature_dims.items()})

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> MixtureOfDiagonalGaussians:
        experts = [DiagonalGaussian.from_params(self.experts[m](features[m])) for m in self.names]
        mask = torch.stack([present[m] for m in self.names]).to(experts[0].mu.dtype)  # (M, B)
        weights = mask / mask.sum(0, keepdim=True).clamp_min(1.0)  # uniform over the present experts
        return MixtureOfDiagonalGaussians(torch.stack([e.mu for e in experts]),
                                          torch.stack([e.logvar for e in experts]), weights)
