"""The factorized multimodal VAE (Tsai et al., ICLR 2019): one joint factor, one private factor per modality.

    x_m --encoder_m--> h_m --+--> fusion(h, present) --> q(Z_y | x_present)
                             +--> private head_m    --> q(Z_m | x_m)
    F_y = G_y(Z_y), F_m = G_m(Z_m);  x̂_m = decoder_m([F_y, F_m]);  ŷ = label_head(F_y)

Every parameter is used inside `forward`, which is what DDP needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmvae.config import ModelConfig
from mmvae.fusion import FUSIONS
from mmvae.latent import DiagonalGaussian
from mmvae.modalities import Modality, build_modality
from mmvae.nets import mlp


@dataclass
class Posteriors:
    joint: DiagonalGaussian  # q(Z_y | present modalities), (B, Dy)
    private: dict[str, DiagonalGaussian]  # q(Z_m | x_m), (B, Dm) each


@dataclass
class ForwardOutput:
    inputs: dict[str, Tensor]  # preprocessed x_m
    posteriors: Posteriors
    z_joint: Tensor  # (B, Dy)
    z_private: dict[str, Tensor]  # (B, Dm)
    params: dict[str, Tensor]  # likelihood parameters per modality
    logits: Tensor | None  # (B, num_classes)


class FactorizedMultimodalVAE(nn.Module):
    """Model of `ModelConfig`; modalities are dict keys throughout."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.names = list(config.modalities)
        fy = config.joint_feature_dim
        self.joint_features = mlp(config.joint_dim, [fy], fy)  # G_y
        mods: dict[str, Modality] = {}
        for name, mc in config.modalities.items():
            mods[name] = build_modality(name, mc, decoder_in=fy + mc.private_feature_dim)
        self.modalities = nn.ModuleDict(mods)
        self.private_heads = nn.ModuleDict(
            {m: nn.Linear(mods[m].feature_dim, 2 * mc.private_dim) for m, mc in config.modalities.items()}
        )
        self.private_features = nn.ModuleDict(  # G_m
            {m: mlp(mc.private_dim, [mc.private_feature_dim], mc.private_feature_dim) for m, mc in config.modalities.items()}
        )
        self.fusion = FUSIONS[config.fusion](
            {m: mods[m].feature_dim for m in self.names}, config.joint_dim, list(config.fusion_hidden)
        )
        self.label_head = mlp(fy, list(config.label_hidden), config.num_classes) if config.num_classes else None

    # --- pieces, used by generation and attribution too ------------------------------------------
    def preprocess(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        """Stored dtypes -> float model inputs."""
        return {m: self.modalities[m].preprocess(x[m]) for m in self.names}

    def encode(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> Posteriors:
        """Preprocessed inputs and presence masks -> joint and private posteriors."""
        features = {m: self.modalities[m].encode(inputs[m]) for m in self.names}
        private = {m: DiagonalGaussian.from_params(self.private_heads[m](features[m])) for m in self.names}
        return Posteriors(joint=self.fusion(features, present), private=private)

    def decode_features(self, f_joint: Tensor, z_private: dict[str, Tensor], names: list[str] | None = None) -> dict[str, Tensor]:
        """F_y (B, Fy) and private latents -> likelihood parameters for `names` (default: all)."""
        out = {}
        for m in names or self.names:
            f_m = self.private_features[m](z_private[m])
            out[m] = self.modalities[m].decode(torch.cat([f_joint, f_m], dim=-1))
        return out

    def decode(self, z_joint: Tensor, z_private: dict[str, Tensor], names: list[str] | None = None) -> dict[str, Tensor]:
        """Latents -> likelihood parameters per modality."""
        return self.decode_features(self.joint_features(z_joint), z_private, names)

    def classify(self, z_joint: Tensor) -> Tensor:
        """Label logits from the joint factor only."""
        if self.label_head is None:
            raise ValueError("this model has no label head (model.num_classes = 0)")
        return self.label_head(self.joint_features(z_joint))

    def sample_prior(self, n: int, device: torch.device | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Draw joint and private latents from N(0, I)."""
        device = device or next(self.parameters()).device
        z_joint = torch.randn(n, self.config.joint_dim, device=device)
        z_private = {m: torch.randn(n, mc.private_dim, device=device) for m, mc in self.config.modalities.items()}
        return z_joint, z_private

    # --- training forward ----------------------------------------------------------------------
    def forward(self, batch: dict, sample: bool = True) -> ForwardOutput:
        """One pass over a batch dict (see mmvae.data.source); `sample=False` uses posterior means."""
        inputs = self.preprocess(batch["x"])
        present = batch["present"]
        joint_present = self.subsample_for_joint(present) if self.training else present
        post = self.encode(inputs, joint_present)
        z_joint = post.joint.rsample() if sample else post.joint.mu
        z_private = {m: (q.rsample() if sample else q.mu) for m, q in post.private.items()}
        f_joint = self.joint_features(z_joint)
        params = self.decode_features(f_joint, z_private)
        logits = self.label_head(f_joint) if self.label_head is not None else None
        return ForwardOutput(inputs, post, z_joint, z_private, params, logits)

    def subsample_for_joint(self, present: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hide each present modality from the joint encoder with chance joint_subset_drop, keeping at least one."""
        p = self.config.joint_subset_drop
        if p == 0 or len(self.names) < 2:
            return present
        mask = torch.stack([present[m] for m in self.names], dim=1)  # (B, M)
        kept = mask & (torch.rand(mask.shape, device=mask.device) >= p)
        # Where everything present was dropped, restore one present modality chosen at random.
        scores = torch.where(mask, torch.rand(mask.shape, device=mask.device), -1.0)
        fallback = torch.nn.functional.one_hot(scores.argmax(1), len(self.names)).bool() & mask
        kept = torch.where(kept.any(1, keepdim=True), kept, fallback)
        return {m: kept[:, i] for i, m in enumerate(self.names)}

    # --- bookkeeping -----------------------------------------------------------------------------
    def reconstruction_weights(self) -> dict[str, float]:
        """Per-modality reconstruction weights; "auto" = (smallest modality size) / (this modality's size)."""
        smallest = min(self.modalities[m].num_values for m in self.names)
        weights = {}
        for m, mc in self.config.modalities.items():
            weights[m] = smallest / self.modalities[m].num_values if mc.recon_weight == "auto" else float(mc.recon_weight)
        return weights
