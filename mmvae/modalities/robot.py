"""Robot modalities (Lee et al., "Making Sense of Vision and Touch", ICRA 2019; docs/robot.md "The model side").

    rgb_conv     image (3, 128, 128) uint8 -> [0, 1]; 6 strided convs 128 -> 2 (Lee et al.: 3->16 k7, 16->32 k5,
                 32->64 k5, 64->64 k3, 64->128 k3, 128->C k3, LeakyReLU 0.1); every level's map is a skip
                 (Encoding.skips[i]: (B, channels[i], 128 / 2^(i+1), ...), the finest first); features: the
                 flattened 2 x 2 map (-> optional MLP `hidden`). Optional mirrored decoder (6 transposed convs).
    depth_conv   depth (1, 128, 128) float32 metres -> clamp(depth / options.scale, 0, 1); the same network.
    force_causal force (6, 32) float32 (tanh-squashed F/T readings, channels first) -> causal strided 1-D convs
                 32 -> 16 -> 8 -> 4 -> 2 -> 1 (Lee et al.: 5 layers, kernel 2, stride 2, 6 -> 16 -> 32 -> 64 -> 128 ->
                 C); the part for attribution is the time step (channels summed). Output j of level l sees only
                 readings <= (j + 1) * 2^l - 1 (`causal_levels`, tested). Optional MLP decoder.
    proprio_mlp  proprio (8,) -> MLP (LeakyReLU) `hidden` (Lee et al.: 8 -> 32 -> 64 -> 128 -> 256); MLP decoder.
    action_mlp   action (4,) -> MLP (LeakyReLU) `hidden` (Lee et al.: 4 -> 32 -> 32); meant for role: condition.

`options.decoder: false` (every kind) builds no reconstruction network: `decode` returns a constant (zeros in
the modelled space, no parameters, no gradient), so a config that does not reconstruct (`loss.terms: [heads,
prior]`, configs/vision_touch_lee.yaml) pays nothing for it and DDP sees no unused parameters, while sample,
swap and attribution still run (their reconstructions are that constant).
"""

from __future__ import annotations

import math

from einops.layers.torch import Rearrange
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from mmvae.config import ConfigError, ModalityConfig
from mmvae.modalities.base import DecoderInput, Encoding, Modality, as_flat, sigmoid_if_continuous
from mmvae.modalities.image import _ImageModality
from mmvae.nets import mlp_out_dim

LEAK = 0.1  # Lee et al.'s LeakyReLU slope


def leaky_mlp(in_dim: int, hidden: list[int], out_dim: int | None) -> nn.Sequential:
    """Linear-LeakyReLU(0.1) stack, no activation after an output layer."""
    layers: list[nn.Module] = []
    prev = in_dim
    for width in hidden:
        layers += [nn.Linear(prev, width), nn.LeakyReLU(LEAK)]
        prev = width
    if out_dim is not None:
        layers.append(nn.Linear(prev, out_dim))
    return nn.Sequential(*layers)


