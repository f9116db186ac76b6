"""A second model family: the factorized model without private factors (one shared latent, PoE or any fusion).

Recipe "add a model family": a class with a `family` name and one registry line; everything else (swap,
metrics, IWAE, sample, attribution) reaches it through the family protocol.
"""

from __future__ import annotations

from mmvae.config import ConfigError
from mmvae.families.factorized import FactorizedMultimodalVAE


class JointOnlyVAE(FactorizedMultimodalVAE):
    family = "joint_only_example"

    def __init__(self, config):
        with_private = [m for m in config.observed if config.modalities[m].private_dim]
        if with_private:
            raise ConfigError(f"family joint_only_example has no private factors; set private_dim: 0 for {with_private}")
        super().__init__(config)
