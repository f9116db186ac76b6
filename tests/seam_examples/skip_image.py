"""A modality whose encoder exposes skip features, and a head that reads them plus a condition.

Recipe "add a modality" and "add a head" (docs/architecture.md). The head predicts a target that is not an
input (`batch["targets"]["brightness"]`) from the image encoder's first feature map, the joint features and
a condition (the action), the way a flow decoder reads RGB skips and an action.
"""

from __future__ import annotations

import torch
from einops import rearrange
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from mmvae.heads import Head, HeadInput, ModelDims, masked_batch_mean
from mmvae.modalities.base import Encoding
from mmvae.modalities.image import _ImageModality
from mmvae.nets import mlp


class ConvSkipImage(_ImageModality):
    """(B, 1, H, W) -> conv k4 s2 -> skip (B, 8, H/2, W/2) -> flatten -> MLP features; MLP decoder."""

    kind = "conv_skip_image"

    def __init__(self, name, config, decoder_in):
        super().__init__(name, config, decoder_in)
        c, h, w = self.shape
        self.stem = nn.Sequential(nn.Conv2d(c, 8, 4, 2, 1), nn.ReLU())
        self.trunk = mlp(8 * (h // 2) * (w // 2), list(config.hidden), None)
        self.feature_dim = config.hidden[-1]
        if decoder_in is not None:
            self.decoder = nn.Sequential(mlp(decoder_in, list(reversed(config.hidden)), c * h * w),
                                         nn.Unflatten(1, (c, h, w)))

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Encoding:
        skip = self.stem(x)  # (B, 8, H/2, W/2)
        return Encoding(self.trunk(rearrange(skip, "b c h w -> b (c h w)")), skips=(skip,))


class BrightnessHead(Head):
    """Mean brightness of the image from its skip features, F_y and the conditions: `ssl/brightness` (MSE)."""

    kind = "brightness_example"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        source: str  # the modality whose skips are read
        target: str = "brightness"

    def __init__(self, name: str, config, dims: ModelDims):
        super().__init__(name, config, dims)
        self.skip_net = nn.Conv2d(8, 4, 1)
        self.out = mlp(4 + dims.joint_feature_dim + self.cond_dim(dims), list(config.hidden), 1)

    def forward(self, inp: HeadInput) -> Tensor:
        skip = inp.encodings[self.options.source].skips[0]  # (B, 8, h, w)
        pooled = self.skip_net(skip).mean(dim=(2, 3))  # (B, 4)
        return self.out(torch.cat([pooled, inp.f_joint, *inp.cond.values()], dim=-1)).squeeze(-1)  # (B,)

    def term_names(self) -> list[str]:
        return ["ssl/brightness"]

    def terms(self, output: Tensor, batch) -> dict[str, Tensor]:
        target = batch["targets"][self.options.target]
        present = batch["present"][self.options.source]
        return {"ssl/brightness": masked_batch_mean((output - target) ** 2, present)}
