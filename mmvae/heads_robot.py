"""Self-supervised robot heads (Lee et al., ICRA 2019; docs/robot.md "The model side"), each with named loss terms.

    flow        FlowNet-style decoder: [F_y, action features] tiled at the deepest skip's size (2 x 2), then
                transposed convs (k4 s2) up to `predict_size` (32), each level concatenated with the RGB encoder's
                skip map of that size; a 3 x 3 conv predicts flow (2, in pixels of the full image) and the
                flow-mask logit (1) at 32 x 32, bilinearly upsampled to the image size (128).
                ssl/flow       EPE: mean over pixels of ||flow_hat - flow||_2, in pixels      (targets["flow"])
                ssl/flow_mask  BCE of the mask logit against targets["flow_mask"], mean over pixels (option mask)
    contact     MLP([F_y, action]) -> logit; ssl/contact = BCE against targets["contact_next"]
    alignment   MLP(F_y) -> logit; ssl/alignment = BCE against targets["aligned"] over every row: aligned and
                misaligned rows come mixed in one batch and go through one forward. reduction "balanced" (default)
                is Lee et al.'s 0.5 x mean over the aligned rows + 0.5 x mean over the misaligned rows; "mean" is
                the plain mean over all rows (the same in expectation with negative_fraction 0.5).
    next_pose   MLP([F_y, action]) -> 4; ssl/next_pose = MSE (mean over the 4 values) of (prediction - target)
                x scale against targets[target] (`pose_delta`, default, or `pose_next`; scale 1 by default).
    Options beyond Lee et al. (off by default): flow `condition_every_level` (the projected [F_y, action] tiled at
    every upsampled level too), alignment `reads` (modalities' encoder features beside F_y), next_pose `scale`.

Which rows count. Misaligned rows carry another moment's force and proprio (the data source's docstring), so by
default (`aligned_only: true`) flow, flow mask, contact and next pose are averaged over the aligned rows only
(rows with targets["aligned"] = 1 and the source modality present): the term is the mean per aligned sample,
0 (and no gradient) when a batch has none. The alignment head uses every row. `aligned_only: false` averages
over every present row (a batch without "aligned" targets is treated as all aligned).

Outputs: flow -> {"flow": (B, 2, H, W), "mask_logits": (B, 1, H, W)}; contact and alignment -> logits (B,);
next_pose -> (B, 4). `mmvae.robot_metrics` scores them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mmvae.batch import Batch
from mmvae.config import ConfigError, HeadConfig
from mmvae.heads import HEADS, Head, HeadInput, ModelDims
from mmvae.modalities.robot import LEAK, leaky_mlp


def row_mean(per_sample: Tensor, weight: Tensor) -> Tensor:
    """Weighted mean over rows, sum(w x) / sum(w); 0 (with zero gradient) when no row counts. (B,), (B,) -> ()."""
    w = weight.to(per_sample.dtype)
    return (torch.where(w > 0, per_sample, torch.zeros_like(per_sample)) * w).sum() / w.sum().clamp_min(1.0)


def end_point_error(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample EPE: mean over pixels of the Euclidean distance between flow vectors. (B, 2, H, W) x2 -> (B,)."""
    return torch.linalg.vector_norm(pred - target, dim=1).flatten(1).mean(1)


