"""The Python API: a small surface over configs, models and run folders (docs/python_api.md).

(Names avoid the package's module names: `mmvae.swap` and `mmvae.config` are modules.)

    import mmvae
    cfg = mmvae.make_config("toy", ["train.epochs=2"])        # a path, a shipped name, or a dict
    model, summary = mmvae.fit(cfg)                       # in memory; fit(cfg, "runs/x") writes a run folder
    z = mmvae.encode(model, {"bars": images})             # presence inferred: "wave" is absent here
    waves = mmvae.generate(model, {"bars": images}, "wave")   # cross-modal: Z_y from bars, Z_wave from the prior
    swapped = mmvae.swap_factors(model, content={"bars": a, "wave": w}, style={"bars": b, "wave": w2}, modality="bars")
    run = mmvae.load("runs/x")                            # config, model (eval mode), step
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmvae.config import ExperimentConfig, config_from_dict, load_config
from mmvae.families import build_model
from mmvae.families.base import MultimodalModel
from mmvae.runs import LoadedRun, load_run


@dataclass
class Latents:
    joint: Tensor  # (B, Dy) posterior mean of Z_y
    private: dict[str, Tensor]  # (B, Dm) posterior means of the private factors of the modalities given
    cond: dict[str, Tensor]  # condition features (B, F_c), for models with condition modalities


def make_config(source: str | Path | dict | ExperimentConfig, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """An ExperimentConfig from a YAML path, a shipped config's name, a dict or a config (overrides applied)."""
    if isinstance(source, ExperimentConfig):
        source = source.model_dump(mode="json")
    if isinstance(source, dict):
        from mmvae.config import apply_override

        tree = dict(source)
        for o in overrides:
            apply_override(tree, o)
        return config_from_dict(tree)
    return load_config(source, overrides)


def build(source: str | Path | dict | ExperimentConfig) -> MultimodalModel:
    """The (untrained) model of a config; seed it yourself with torch.manual_seed for reproducible weights."""
    return build_model(make_config(source).model)


def fit(source: str | Path | dict | ExperimentConfig, run_dir: str | Path | None = None,
        resume: bool = False) -> tuple[MultimodalModel, dict]:
    """Train; returns (model in eval mode, summary). run_dir None: nothing is written anywhere."""
    from mmvae import distributed
    from mmvae.train import Trainer

    cfg = make_config(source)
    try:
        trainer = Trainer(cfg, Path(run_dir) if run_dir is not None else None, resume=resume)
        summary = trainer.fit()
    finally:
        distributed.teardown()
    return trainer.model.eval(), summary


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """A run folder's config, model (eval mode) and step."""
    return load_run(run_dir, device)


def _batch(model: MultimodalModel, x: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """A batch from raw inputs of some modalities: the ones given are present, the others absent (zero filler)."""
    unknown = sorted(set(x) - set(model.config.modalities))
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; the model has {sorted(model.config.modalities)}")
    if not x:
        raise ValueError("give at least one modality")
    device = next(model.parameters()).device
    n = next(iter(x.values())).shape[0]
    full, present = {}, {}
    for m, mc in model.config.modalities.items():
        if m in x:
            full[m], present[m] = x[m].to(device), torch.ones(n, dtype=torch.bool, device=device)
        else:
            full[m], present[m] = torch.zeros(n, *mc.shape, device=device), torch.zeros(n, dtype=torch.bool, device=device)
    missing_conditions = [c for c in model.conditions if c not in x]
    if missing_conditions:
        raise ValueError(f"the model is conditioned on {missing_conditions}: give them in x")
    batch: dict[str, Any] = {"x": full, "present": present}
    if mask:
        batch["mask"] = {m: t.to(device) for m, t in mask.items()}
    return batch


@torch.no_grad()
def encode(model: MultimodalModel, x: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> Latents:
    """Posterior means from raw inputs (stored dtypes, e.g. uint8 images); Z_y from the modalities given."""
    post = model.posteriors(_batch(model, x, mask))
    return Latents(post.joint.mean, {m: q.mu for m, q in post.private.items() if m in x},
                   {c: post.encodings[c].h for c in model.conditions})


@torch.no_grad()
def decode(model: MultimodalModel, latents: Latents, names: list[str] | None = None, seed: int | None = None) -> dict[str, Tensor]:
    """Means in modelled space of `names` (default: every observed modality); private factors missing from
    `latents` are drawn from the prior (with `seed`)."""
    names = names or model.names
    n = latents.joint.shape[0]
    gen = torch.Generator(device=latents.joint.device)
    if seed is not None:
        gen.manual_seed(seed)
    private = dict(latents.private)
    for m in names:
        dim = model.config.modalities[m].private_dim
        if dim and m not in private:
            private[m] = torch.randn(n, dim, generator=gen, device=latents.joint.device)
    params = model.decode(latents.joint, private, names, latents.cond)
    return {m: model.mean(m, params[m]) for m in names}


def generate(model: MultimodalModel, given: dict[str, Tensor], target: str, seed: int | None = None) -> Tensor:
    """Modality `target` generated from the others: Z_y inferred from `given`, the target's style from the prior."""
    z = encode(model, {m: t for m, t in given.items() if m != target})
    return decode(model, Latents(z.joint, {}, z.cond), [target], seed)[target]


def swap_factors(model: MultimodalModel, content: dict[str, Tensor], style: dict[str, Tensor], modality: str) -> Tensor:
    """`modality` decoded from the joint factor of `content` and the private factor of `style` (same batch size)."""
    a, b = encode(model, content), encode(model, style)
    if modality not in b.private:
        raise ValueError(f"style must include {modality!r} (its private factor comes from there)")
    return decode(model, Latents(a.joint, {modality: b.private[modality]}, a.cond), [modality])[modality]
