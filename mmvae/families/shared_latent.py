"""What the baseline families with one shared latent (MVAE, MMVAE, MoPoE-VAE) have in common.

They are the factorized model with no private factor and a fixed fusion; each owns its objective as a
loss-term group (named in `default_loss_terms`) and, where the objective needs more than one sample per
row, computes those samples and their decodings inside `forward` (every parameter used there, for DDP)
and hands them to its terms through `ForwardOutput.extras`.
"""

from __future__ import annotations

from torch import Tensor

from mmvae.config import ConfigError, ModelConfig
from mmvae.families.factorized import FactorizedMultimodalVAE


class SharedLatentVAE(FactorizedMultimodalVAE):
    """Base class: checks the config (no private factor, the family's fusion, no joint_subset_drop)."""

    fusion_name: str = ""  # the fusion the family's objective is written for

    def __init__(self, config: ModelConfig):
        name = self.family
        with_private = [m for m in config.observed if config.modalities[m].private_dim]
        if with_private:
            raise ConfigError(f"model family {name} has one shared latent and no private factors; set "
                              f"model.modalities.<m>.private_dim: 0 for {with_private}")
        if config.fusion != self.fusion_name:
            raise ConfigError(f"model family {name} is defined with fusion {self.fusion_name!r}; set "
                              f"model.fusion: {self.fusion_name} (got {config.fusion!r})")
        if config.joint_subset_drop:
            raise ConfigError(f"model family {name}: model.joint_subset_drop must be 0 (its objective decides which "
                              f"modalities infer Z_y; got {config.joint_subset_drop})")
        super().__init__(config)

    def tile_condition_features(self, cond: dict[str, Tensor], times: int) -> dict[str, Tensor]:
        """{c: (B, F_c)} -> {c: (times*B, F_c)}, to decode `times` latents per sample."""
        return {c: f.repeat(times, 1) for c, f in cond.items()}
