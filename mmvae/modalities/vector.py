"""Feature-vector modalities (robot state, sensor summaries, toy signals): float (B, D)."""

from __future__ import annotations

from mmvae.config import ConfigError, ModalityConfig
from mmvae.modalities.base import Modality
from mmvae.nets import mlp, mlp_out_dim


class Vector(Modality):
    """MLP encoder and decoder over a flat float vector."""

    kind = "vector"
    supported_likelihoods = ("gaussian", "laplace")

    def __init__(self, name: str, config: ModalityConfig, decoder_in: int | None):
        if len(config.shape) != 1:
            raise ConfigError(f"modality '{name}' (kind vector): shape must be [D], got {config.shape}")
        super().__init__(name, config, decoder_in)
        (d,) = self.shape
        hidden = list(config.hidden)
        self.encoder = mlp(d, hidden, None)
        self.feature_dim = mlp_out_dim(d, hidden, None)
        if decoder_in is not None:
            self.decoder = mlp(decoder_in, list(reversed(hidden)), d)
