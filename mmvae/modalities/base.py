"""The modality interface: encoder, decoder and likelihood of one kind of data, behind one small API.

The model, losses, trainer, swaps and attributions only ever call these methods, iterating over
modality names, so adding a kind means one new file and one registry line.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmvae.config import ModalityConfig
from mmvae.likelihoods import Likelihood, make_likelihood


class Modality(nn.Module):
    """Base class. Subclasses set `self.encoder` (x -> (B, feature_dim)) and `self.decoder` ((B, decoder_in) -> params)."""

    kind: str = ""
    supported_likelihoods: tuple[str, ...] = ("gaussian", "laplace", "bernoulli")

    def __init__(self, name: str, config: ModalityConfig, decoder_in: int):
        super().__init__()
        if config.likelihood not in self.supported_likelihoods:
            raise ValueError(
                f"modality '{name}' (kind {self.kind}): likelihood {config.likelihood!r} is not supported; "
                f"choose one of {list(self.supported_likelihoods)}"
            )
        self.name = name
        self.config = config
        self.shape = tuple(config.shape)
        self.decoder_in = decoder_in
        self.likelihood: Likelihood = make_likelihood(config.likelihood, config.likelihood_scale)
        self.encoder: nn.Module
        self.decoder: nn.Module
        self.feature_dim: int

    # --- data ---------------------------------------------------------------------------------
    def preprocess(self, x: Tensor) -> Tensor:
        """Stored dtype -> model input (float), on whatever device x is on."""
        return x.float()

    @property
    def num_values(self) -> int:
        """Number of observed values per sample (for size-corrected reconstruction weights)."""
        return math.prod(self.shape)

    # --- networks -----------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Preprocessed x (B, *shape) -> features (B, feature_dim)."""
        return self.encoder(x)

    def decode(self, h: Tensor) -> Tensor:
        """[F_y, F_m] (B, decoder_in) -> likelihood parameters (B, *shape) (or (B, *shape, V))."""
        return self.decoder(h)

    # --- likelihood ---------------------------------------------------------------------------
    def log_prob_elements(self, params: Tensor, x: Tensor) -> Tensor:
        """Element-wise log p(x | params): (B, *shape)."""
        return self.likelihood.log_prob(params, x)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x | params) per sample: (B,)."""
        return self.log_prob_elements(params, x).flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        """The mean reconstruction in data space (B, *shape)."""
        return self.likelihood.mean(params)

    # --- parts, for attribution -------------------------------------------------------------------
    def to_parts(self, elements: Tensor) -> Tensor:
        """Group per-element values (B, *shape) into parts (B, P); default: every element is a part."""
        return elements.flatten(1)

    @property
    def parts_shape(self) -> tuple[int, ...]:
        """Shape the P parts form when displayed (e.g. (H, W) for images)."""
        return (self.num_values,)

    # --- display --------------------------------------------------------------------------------
    def is_image(self) -> bool:
        return False


def check_options(name: str, kind: str, options: dict, allowed: dict) -> dict:
    """Merge kind-specific options over their defaults; unknown option keys are errors."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"modality '{name}' (kind {kind}): unknown option(s) {unknown}; allowed: {sorted(allowed)}"
        )
    return {**allowed, **options}


def sigmoid_if_continuous(likelihood: str, raw: Tensor) -> Tensor:
    """Continuous likelihoods on [0, 1] data get a sigmoid mean; Bernoulli keeps logits."""
    return torch.sigmoid(raw) if likelihood in ("gaussian", "laplace") else raw
