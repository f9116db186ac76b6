"""Which force time steps and image pixels the contact head and the joint factor use (issue 12, item 5).

Integrated gradients (mmvae.interpret.integrated_gradients: Captum, zeros baseline in model-input space, posterior
means, eval mode) of two scalars per sample, summed within each modality's parts (`to_parts`: pixels for rgb_conv
and depth_conv, time steps for force_causal, values for the MLP kinds):
    contact   the contact head's logit (Z_y mean -> F_y, with the action features riding along unchanged)
    joint     s(x) = <mu_y(x) - mu_y(x0), u>, u = unit(mu_y(x) - mu_y(x0)): how far each part moves Z_y
              (interpret's ig/joint)
`summary` gives per modality the mean |attribution| per part over the samples (a force profile over the 32 readings,
an image heat map) and each modality's share of the total |attribution|; the completeness gap says how well the
attributions add up to f(x) - f(x0). `scripts/robot_attribution.py RUN` writes them as JSON and a picture.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmvae.heads import HeadInput
from mmvae.interpret import AttributionSettings, Completeness, encode_means, input_attributions, integrated_gradients


def head_logit_attributions(model, batch: dict, head: str = "contact", steps: int = 32
                            ) -> tuple[dict[str, Tensor], Completeness]:
    """IG of a scalar head output (contact or alignment logit) w.r.t. every observed float input: ({m: (B, P)}, gap)."""
    if model.training:
        raise ValueError("attribution needs the model in eval mode (call model.eval())")
    enc = encode_means(model, batch)
    names = [m for m in model.names if enc.inputs[m].is_floating_point()]
    others = [m for m in model.names if m not in names]  # inputs that cannot be interpolated ride along
    h = model.heads[head]
    conds = list(h.config.conditioned_on)
    present = torch.stack([enc.present[m] for m in model.names], dim=1)  # (B, M)

    def forward(*args: Tensor) -> Tensor:  # Captum repeats the extra arguments with the interpolation steps
        k, j = len(names), len(others)
        inputs = dict(zip(names, args[:k])) | dict(zip(others, args[k:k + j]))
        flags = args[k + j]
        cond = dict(zip(conds, args[k + j + 1:]))
        for c in model.conditions:  # condition inputs are not attributed: any value serves, its features are fixed
            inputs.setdefault(c, torch.zeros(flags.shape[0], *enc.inputs[c].shape[1:], device=flags.device))
        post = model.encode(inputs, {m: flags[:, i] for i, m in enumerate(model.names)})
        mu = post.joint.mean
        out = h(HeadInput(mu, model.joint_features(mu), {}, post.encodings, cond, {}))
        return out.reshape(out.shape[0])

    xs = tuple(enc.inputs[m] for m in names)
    extra = (*(enc.inputs[m] for m in others), present, *(enc.cond[c] for c in conds))
    attrs, gap = integrated_gradients(forward, xs, tuple(torch.zeros_like(x) for x in xs), None, extra, steps)
    return {m: model.modalities[m].to_parts(a) for m, a in zip(names, attrs)}, gap


def joint_attributions(model, batch: dict, steps: int = 32) -> tuple[dict[str, Tensor], Completeness]:
    """interpret's ig/joint per observed modality: ({m: (B, P)}, gap)."""
    settings = AttributionSettings(ig_steps=steps, deletion=False)
    maps, gaps = input_attributions(model, encode_means(model, batch), None, settings)
    return {m: kinds["ig/joint"] for m, kinds in maps.items()}, gaps["ig/joint"]


def summary(maps: dict[str, Tensor], model) -> dict[str, Any]:
    """Per modality: mean |attribution| per part (shaped as parts_shape), its share of the total, the top parts."""
    totals = {m: float(v.abs().sum()) for m, v in maps.items()}
    grand = sum(totals.values()) or 1.0
    out: dict[str, Any] = {}
    for m, v in maps.items():
        mean = v.abs().mean(0)
        shape = model.modalities[m].parts_shape
        top = torch.argsort(mean, descending=True)[:10]
        out[m] = {"share": totals[m] / grand, "mean_abs_per_part": mean.reshape(shape).tolist(),
                  "parts_shape": list(shape), "top_parts": top.tolist()}
    return out


def robot_attribution_report(model, batch: dict, steps: int = 32, head: str = "contact") -> dict[str, Any]:
    """Both attributions for one batch: {"contact": {...}, "joint": {...}} with summaries and completeness."""
    report: dict[str, Any] = {"samples": int(next(iter(batch["present"].values())).shape[0]), "ig_steps": steps}
    jobs = [("joint", lambda: joint_attributions(model, batch, steps))]
    if head in getattr(model, "heads", {}):
        jobs.insert(0, (head, lambda: head_logit_attributions(model, batch, head, steps)))
    for key, job in jobs:
        maps, gap = job()
        report[key] = {"modalities": summary(maps, model), "completeness_relative_error": gap.relative_error,
                       "completeness_ok": gap.ok}
    return report
