"""The modality interface: encoder, decoder and likelihood of one kind of data, behind one small API.

The model, losses, trainer, swaps and attributions only ever call these methods, iterating over
modality names, so adding a kind means one new file and one registry line.

    stored x (B, *shape) --preprocess(x, mask)--> modelled x (B, *model_shape)   e.g. int16 wave -> log-mel
    modelled x --encode(x, mask)--> Encoding(h (B, feature_dim), skips)
    DecoderInput(joint F_y, private F_m | None, cond {name: (B, F_c)}, skips) --decode--> params (B, *model_shape[, V])
    log_prob(params, x, mask) -> (B,)   over real elements only
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from mmvae.config import ConfigError, ModalityConfig
from mmvae.likelihoods import Likelihood, make_likelihood

Display = Literal["image", "curve", "spectrogram", "tokens"]


@dataclass
class Encoding:
    """What an encoder returns: flat features for the latents, plus optional skip features (e.g. for a flow decoder)."""

    h: Tensor  # (B, feature_dim)
    skips: tuple[Tensor, ...] = ()


@dataclass
class DecoderInput:
    """What a decoder reads: the joint features, the private features (None without a private factor),
    named conditioning features and skip features."""

    joint: Tensor | None  # (B, Fy)
    private: Tensor | None = None  # (B, Fm)
    cond: dict[str, Tensor] = field(default_factory=dict)  # {condition: (B, F_c)}
    skips: tuple[Tensor, ...] = ()

    def flat(self) -> Tensor:
        """[F_y, F_m, cond...] concatenated in that order: (B, decoder_in)."""
        parts = [t for t in (self.joint, self.private) if t is not None] + list(self.cond.values())
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def as_flat(inp: "DecoderInput | Tensor") -> Tensor:
    """A decoder input as one (B, decoder_in) tensor; a tensor is taken as already concatenated [F_y, F_m, ...]."""
    return inp.flat() if isinstance(inp, DecoderInput) else inp


class NoOptions(BaseModel):
    """Kinds without options."""

    model_config = ConfigDict(extra="forbid")


def parse_options(name: str, kind: str, options_type: type[BaseModel], options: dict, label: str = "kind") -> BaseModel:
    """Validate a modality's (head's, family's) `options` with its kind's typed Options; errors name the key."""
    try:
        return options_type.model_validate(options)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                problems.append(f"unknown option {key!r}")
            else:
                problems.append(f"option {key!r}: {e['msg']}")
        allowed = sorted(options_type.model_fields)
        raise ConfigError(f"{name} ({label} {kind}): {'; '.join(problems)}; allowed options: {allowed}") from None


class Modality(nn.Module):
    """Base class. Subclasses set `self.encoder` (x -> (B, feature_dim)) and, when `decoder_in` is not None,
    `self.decoder` ((B, decoder_in) -> params); or override `encode`/`decode`."""

    kind: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    supported_likelihoods: ClassVar[tuple[str, ...]] = ("gaussian", "laplace", "bernoulli")
    display: ClassVar[Display] = "curve"  # how sample, swap and the attribution report draw it

    def __init__(self, name: str, config: ModalityConfig, decoder_in: int | None):
        super().__init__()
        if config.likelihood not in self.supported_likelihoods:
            raise ConfigError(
                f"modality '{name}' (kind {self.kind}): likelihood {config.likelihood!r} is not supported; "
                f"choose one of {list(self.supported_likelihoods)}"
            )
        self.name = name
        self.config = config
        self.options = parse_options(f"modality '{name}'", self.kind, self.Options, config.options)
        self.shape = tuple(config.shape)  # stored shape of one sample
        self.decoder_in = decoder_in  # None: a condition, never decoded
        self.likelihood: Likelihood = make_likelihood(config.likelihood, config.likelihood_scale)
        self.encoder: nn.Module
        self.decoder: nn.Module
        self.feature_dim: int

    @property
    def role(self) -> str:
        return self.config.role

    # --- data ---------------------------------------------------------------------------------
    @property
    def model_shape(self) -> tuple[int, ...]:
        """Shape of one modelled sample (what preprocess returns, what the likelihood scores)."""
        return self.shape

    def preprocess(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Stored dtype -> model input (float), on whatever device x is on; padded elements become 0, so
        nothing of the padding reaches the encoder."""
        x = x.float()
        return x if mask is None else torch.where(self.expand_mask(mask, x), x, torch.zeros_like(x))

    @property
    def num_values(self) -> int:
        """Observed values per sample (for size-corrected reconstruction weights); kinds with padded
        sequences override it with the typical number of real values."""
        return math.prod(self.model_shape)

    def expand_mask(self, mask: Tensor, like: Tensor) -> Tensor:
        """A (B, L) element mask broadcast to per-element values `like` (B, L, ...): the sequence axis is axis 1."""
        return mask.reshape(*mask.shape, *([1] * (like.dim() - mask.dim())))

    # --- networks -----------------------------------------------------------------------------
    def encode(self, x: Tensor, mask: Tensor | None = None) -> Encoding:
        """Preprocessed x (B, *model_shape) -> Encoding with features (B, feature_dim)."""
        return Encoding(self.encoder(x))

    def decode(self, inp: DecoderInput | Tensor) -> Tensor:
        """DecoderInput (or its concatenation) -> likelihood parameters (B, *model_shape) (or (B, *model_shape, V))."""
        return self.decoder(as_flat(inp))

    # --- likelihood ---------------------------------------------------------------------------
    def log_prob_elements(self, params: Tensor, x: Tensor) -> Tensor:
        """Element-wise log p(x | params): (B, *model_shape)."""
        return self.likelihood.log_prob(params, x)

    def log_prob(self, params: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """log p(x | params) per sample over real elements: (B,)."""
        elements = self.log_prob_elements(params, x)
        if mask is not None:
            elements = torch.where(self.expand_mask(mask, elements), elements, torch.zeros_like(elements))
        return elements.flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        """The mean reconstruction in modelled space (B, *model_shape)."""
        return self.likelihood.mean(params)

    # --- parts, for attribution -------------------------------------------------------------------
    def to_parts(self, elements: Tensor) -> Tensor:
        """Group per-element values (B, *model_shape) into parts (B, P); default: every element is a part."""
        return elements.flatten(1)

    @property
    def parts_shape(self) -> tuple[int, ...]:
        """Shape the P parts form when displayed (e.g. (H, W) for images)."""
        return (math.prod(self.model_shape),)

    # --- display --------------------------------------------------------------------------------
    def is_image(self) -> bool:
        """Kept for callers of the first API; prefer `display == "image"`."""
        return self.display == "image"


def sigmoid_if_continuous(likelihood: str, raw: Tensor) -> Tensor:
    """Continuous likelihoods on [0, 1] data get a sigmoid mean; Bernoulli keeps logits."""
    return torch.sigmoid(raw) if likelihood in ("gaussian", "laplace") else raw
