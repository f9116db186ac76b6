"""The first home of the factorized model; it now lives in `mmvae.families.factorized` (one family of several)."""

from mmvae.families.base import ForwardOutput, MultimodalModel, Posteriors
from mmvae.families.factorized import FactorizedMultimodalVAE

__all__ = ["FactorizedMultimodalVAE", "ForwardOutput", "MultimodalModel", "Posteriors"]
