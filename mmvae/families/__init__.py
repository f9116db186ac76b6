"""Registry of model families: `model.family` names a class here.

Swap, metrics, IWAE, sample and interpret speak only to the family protocol (`families.base.MultimodalModel`),
so a new family is one file and one line in `FAMILIES`.
"""

from __future__ import annotations

from mmvae.config import ModelConfig
from mmvae.families.base import ForwardOutput, MultimodalModel, Posteriors
from mmvae.families.dmvae import DMVAE
from mmvae.families.factorized import FactorizedMultimodalVAE
from mmvae.families.mmvae_plus import MMVAEPlus

FAMILIES: dict[str, type[MultimodalModel]] = {
    FactorizedMultimodalVAE.family: FactorizedMultimodalVAE,
    DMVAE.family: DMVAE,
    MMVAEPlus.family: MMVAEPlus,
}


def build_model(config: ModelConfig) -> MultimodalModel:
    """The model of `config.family` for `config`."""
    if config.family not in FAMILIES:
        raise ValueError(f"unknown model family {config.family!r}; registered: {sorted(FAMILIES)}")
    return FAMILIES[config.family](config)


def model_class(config: ModelConfig) -> type[MultimodalModel]:
    """The class `build_model` would instantiate (e.g. for its `upgrade_state_dict`)."""
    return FAMILIES[config.family]


__all__ = ["FAMILIES", "ForwardOutput", "MultimodalModel", "Posteriors", "build_model", "model_class"]
