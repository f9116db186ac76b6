"""Observation models p(x | z): element-wise log-likelihoods and their means.

Every likelihood takes the decoder's raw output `params` (same shape as x, or (..., V) logits for
categorical) and returns per-element log-densities with x's shape, so losses, IWAE and attribution
can sum them over any grouping of parts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class Likelihood:
    """Interface: elementwise log p(x | params) and the mean of p(x | params)."""

    name: str = ""

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        raise NotImplementedError


class Gaussian(Likelihood):
    """N(x; params, scale^2): a scaled squared error plus a constant."""

    name = "gaussian"

    def __init__(self, scale: float = 1.0):
        if scale <= 0:
            raise ValueError(f"gaussian likelihood scale must be > 0, got {scale}")
        self.scale = scale
        self._const = -math.log(scale) - 0.5 * math.log(2 * math.pi)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return self._const - 0.5 * ((x - params) / self.scale) ** 2

    def mean(self, params: Tensor) -> Tensor:
        return params


class Laplace(Likelihood):
    """Laplace(x; params, scale): a scaled absolute error plus a constant."""

    name = "laplace"

    def __init__(self, scale: float = 1.0):
        if scale <= 0:
            raise ValueError(f"laplace likelihood scale must be > 0, got {scale}")
        self.scale = scale
        self._const = -math.log(2 * scale)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return self._const - (x - params).abs() / self.scale

    def mean(self, params: Tensor) -> Tensor:
        return params


class Bernoulli(Likelihood):
    """Bernoulli with logits; x in [0, 1] (continuous relaxation allowed, as is usual for images)."""

    name = "bernoulli"

    def __init__(self, scale: float = 1.0):
        del scale

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return -F.binary_cross_entropy_with_logits(params, x, reduction="none")

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)


class Categorical(Likelihood):
    """Categorical over the last axis of params (..., V); x holds integer classes with shape (...)."""

    name = "categorical"

    def __init__(self, scale: float = 1.0):
        del scale

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logp = torch.log_softmax(params.float(), dim=-1)
        return logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)

    def mean(self, params: Tensor) -> Tensor:
        return params.argmax(-1)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (Gaussian, Laplace, Bernoulli, Categorical)
}


def make_likelihood(name: str, scale: float = 1.0) -> Likelihood:
    """Build a likelihood by name."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; expected one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name](scale)
