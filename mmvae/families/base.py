"""The model-family protocol: what swap, metrics, IWAE, sample, interpret and the trainer may call.

    preprocess(x, mask)             stored tensors -> modelled inputs, per modality
    encode(inputs, present, mask)   -> Posteriors(joint: JointPosterior, private: {m: DiagonalGaussian}, encodings)
    posteriors(batch, joint_from)   the same from a batch; Z_y inferred from the modalities in joint_from only
    decode(z_joint, z_private, names, cond) -> likelihood parameters per modality
    sample_prior(n, device)         -> (z_joint (n, Dy), {m: (n, Dm)})
    cross_private(like)             private latents for generating a modality from another one's Z_y
                                    (default N(0, I); MMVAE+ draws from its auxiliary prior r(w_m))
    forward(batch, sample)          -> ForwardOutput   (every parameter is used here: what DDP needs)
    classify(z_joint)               label logits (families with a label head)
    default_loss_terms, term_scales  which loss-term groups make the loss and per-term size corrections
    Options                         the typed `model.family_options` (none by default); parsed into `self.options`
    param_groups(train_config)      optimiser groups, e.g. a frozen or slower pretrained encoder
    attribution hooks               joint_features, private_features, decode_from_features, fuse

A family with no private factor returns an empty `private` dict and ignores `z_private`. A family's own
settings are `model.family_options`, typed by its `Options` pydantic model (`parse_family_options`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor, nn

from mmvae.batch import Batch, restrict_present
from mmvae.config import ConfigError, ModelConfig
from mmvae.latent import DiagonalGaussian, JointPosterior
from mmvae.modalities import Encoding, Modality
from mmvae.modalities.base import NoOptions


@dataclass
class Posteriors:
    joint: JointPosterior  # q(Z_y | present modalities), (B, Dy)
    private: dict[str, DiagonalGaussian]  # q(Z_m | x_m), (B, Dm) each, for modalities with a private factor
    encodings: dict[str, Encoding] = field(default_factory=dict)  # every modality's encoding (conditions too)


@dataclass
class ForwardOutput:
    inputs: dict[str, Tensor]  # preprocessed x_m (conditions too)
    posteriors: Posteriors
    z_joint: Tensor  # (B, Dy)
    z_private: dict[str, Tensor]  # (B, Dm)
    params: dict[str, Tensor]  # likelihood parameters per observed modality
    heads: dict[str, Tensor] = field(default_factory=dict)  # each head's output, by head name
    f_joint: Tensor | None = None  # (B, Fy)
    f_private: dict[str, Tensor] = field(default_factory=dict)  # (B, Fm)
    cond: dict[str, Tensor] = field(default_factory=dict)  # condition features (B, F_c)
    masks: dict[str, Tensor] = field(default_factory=dict)  # per-element masks of padded modalities
    extras: dict[str, Any] = field(default_factory=dict)  # what a family's own loss terms read (e.g. K samples)

    @property
    def logits(self) -> Tensor | None:
        """The label head's logits (B, num_classes), or None without a label head."""
        return self.heads.get("label")


def parse_family_options(family: type["MultimodalModel"], options: dict) -> BaseModel:
    """`model.family_options` validated by the family's `Options`; errors name the option and list the allowed ones."""
    try:
        return family.Options.model_validate(options)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            problems.append(f"unknown option {key!r}" if e["type"] == "extra_forbidden" else f"option {key!r}: {e['msg']}")
        allowed = sorted(family.Options.model_fields)
        raise ConfigError(f"model.family_options (family {family.family}): {'; '.join(problems)}; "
                          f"allowed options: {allowed}") from None


class MultimodalModel(nn.Module):
    """Base class of every family: names, modalities and the helpers every family shares."""

    family: str = ""
    Options: ClassVar[type[BaseModel]] = NoOptions  # the family's typed `model.family_options`
    default_loss_terms: tuple[str, ...] = ("reconstruction", "heads", "prior")
    Options: ClassVar[type[BaseModel]] = NoOptions  # the family's typed `model.family_options`

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.options = parse_family_options(type(self), config.family_options)
        self.names: list[str] = config.observed  # fused, reconstructed
        self.conditions: list[str] = config.conditions  # encoded only
        self.modalities: nn.ModuleDict

    # --- inputs ---------------------------------------------------------------------------------
    def preprocess(self, x: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Stored dtypes -> modelled float inputs, for every modality of the model."""
        mask = mask or {}
        # Kinds written for the first interface take preprocess(x) only: the mask goes only where there is one.
        return {m: (self.modalities[m].preprocess(x[m]) if mask.get(m) is None
                    else self.modalities[m].preprocess(x[m], mask[m])) for m in [*self.names, *self.conditions]}

    def posteriors(self, batch: Batch, joint_from: list[str] | None = None) -> Posteriors:
        """Posteriors of a batch; Z_y from the modalities in `joint_from` only (default: every present one)."""
        inputs = self.preprocess(batch["x"], batch.get("mask"))
        return self.encode(inputs, restrict_present(batch["present"], joint_from), batch.get("mask"))

    def encode(self, inputs: dict[str, Tensor], present: dict[str, Tensor],
               mask: dict[str, Tensor] | None = None) -> Posteriors:
        raise NotImplementedError

    def decode(self, z_joint: Tensor, z_private: dict[str, Tensor], names: list[str] | None = None,
               cond: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def sample_prior(self, n: int, device: torch.device | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def cross_private(self, like: dict[str, Tensor]) -> dict[str, Tensor]:
        """Private latents for generating modalities whose data is not seen (cross-modal generation), shaped like
        `like` {m: (B, Dm)} (its values are not read): N(0, I) draws, the prior of every private factor."""
        return {m: torch.randn_like(z) for m, z in like.items()}

    def classify(self, z_joint: Tensor) -> Tensor:
        raise ValueError(f"model family {self.family!r} has no label head")

    @property
    def has_label_head(self) -> bool:
        return False

    def mean(self, name: str, params: Tensor) -> Tensor:
        """The mean of modality `name` under its likelihood parameters (modelled space)."""
        return self.modalities[name].mean(params)

    def modality(self, name: str) -> Modality:
        return self.modalities[name]

    # --- loss ---------------------------------------------------------------------------------------
    def term_scales(self) -> dict[str, float]:
        """Per-term factors multiplied into the configured weight (e.g. size-corrected reconstruction)."""
        return {}

    # --- optimisation ---------------------------------------------------------------------------------
    def param_groups(self, train_config) -> list[dict]:
        """Optimiser parameter groups: [{"params": [...], "lr_scale": float}]; lr_scale 0 freezes a group.

        Default: every trainable parameter in one group at the configured learning rate. Families (or
        modalities with pretrained parts, or heads such as the private adversary) split off groups with their
        own `lr_scale`.
        """
        parts = [*self.modalities.values(), *getattr(self, "heads", {}).values()]
        own = [g for m in parts for g in getattr(m, "param_groups", lambda: [])()]
        taken = {id(p) for g in own for p in g["params"]}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        return [{"params": rest, "lr_scale": 1.0}, *own]  # modalities' and heads' own groups (e.g. a fine-tuned encoder)

    # --- checkpoints ------------------------------------------------------------------------------------
    @classmethod
    def upgrade_state_dict(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weights saved by older code -> this code's parameter names (identity by default)."""
        return state
