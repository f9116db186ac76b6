"""Heads: modules that read the factors (and encodings, conditions, the batch) and bring their own named loss terms.

The label head is the first; self-supervised heads (flow, contact, alignment, next pose) follow the same
shape, and so does the adversary on the private factors (heads_adversary.py). A head kind is a class here or
in its own file, plus one line in `HEADS`.

    HeadInput(z_joint, f_joint, f_private, encodings (with skips), cond, batch, z_private, private_mean) --head--> output
    head.terms(output, batch) -> {"<term name>": scalar}   (averaged over the batch; masked samples add 0)
    head.metrics(output, batch) -> {"<name>": scalar}      (optional: logged beside the terms, never in the loss)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mmvae.batch import Batch, labels
from mmvae.config import HeadConfig
from mmvae.modalities.base import Encoding, NoOptions, parse_options
from mmvae.nets import mlp


@dataclass
class ModelDims:
    """Widths a head may read, fixed when the model is built."""

    joint_dim: int
    joint_feature_dim: int
    private_feature_dims: dict[str, int]  # modalities with a private factor
    feature_dims: dict[str, int]  # every modality's encoder width, conditions included
    # (channels, *spatial) of each skip feature map, per modality that has skips (its `skip_shapes`), finest first
    skip_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    private_dims: dict[str, int] = field(default_factory=dict)  # latent width D_m per modality with a private factor


@dataclass
class HeadInput:
    z_joint: Tensor  # (B, Dy) the joint latent (a sample in training, the mean in evaluation)
    f_joint: Tensor  # (B, Fy) = G_y(z_joint)
    f_private: dict[str, Tensor]  # (B, Fm) per modality with a private factor
    encodings: dict[str, Encoding]  # every modality's encoding (conditions too), with skip features
    cond: dict[str, Tensor] = field(default_factory=dict)  # the head's conditions: {name: (B, F_c)}
    batch: Batch = field(default_factory=dict)  # the batch (targets, meta, presence)
    z_private: dict[str, Tensor] = field(default_factory=dict)  # (B, Dm) the private latents the decoders read
    private_mean: dict[str, Tensor] = field(default_factory=dict)  # (B, Dm) the private posterior means


def masked_batch_mean(per_sample: Tensor, mask: Tensor) -> Tensor:
    """Sum over masked-in samples divided by the batch size: (B,) -> ()."""
    return torch.where(mask, per_sample, torch.zeros_like(per_sample)).sum() / per_sample.shape[0]


class Head(nn.Module):
    """Base class: `forward(HeadInput)` -> output; `terms(output, batch)` -> named scalar loss terms."""

    kind: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, name: str, config: HeadConfig, dims: ModelDims):
        super().__init__()
        self.name, self.config = name, config
        self.options: Any = parse_options(f"head '{name}'", self.kind, self.Options, config.options)

    def cond_dim(self, dims: ModelDims) -> int:
        """Total width of the conditions this head reads."""
        return sum(dims.feature_dims[c] for c in self.config.conditioned_on)

    def term_names(self) -> list[str]:
        """Every loss term this head produces (for config checks)."""
        raise NotImplementedError

    def terms(self, output: Any, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError

    def metrics(self, output: Any, batch: Batch) -> dict[str, Tensor]:
        """Diagnostics logged beside the loss terms (e.g. an accuracy), never added to the loss; none by default.
        Scalars whose names do not change from step to step (the log's names are fixed at the first step)."""
        return {}


def label_term(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy on samples whose label is known (y >= 0)."""
    known = y >= 0
    ce = F.cross_entropy(logits.float(), y.clamp(min=0), reduction="none")
    return masked_batch_mean(ce, known)


class LabelHead(Head):
    """Class logits from the joint features F_y only (Tsai et al.'s discriminative factor)."""

    kind = "label"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        num_classes: int = Field(ge=1)

    def __init__(self, name: str, config: HeadConfig, dims: ModelDims):
        super().__init__(name, config, dims)
        self.net = mlp(dims.joint_feature_dim + self.cond_dim(dims), list(config.hidden), self.options.num_classes)

    @property
    def term_name(self) -> str:
        return "label" if self.name == "label" else f"label/{self.name}"

    def logits(self, f_joint: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
        """(B, Fy) -> (B, num_classes)."""
        parts = [f_joint, *(cond or {}).values()]
        return self.net(parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1))

    def forward(self, inp: HeadInput) -> Tensor:
        return self.logits(inp.f_joint, inp.cond)

    def term_names(self) -> list[str]:
        return [self.term_name]

    def terms(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {self.term_name: label_term(output, labels(batch))}


HEADS: dict[str, type[Head]] = {LabelHead.kind: LabelHead}

# The robot heads (flow, contact, alignment, next_pose) and the private adversary import Head from here and add
# themselves to HEADS.
import mmvae.heads_robot  # noqa: E402,F401
import mmvae.heads_adversary  # noqa: E402,F401


def build_head(name: str, config: HeadConfig, dims: ModelDims) -> Head:
    """Instantiate the head class registered for `config.kind`."""
    if config.kind not in HEADS:
        raise ValueError(f"head '{name}': unknown kind {config.kind!r}; registered kinds: {sorted(HEADS)}")
    return HEADS[config.kind](name, config, dims)
