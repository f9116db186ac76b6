"""mmvae: multimodal disentanglement with one joint factor and one private factor per modality.

The Python API (docs/python_api.md): make_config, build, fit, load, encode, decode, generate, swap_factors.
"""

__version__ = "0.1.0"

_API = ("Latents", "build", "decode", "encode", "fit", "generate", "load", "make_config", "swap_factors")


def __getattr__(name: str):
    # Lazy, so that `import mmvae` stays cheap and `python -m mmvae.cli --help` does not import torch early.
    if name in _API:
        from mmvae import api

        return getattr(api, name)
    raise AttributeError(f"module 'mmvae' has no attribute {name!r}")


__all__ = list(_API)
