"""Image modalities: uint8 (B, C, H, W) stored, floats in [0, 1] modelled."""

from __future__ import annotations

import math

from einops.layers.torch import Rearrange
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mmvae.config import ConfigError, ModalityConfig
from mmvae.modalities.base import DecoderInput, Modality, as_flat, sigmoid_if_continuous
from mmvae.nets import mlp, mlp_out_dim


class _ImageModality(Modality):
    display = "image"

    def __init__(self, name: str, config: ModalityConfig, decoder_in: int | None):
        if len(config.shape) != 3:
            raise ConfigError(f"modality '{name}' (kind {self.kind}): shape must be [C, H, W], got {config.shape}")
        super().__init__(name, config, decoder_in)

    def preprocess(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """uint8 [0, 255] -> float [0, 1]; float input is taken as already scaled."""
        return x.float() / 255.0 if x.dtype.is_floating_point is False else x

    def decode(self, inp: DecoderInput | Tensor) -> Tensor:
        return sigmoid_if_continuous(self.config.likelihood, self.decoder(as_flat(inp)))

    def to_parts(self, elements: Tensor) -> Tensor:
        """Pixels are the parts: sum over channels, (B, C, H, W) -> (B, H*W)."""
        return elements.sum(1).flatten(1)

    @property
    def parts_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])


class ImageMLP(_ImageModality):
    """Flatten -> MLP encoder, MLP -> unflatten decoder (the MNIST reference net: 784 -> 400)."""

    kind = "image_mlp"

    def __init__(self, name: str, config: ModalityConfig, decoder_in: int | None):
        super().__init__(name, config, decoder_in)
        c, h, w = self.shape
        n = c * h * w
        hidden = list(config.hidden)
        self.encoder = nn.Sequential(Rearrange("b c h w -> b (c h w)"), mlp(n, hidden, None))
        self.feature_dim = mlp_out_dim(n, hidden, None)
        if decoder_in is not None:
            self.decoder = nn.Sequential(
                mlp(decoder_in, list(reversed(hidden)), n), Rearrange("b (c h w) -> b c h w", c=c, h=h, w=w)
            )


class ImageConv(_ImageModality):
    """Strided conv encoder (k4 s2 p1 per level) and the mirrored transposed-conv decoder.

    The SVHN reference net: 3x32x32 -> 32 -> 64 -> 128 channels at 4x4.
    """

    kind = "image_conv"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        channels: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)

    def __init__(self, name: str, config: ModalityConfig, decoder_in: int | None):
        super().__init__(name, config, decoder_in)
        channels = list(self.options.channels)
        if min(channels) < 1:
            raise ConfigError(f"modality '{name}' (kind image_conv): option 'channels' must be positive, got {channels}")
        c, h, w = self.shape
        down = 2 ** len(channels)
        if h % down or w % down:
            raise ConfigError(
                f"modality '{name}' (kind image_conv): H and W ({h}, {w}) must be divisible by 2^{len(channels)}"
            )
        bottom = (channels[-1], h // down, w // down)
        flat = math.prod(bottom)

        enc: list[nn.Module] = []
        prev = c
        for ch in channels:
            enc += [nn.Conv2d(prev, ch, 4, 2, 1), nn.ReLU()]
            prev = ch
        enc.append(Rearrange("b c h w -> b (c h w)"))
        enc.append(mlp(flat, list(config.hidden), None))
        self.encoder = nn.Sequential(*enc)
        self.feature_dim = mlp_out_dim(flat, list(config.hidden), None)

        if decoder_in is None:
            return
        dec: list[nn.Module] = [
            mlp(decoder_in, list(reversed(config.hidden)), flat),
            nn.ReLU(),
            Rearrange("b (c h w) -> b c h w", c=bottom[0], h=bottom[1], w=bottom[2]),
        ]
        rev = list(reversed(channels))
        for i, ch in enumerate(rev):
            out = rev[i + 1] if i + 1 < len(rev) else c
            dec.append(nn.ConvTranspose2d(ch, out, 4, 2, 1))
            if i + 1 < len(rev):
                dec.append(nn.ReLU())
        self.decoder = nn.Sequential(*dec)