class ConstantDecoder(nn.Module):
    """The `decoder: false` stand-in: zeros of the modelled shape for every row, no parameters."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, flat: Tensor) -> Tensor:
        return flat.new_zeros(()).expand(flat.shape[0], *self.shape)


# --- RGB and depth --------------------------------------------------------------------------------------
class ConvOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 64, 128, 128], min_length=1)
    kernels: list[int] = Field(default_factory=lambda: [7, 5, 5, 3, 3, 3], min_length=1)
    decoder: bool = True  # build the mirrored reconstruction decoder
    scale: float = Field(default=1.0, gt=0)  # depth_conv only: metres mapped to 1 (clamped to [0, 1])

    @model_validator(mode="after")
    def _check(self) -> "ConvOptions":
        if len(self.kernels) != len(self.channels):
            raise ValueError(f"kernels ({self.kernels}) must have one entry per level of channels ({self.channels})")
        if min(self.channels) < 1 or any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise ValueError("channels must be positive and kernels odd (padding k // 2 halves each level exactly)")
        return self


class ConvSkipEncoder(nn.Module):
    """Strided convs (k_i, stride 2, padding k_i // 2, LeakyReLU): (B, C, H, W) -> every level's map."""

    def __init__(self, in_channels: int, channels: list[int], kernels: list[int]):
        super().__init__()
        levels, prev = [], in_channels
        for ch, k in zip(channels, kernels):
            levels.append(nn.Sequential(nn.Conv2d(prev, ch, k, 2, k // 2), nn.LeakyReLU(LEAK)))
            prev = ch
        self.levels = nn.ModuleList(levels)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        maps = []
        for level in self.levels:
            x = level(x)
            maps.append(x)
        return tuple(maps)


class _RobotConv(_ImageModality):
    """Shared by rgb_conv and depth_conv (see the module docstring)."""

    Options = ConvOptions
    in_channels = 3

    def __init__(self, name: str, config: ModalityConfig, decoder_in: int | None):
        super().__init__(name, config, decoder_in)
        o = self.options
        c, h, w = self.shape
        if c != self.in_channels:
            raise ConfigError(f"modality '{name}' (kind {self.kind}): {self.in_channels} channel(s) expected, got shape "
                              f"{list(self.shape)}")
        down = 2 ** len(o.channels)
        if h % down or w % down:
            raise ConfigError(f"modality '{name}' (kind {self.kind}): H and W ({h}, {w}) must be divisible by 2^"
                              f"{len(o.channels)} (one halving per level)")
        self.bottom = (o.channels[-1], h // down, w // down)
        flat = math.prod(self.bottom)
        self.convs = ConvSkipEncoder(c, list(o.channels), list(o.kernels))
        self.trunk = nn.Sequential(Rearrange("b c h w -> b (c h w)"), leaky_mlp(flat, list(config.hidden), None))
        self.feature_dim = mlp_out_dim(flat, list(config.hidden), None)
        if decoder_in is None:
            return
        if not o.decoder:
            self.decoder = ConstantDecoder(self.shape)
            return
        b = self.bottom
        dec: list[nn.Module] = [leaky_mlp(decoder_in, list(reversed(config.hidden)), flat), nn.LeakyReLU(LEAK),
                                Rearrange("b (c h w) -> b c h w", c=b[0], h=b[1], w=b[2])]
        rev = list(reversed(o.channels))
        for i, ch in enumerate(rev):
            last = i + 1 == len(rev)
            dec.append(nn.ConvTranspose2d(ch, c if last else rev[i + 1], 4, 2, 1))
            if not last:
                dec.append(nn.LeakyReLU(LEAK))
        self.decoder = nn.Sequential(*dec)

    @property
    def skip_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, H, W) of each skip map, the finest (first level) first."""
        _, h, w = self.shape
        return [(ch, h // 2 ** (i + 1), w // 2 ** (i + 1)) for i, ch in enumerate(self.options.channels)]

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Encoding:
        maps = self.convs(x)
        return Encoding(self.trunk(maps[-1]), skips=maps)

    def decode(self, inp: DecoderInput | Tensor) -> Tensor:
        if isinstance(self.decoder, ConstantDecoder):
            return self.decoder(as_flat(inp))
        return sigmoid_if_continuous(self.config.likelihood, self.decoder(as_flat(inp)))


class RGBConv(_RobotConv):
    """RGB camera frames, uint8 (3, H, W) stored, [0, 1] modelled."""

    kind = "rgb_conv"
    in_channels = 3


class DepthConv(_RobotConv):
    """Depth frames in metres, float32 (1, H, W) stored, clamp(depth / scale, 0, 1) modelled."""

    kind = "depth_conv"
    in_channels = 1
    supported_likelihoods = ("gaussian", "laplace")

    def preprocess(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return (x.float() / self.options.scale).clamp(0.0, 1.0)


# --- force / torque -----------------------------------------------------------------------------------
class CausalConv1d(nn.Module):
    """A strided 1-D convolution whose output j sees only inputs <= j * stride + stride - 1 (the end of its own
    stride window): left padding kernel - stride (kernel >= stride), none on the right.

    (B, C, T) -> (B, C', T // stride). With kernel = stride = 2 (Lee et al.) the windows do not overlap."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 2):
        super().__init__()
        if kernel < stride:
            raise ValueError(f"kernel ({kernel}) must be >= stride ({stride})")
        self.pad = kernel - stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(nn.functional.pad(x, (self.pad, 0)))


class ForceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128, 128], min_length=1)
    kernel: int = Field(default=2, ge=2)  # Lee et al.: 2 (stride 2); larger kernels overlap the windows, still causal
    decoder: bool = True


class ForceCausal(Modality):
    """Wrist force/torque windows (6, T) float32: causal strided 1-D convs T -> T / 2^L (see the module docstring)."""

    kind = "force_causal"
    Options = ForceOptions
    supported_likelihoods = ("gaussian", "laplace")
    display = "curve"

    def __init__(self, name: str, config: ModalityConfig, decoder_in: int | None):
        if len(config.shape) != 2:
            raise ConfigError(f"modality '{name}' (kind force_causal): shape must be [channels, readings], got "
                              f"{config.shape}")
        super().__init__(name, config, decoder_in)
        o = self.options
        c, t = self.shape
        down = 2 ** len(o.channels)
        if t % down:
            raise ConfigError(f"modality '{name}' (kind force_causal): readings ({t}) must be divisible by 2^"
                              f"{len(o.channels)} (one halving per level)")
        levels, prev = [], c
        for ch in o.channels:
            levels.append(nn.Sequential(CausalConv1d(prev, ch, o.kernel, 2), nn.LeakyReLU(LEAK)))
            prev = ch
        self.levels = nn.ModuleList(levels)
        flat = o.channels[-1] * (t // down)
        self.trunk = nn.Sequential(Rearrange("b c t -> b (c t)"), leaky_mlp(flat, list(config.hidden), None))
        self.feature_dim = mlp_out_dim(flat, list(config.hidden), None)
        if decoder_in is None:
            return
        if not o.decoder:
            self.decoder = ConstantDecoder(self.shape)
            return
        self.decoder = nn.Sequential(leaky_mlp(decoder_in, list(reversed(config.hidden)) or [128], c * t),
                                     Rearrange("b (c t) -> b c t", c=c, t=t))

    def causal_levels(self, x: Tensor) -> tuple[Tensor, ...]:
        """Every level's output (B, channels[l], T / 2^(l+1)); output j of level l sees readings <= (j+1) 2^(l+1) - 1."""
        maps = []
        for level in self.levels:
            x = level(x)
            maps.append(x)
        return tuple(maps)

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Encoding:
        maps = self.causal_levels(x)
        return Encoding(self.trunk(maps[-1]), skips=maps)

    def to_parts(self, elements: Tensor) -> Tensor:
        """The time step (reading) is the part: (B, 6, T) -> (B, T), summed over the channels."""
        return elements.sum(1)

    @property
    def parts_shape(self) -> tuple[int, ...]:
        return (self.shape[1],)


# --- proprioception and action ----------------------------------------------------------------------------
class MLPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decoder: bool = True


class _RobotMLP(Modality):
    Options = MLPOptions
    supported_likelihoods = ("gaussian", "laplace")

    def __init__(self, name: str, config: ModalityConfig, decoder_in: int | None):
        if len(config.shape) != 1:
            raise ConfigError(f"modality '{name}' (kind {self.kind}): shape must be [D], got {config.shape}")
        super().__init__(name, config, decoder_in)
        (d,) = self.shape
        hidden = list(config.hidden)
        self.encoder = leaky_mlp(d, hidden, None)
        self.feature_dim = mlp_out_dim(d, hidden, None)
        if decoder_in is not None:
            self.decoder = (leaky_mlp(decoder_in, list(reversed(hidden)), d) if self.options.decoder
                            else ConstantDecoder(self.shape))


class ProprioMLP(_RobotMLP):
    """Robot state (8,): end-effector xyz, yaw, velocities; MLP encoder and decoder."""

    kind = "proprio_mlp"


class ActionMLP(_RobotMLP):
    """The commanded action (4,); used with role: condition (then no decoder is built)."""

    kind = "action_mlp"
