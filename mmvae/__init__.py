"""mmvae: multimodal disentanglement with one joint factor and one private factor per modality."""

__version__ = "0.1.0"