def bce_per_sample(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy with logits, averaged over every non-batch axis: (B, ...) -> (B,)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return bce.flatten(1).mean(1) if bce.dim() > 1 else bce


class _RobotHead(Head):
    """Shared: which rows a term counts (aligned_only) and the [F_y, conditions] input."""

    def row_weight(self, batch: Batch, source: str | None = None) -> Tensor:
        """1 for rows the term averages over: present (source, if given) and, with aligned_only, aligned."""
        targets = batch.get("targets", {})
        n = next(iter(batch["present"].values())).shape[0]
        device = next(iter(batch["present"].values())).device
        weight = torch.ones(n, device=device)
        if source is not None:
            weight = weight * batch["present"][source].float()
        if getattr(self.options, "aligned_only", False) and "aligned" in targets:
            weight = weight * (targets["aligned"].float() > 0.5).float()
        return weight

    def joint_input(self, inp: HeadInput) -> Tensor:
        parts = [inp.f_joint, *inp.cond.values()]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class FlowOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = "image"  # the modality whose skips are read (an rgb_conv / depth_conv)
    channels: list[int] = Field(default_factory=lambda: [128, 64, 32, 16], min_length=1)  # one per upsampling
    predict_size: int = Field(default=32, ge=2)  # flow and mask are predicted at this size, then upsampled
    mask: bool = True  # also predict the flow mask (ssl/flow_mask)
    aligned_only: bool = True
    target: str = "flow"
    mask_target: str = "flow_mask"
    # Also join the projected [F_y, action] vector, tiled, to every upsampled level (not only the deepest 2 x 2 map),
    # so the action that decides the motion is at hand where the flow is predicted. false: Lee et al.'s decoder.
    condition_every_level: bool = False


class FlowHead(_RobotHead):
    """Optical flow from t to t+1 and its mask, from the RGB skips and [F_y, action] (see the module docstring)."""

    kind = "flow"
    Options = FlowOptions

    def __init__(self, name: str, config: HeadConfig, dims: ModelDims):
        super().__init__(name, config, dims)
        o = self.options
        skips = dims.skip_shapes.get(o.source)
        if not skips:
            raise ConfigError(f"head '{name}' (kind flow): option source {o.source!r} names no modality with skip "
                              f"features (an rgb_conv or depth_conv); with skips: {sorted(dims.skip_shapes)}")
        sizes = [s[1] for s in skips]
        if o.predict_size not in sizes:
            raise ConfigError(f"head '{name}' (kind flow): predict_size {o.predict_size} is not the size of a skip map "
                              f"of {o.source!r} (sizes {sizes})")
        start = len(skips) - 1  # the deepest map
        stop = sizes.index(o.predict_size)
        steps = start - stop
        if steps < 1 or len(o.channels) != steps:
            raise ConfigError(f"head '{name}' (kind flow): {steps} upsampling step(s) from {sizes[start]} to "
                              f"{o.predict_size} need as many `channels`, got {o.channels}")
        self.start, self.stop, self.skips = start, stop, skips
        self.image_size = (skips[0][1] * 2, skips[0][2] * 2)
        joint_in = dims.joint_feature_dim + self.cond_dim(dims)
        self.project = nn.Sequential(nn.Linear(joint_in, o.channels[0]), nn.LeakyReLU(LEAK))  # tiled at the start
        tiled = o.channels[0] if o.condition_every_level else 0  # width of the vector joined to each upper level
        ups, prev = [], o.channels[0] + skips[start][0]
        for i, level in enumerate(range(start - 1, stop - 1, -1)):
            ch = o.channels[i]
            ups.append(nn.Sequential(nn.ConvTranspose2d(prev, ch, 4, 2, 1), nn.LeakyReLU(LEAK)))
            prev = ch + skips[level][0] + tiled
        self.ups = nn.ModuleList(ups)
        self.predict = nn.Conv2d(prev, 3 if o.mask else 2, 3, 1, 1)

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        skips = inp.encodings[self.options.source].skips
        deepest = skips[self.start]
        vector = self.project(self.joint_input(inp))[:, :, None, None]  # (B, C0, 1, 1)
        x = torch.cat([vector.expand(-1, -1, *deepest.shape[2:]), deepest], dim=1)
        for up, level in zip(self.ups, range(self.start - 1, self.stop - 1, -1)):
            parts = [up(x), skips[level]]
            if self.options.condition_every_level:
                parts.append(vector.expand(-1, -1, *skips[level].shape[2:]))
            x = torch.cat(parts, dim=1)
        low = self.predict(x)  # (B, 2 [+1], predict_size, predict_size)
        full = F.interpolate(low, size=self.image_size, mode="bilinear", align_corners=False)
        out = {"flow": full[:, :2], "flow_low": low[:, :2]}
        if self.options.mask:
            out["mask_logits"] = full[:, 2:3]
        return out

    def term_names(self) -> list[str]:
        return ["ssl/flow", *(["ssl/flow_mask"] if self.options.mask else [])]

    def terms(self, output: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        o = self.options
        w = self.row_weight(batch, o.source)
        terms = {"ssl/flow": row_mean(end_point_error(output["flow"].float(), batch["targets"][o.target].float()), w)}
        if o.mask:
            terms["ssl/flow_mask"] = row_mean(bce_per_sample(output["mask_logits"], batch["targets"][o.mask_target]), w)
        return terms


class ContactOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = "contact_next"
    aligned_only: bool = True
    pos_weight: float | None = Field(default=None, gt=0)  # BCE weight of positive rows (contact is imbalanced)


class _LogitHead(_RobotHead):
    """One logit per row from MLP([F_y, conditions, modality features]) (contact, alignment)."""

    def __init__(self, name: str, config: HeadConfig, dims: ModelDims):
        super().__init__(name, config, dims)
        reads = self.feature_reads()
        unknown = [m for m in reads if m not in dims.feature_dims]
        if unknown:
            raise ConfigError(f"head '{name}' (kind {self.kind}): option reads names {unknown}, which are not "
                              f"modalities; modalities: {sorted(dims.feature_dims)}")
        width = dims.joint_feature_dim + self.cond_dim(dims) + sum(dims.feature_dims[m] for m in reads)
        self.net = leaky_mlp(width + self.extra_width(), list(config.hidden), 1)

    def feature_reads(self) -> list[str]:
        """Modalities whose encoder features (Encoding.h) are read beside F_y and the conditions."""
        return []

    def extra_width(self) -> int:
        """Width of any further inputs a subclass joins to the MLP's input."""
        return 0

    def forward(self, inp: HeadInput) -> Tensor:
        parts = [self.joint_input(inp), *(inp.encodings[m].h for m in self.feature_reads())]
        return self.net(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]).squeeze(-1)


class ContactHead(_LogitHead):
    """Will the next step be in contact? MLP([F_y, action]) -> a logit; ssl/contact (BCE)."""

    kind = "contact"
    Options = ContactOptions

    def term_names(self) -> list[str]:
        return ["ssl/contact"]

    def terms(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        target = batch["targets"][self.options.target].float()
        pw = self.options.pos_weight
        bce = F.binary_cross_entropy_with_logits(
            output.float(), target, reduction="none",
            pos_weight=None if pw is None else torch.tensor(pw, device=output.device))
        return {"ssl/contact": row_mean(bce, self.row_weight(batch))}


class AlignmentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = "aligned"
    reduction: Literal["balanced", "mean"] = "balanced"
    # Modalities whose encoder features (Encoding.h) the head reads beside F_y. A product of experts averages
    # conflicting experts into one posterior, which hides the conflict; the unimodal features still show it.
    # [] (default): F_y only, as Lee et al.
    reads: list[str] = Field(default_factory=list)
    # > 0 (with two or more `reads`): each read modality's features are also projected linearly to this width, and
    # for every pair (a, b) the squared difference (P_a h_a - P_b h_b)^2 joins the input: a learnt common space in
    # which aligned modalities agree, so a mismatch is a distance rather than a function the MLP must discover.
    compare_dim: int = Field(default=0, ge=0)


class AlignmentHead(_LogitHead):
    """Are force and proprio from the same moment as the image? MLP(F_y) -> a logit; ssl/alignment (BCE) over the
    aligned and misaligned rows of one batch, in one forward."""

    kind = "alignment"
    Options = AlignmentOptions

    def __init__(self, name: str, config: HeadConfig, dims: ModelDims):
        super().__init__(name, config, dims)  # checks `reads`
        o = self.options
        if o.compare_dim and not self.pairs:
            raise ConfigError(f"head '{name}' (kind alignment): option compare_dim needs two or more modalities in "
                              f"reads, got {o.reads}")
        self.project = nn.ModuleDict({m: nn.Linear(dims.feature_dims[m], o.compare_dim) for m in o.reads}
                                     if self.pairs else {})

    @property
    def pairs(self) -> list[tuple[str, str]]:
        reads = list(self.options.reads)
        return [(a, b) for i, a in enumerate(reads) for b in reads[i + 1:]] if self.options.compare_dim else []

    def feature_reads(self) -> list[str]:
        return list(self.options.reads)

    def extra_width(self) -> int:
        return self.options.compare_dim * len(self.pairs)

    def forward(self, inp: HeadInput) -> Tensor:
        if not self.pairs:
            return super().forward(inp)
        common = {m: p(inp.encodings[m].h) for m, p in self.project.items()}  # (B, k) each
        parts = [self.joint_input(inp), *(inp.encodings[m].h for m in self.feature_reads()),
                 *((common[a] - common[b]) ** 2 for a, b in self.pairs)]
        return self.net(torch.cat(parts, dim=-1)).squeeze(-1)

    def term_names(self) -> list[str]:
        return ["ssl/alignment"]

    def terms(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        target = batch["targets"][self.options.target].float()
        bce = F.binary_cross_entropy_with_logits(output.float(), target, reduction="none")
        present = self.row_weight(batch)  # aligned_only does not apply: every row
        if self.options.reduction == "mean":
            return {"ssl/alignment": row_mean(bce, present)}
        pos, neg = present * (target > 0.5).float(), present * (target <= 0.5).float()
        return {"ssl/alignment": 0.5 * row_mean(bce, pos) + 0.5 * row_mean(bce, neg)}


class NextPoseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: Literal["pose_delta", "pose_next"] = "pose_delta"
    aligned_only: bool = True
    dims: int = Field(default=4, ge=1)  # values of the pose (xyz, yaw)
    # The MSE is taken on (prediction - target) x scale (one number, or one per value): pose deltas are millimetres
    # and hundredths of a radian, so with scale 1 the term is ~1e-4 and hardly trains. The head's output stays
    # in the target's units (the metrics compare it with the target as is).
    scale: float | list[float] = 1.0


class NextPoseHead(_RobotHead):
    """The next end-effector pose (or its change): MLP([F_y, action]) -> (B, dims); ssl/next_pose (MSE)."""

    kind = "next_pose"
    Options = NextPoseOptions

    def __init__(self, name: str, config: HeadConfig, dims: ModelDims):
        super().__init__(name, config, dims)
        o = self.options
        scale = [o.scale] * o.dims if isinstance(o.scale, (int, float)) else list(o.scale)
        if len(scale) != o.dims or min(scale) <= 0:
            raise ConfigError(f"head '{name}' (kind next_pose): option scale must be one positive number or {o.dims} "
                              f"of them, got {o.scale}")
        self.net = leaky_mlp(dims.joint_feature_dim + self.cond_dim(dims), list(config.hidden), o.dims)
        self.register_buffer("scale", torch.tensor(scale), persistent=False)  # (dims,)

    def forward(self, inp: HeadInput) -> Tensor:
        return self.net(self.joint_input(inp)) / self.scale  # the net works in scaled units

    def term_names(self) -> list[str]:
        return ["ssl/next_pose"]

    def terms(self, output: Tensor, batch: Batch) -> dict[str, Tensor]:
        target = batch["targets"][self.options.target].float()
        mse = (((output.float() - target) * self.scale) ** 2).mean(1)
        return {"ssl/next_pose": row_mean(mse, self.row_weight(batch))}


ROBOT_HEADS: dict[str, type[Head]] = {
    FlowHead.kind: FlowHead,
    ContactHead.kind: ContactHead,
    AlignmentHead.kind: AlignmentHead,
    NextPoseHead.kind: NextPoseHead,
}
HEADS.update(ROBOT_HEADS)
