"""The factorized multimodal VAE (Tsai et al., ICLR 2019): one joint factor, one private factor per modality.

    x_m --encoder_m--> h_m --+--> fusion(h, present) --> q(Z_y | x_present)
                             +--> private head_m    --> q(Z_m | x_m)          (modalities with private_dim > 0)
    c   --encoder_c--> h_c   (condition modalities: fed to heads and to the decoders that list them)
    F_y = G_y(Z_y), F_m = G_m(Z_m);  x̂_m = decoder_m(F_y, F_m, conditions);  heads(F_y, ...), e.g. ŷ = label(F_y)

Every parameter is used inside `forward`, which is what DDP needs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmvae.batch import Batch
from mmvae.config import HeadConfig, ModelConfig
from mmvae.families.base import ForwardOutput, MultimodalModel, Posteriors
from mmvae.fusion import FUSIONS
from mmvae.heads import Head, HeadInput, LabelHead, ModelDims, build_head
from mmvae.latent import DiagonalGaussian, JointPosterior
from mmvae.modalities import DecoderInput, Encoding, Modality, build_modality
from mmvae.nets import mlp


class FactorizedMultimodalVAE(MultimodalModel):
    """Model of `ModelConfig`; modalities are dict keys throughout."""

    family = "factorized"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        fy = config.joint_feature_dim
        mcs = config.modalities
        self.private_names = [m for m in self.names if mcs[m].private_dim > 0]
        # Construction order (and so the initial weights of a seed) is that of the first version.
        self.joint_features = mlp(config.joint_dim, [fy], fy)  # G_y
        mods: dict[str, Modality] = {}
        cond_dims: dict[str, int] = {}
        for name, mc in mcs.items():
            if mc.role == "condition":
                mods[name] = build_modality(name, mc, decoder_in=None)
                cond_dims[name] = mods[name].feature_dim
        for name, mc in mcs.items():
            if mc.role == "observed":
                private_in = mc.private_feature_dim if mc.private_dim > 0 else 0
                cond_in = sum(cond_dims[c] for c in mc.conditioned_on)
                mods[name] = build_modality(name, mc, decoder_in=fy + private_in + cond_in)
        self.modalities = nn.ModuleDict({m: mods[m] for m in mcs})
        self.private_heads = nn.ModuleDict(
            {m: nn.Linear(mods[m].feature_dim, 2 * mcs[m].private_dim) for m in self.private_names}
        )
        self.private_features = nn.ModuleDict(  # G_m
            {m: mlp(mcs[m].private_dim, [mcs[m].private_feature_dim], mcs[m].private_feature_dim)
             for m in self.private_names}
        )
        self.fusion = FUSIONS[config.fusion](
            {m: mods[m].feature_dim for m in self.names}, config.joint_dim, list(config.fusion_hidden)
        )
        self.dims = ModelDims(
            joint_dim=config.joint_dim, joint_feature_dim=fy,
            private_feature_dims={m: mcs[m].private_feature_dim for m in self.private_names},
            feature_dims={m: mods[m].feature_dim for m in mcs},
            skip_shapes={m: list(mods[m].skip_shapes) for m in mcs if hasattr(mods[m], "skip_shapes")},
            private_dims={m: mcs[m].private_dim for m in self.private_names},
        )
        heads: dict[str, Head] = {}
        if config.num_classes:
            label = HeadConfig(kind="label", hidden=list(config.label_hidden), options={"num_classes": config.num_classes})
            heads["label"] = LabelHead("label", label, self.dims)
        for name, hc in config.heads.items():
            heads[name] = build_head(name, hc, self.dims)
        self.heads = nn.ModuleDict(heads)

    # --- pieces, used by generation and attribution too ------------------------------------------
    def encode_modalities(self, inputs: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> dict[str, Encoding]:
        """Every modality's encoding (observed and conditions), in config order."""
        mask = mask or {}
        out = {}
        for m in self.config.modalities:
            mod = self.modalities[m]
            enc = mod.encode(inputs[m]) if mask.get(m) is None else mod.encode(inputs[m], mask[m])
            out[m] = enc if isinstance(enc, Encoding) else Encoding(enc)  # kinds of the first interface: a tensor
        return out

    def fuse(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> JointPosterior:
        """q(Z_y | present) from the observed modalities' features (B, feature_dim)."""
        return self.fusion({m: features[m] for m in self.names}, present)

    def encode(self, inputs: dict[str, Tensor], present: dict[str, Tensor],
               mask: dict[str, Tensor] | None = None) -> Posteriors:
        """Preprocessed inputs and presence masks -> joint and private posteriors (and every encoding)."""
        encodings = self.encode_modalities(inputs, mask)
        private = {m: DiagonalGaussian.from_params(self.private_heads[m](encodings[m].h)) for m in self.private_names}
        joint = self.fuse({m: encodings[m].h for m in self.names}, present)
        return Posteriors(joint=joint, private=private, encodings=encodings)

    def condition_features(self, encodings: dict[str, Encoding]) -> dict[str, Tensor]:
        """{condition: (B, F_c)} from the encodings."""
        return {c: encodings[c].h for c in self.conditions}

    def private_feature(self, name: str, z: Tensor) -> Tensor:
        """F_m = G_m(Z_m): (B, Dm) -> (B, Fm)."""
        return self.private_features[name](z)

    def decode_from_features(self, name: str, f_joint: Tensor, f_private: Tensor | None,
                             cond: dict[str, Tensor] | None = None) -> Tensor:
        """Likelihood parameters of modality `name` from features F_y (B, Fy) and F_m (B, Fm) (None without a
        private factor), plus the conditions its decoder lists."""
        wanted = self.config.modalities[name].conditioned_on
        cond = cond or {}
        missing = [c for c in wanted if c not in cond]
        if missing:
            raise ValueError(f"decoding '{name}' needs the condition(s) {missing}; pass cond={{name: features}}")
        return self.modalities[name].decode(DecoderInput(joint=f_joint, private=f_private,
                                                         cond={c: cond[c] for c in wanted}))

    def decode_features(self, f_joint: Tensor, z_private: dict[str, Tensor], names: list[str] | None = None,
                        cond: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """F_y (B, Fy) and private latents -> likelihood parameters for `names` (default: all observed)."""
        out = {}
        for m in names or self.names:
            f_m = self.private_features[m](z_private[m]) if m in self.private_features else None
            out[m] = self.decode_from_features(m, f_joint, f_m, cond)
        return out

    def decode(self, z_joint: Tensor, z_private: dict[str, Tensor], names: list[str] | None = None,
               cond: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Latents -> likelihood parameters per modality."""
        return self.decode_features(self.joint_features(z_joint), z_private, names, cond)

    @property
    def label_head(self) -> LabelHead | None:
        return self.heads["label"] if "label" in self.heads else None

    @property
    def has_label_head(self) -> bool:
        return "label" in self.heads

    def classify(self, z_joint: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
        """Label logits from the joint factor only."""
        if "label" not in self.heads:
            raise ValueError("this model has no label head (model.num_classes = 0)")
        head = self.heads["label"]
        return head.logits(self.joint_features(z_joint), {c: cond[c] for c in head.config.conditioned_on} if cond else None)

    def sample_prior(self, n: int, device: torch.device | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Draw joint and private latents from N(0, I)."""
        device = device or next(self.parameters()).device
        z_joint = torch.randn(n, self.config.joint_dim, device=device)
        z_private = {m: torch.randn(n, self.config.modalities[m].private_dim, device=device) for m in self.private_names}
        return z_joint, z_private

    # --- training forward ----------------------------------------------------------------------
    def forward(self, batch: Batch, sample: bool = True) -> ForwardOutput:
        """One pass over a batch (see mmvae.batch); `sample=False` uses posterior means."""
        masks = batch.get("mask", {})
        inputs = self.preprocess(batch["x"], masks)
        present = batch["present"]
        joint_present = self.subsample_for_joint(present) if self.training else present
        post = self.encode(inputs, joint_present, masks)
        z_joint = post.joint.rsample() if sample else post.joint.mean
        z_private = {m: (q.rsample() if sample else q.mu) for m, q in post.private.items()}
        f_joint = self.joint_features(z_joint)
        cond = self.condition_features(post.encodings)
        f_private = {m: self.private_features[m](z) for m, z in z_private.items()}
        params = {m: self.decode_from_features(m, f_joint, f_private.get(m), cond) for m in self.names}
        heads = self.run_heads(z_joint, f_joint, f_private, post.encodings, cond, batch, z_private,
                               {m: q.mu for m, q in post.private.items()})
        return ForwardOutput(inputs, post, z_joint, z_private, params, heads, f_joint, f_private, cond, masks)

    def run_heads(self, z_joint: Tensor, f_joint: Tensor, f_private: dict[str, Tensor],
                  encodings: dict[str, Encoding], cond: dict[str, Tensor], batch: Batch,
                  z_private: dict[str, Tensor] | None = None,
                  private_mean: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Every head's output, by name; each head sees the condition features it lists in `conditioned_on`.
        `z_private` (the private latents the decoders read) and `private_mean` (their posterior means) reach the
        heads that read the private factors (e.g. the private adversary)."""
        head_in = HeadInput(z_joint, f_joint, f_private, encodings, {}, batch, z_private or {}, private_mean or {})
        heads = {}
        for name, head in self.heads.items():
            head_in.cond = {c: cond[c] for c in head.config.conditioned_on}
            heads[name] = head(head_in)
        return heads

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
        for m in self.names:
            mc = self.config.modalities[m]
            weights[m] = smallest / self.modalities[m].num_values if mc.recon_weight == "auto" else float(mc.recon_weight)
        return weights

    def term_scales(self) -> dict[str, float]:
        return {f"recon/{m}": w for m, w in self.reconstruction_weights().items()}

    @classmethod
    def upgrade_state_dict(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Version-1 weights kept the label head at `label_head.*`; it is the head `heads.label` now."""
        return {("heads.label.net." + k[len("label_head."):] if k.startswith("label_head.") else k): v
                for k, v in state.items()}
