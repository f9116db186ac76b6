"""Registry of model families: `model.family` names a class here.

Swap, metrics, IWAE, sample and interpret speak only to the family protocol (`families.base.MultimodalModel`),
so a new family is one file and one line in `FAMILIES`.
"""

from __future__ import annotations

from mmvae.config import ModelConfig
from mmvae.families.base import ForwardOutput, MultimodalModel, Posteriors
from mmvae.families.dmvae import DMVAE
from mmvae.families.factorized import FactorizedMultimodalVAE
from mmvae.families.mmvae_moe import MMVAE
from mmvae.families.mmvae_plus import MMVAEPlus
from mmvae.families.mopoe import MoPoEVAE
from mmvae.families.mvae import MVAE

FAMILIES: dict[str, type[MultimodalModel]] = {
    FactorizedMultimodalVAE.family: FactorizedMultimodalVAE,
    MVAE.family: MVAE,  # Wu & Goodman 2018: PoE, sub-sampled ELBOs
    MMVAE.family: MMVAE,  # Shi et al. 2019: MoE, stratified IWAE / DReG
    MoPoEVAE.family: MoPoEVAE,  # Sutter et al. 2021: mixture of subset PoEs
    DMVAE.family: DMVAE,  # Lee & Pavlovic 2021: PoE shared + private latents, cross-reconstruction
    MMVAEPlus.family: MMVAEPlus,  # Palumbo et al. 2023: MoE shared z + private w with auxiliary priors
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
