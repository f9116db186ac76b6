"""Metrics of the built-in toy data, scored by its oracle readers (mmvae.data.toy.read_bars / read_wave), which
invert the generator: no classifier to train, known answers.

  coherence/a->b            b generated from Z_y of a alone (Z_b from the prior) shows a's class
  swap/private/<m>          decoded with another sample's Z_m: the own class is kept
  swap/joint/<m>            decoded with another sample's Z_y: that sample's class
  style_transfer/<m>/<f>    after the Z_m swap, factor f read from the output is nearer the style donor's true
                            value than the content donor's (chance 0.5)
  probe/joint, probe/private/<m>          logistic-regression probes of the class on Z_y / Z_m
  style_r2/<f>/private, style_r2/<f>/joint  linear-regression R² of a style factor from Z_m / from Z_y
  cycle/...                 the latent-cycle style score (mmvae.disentanglement.latent_cycle_metrics)
  mig/..., dci/..., sap/... MIG, DCI and SAP of Z_y against the class and of each Z_m against its modality's true
                            style factors (toy_disentanglement; the key scheme is in docs/disentanglement.md)
"""

from __future__ import annotations

import numpy as np
import torch

from mmvae.batch import batch_to, labels
from mmvae.data.loader import limited_batches
from mmvae.data.toy import STYLE_FACTORS, TOY_READERS
from mmvae.metrics import linear_probes
from mmvae.swap import encode_latents, encode_means

def _distance(factor: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a - b).abs()
    return torch.minimum(d, 2 * torch.pi - d) if factor == "phase" else d  # the phase is an angle


@torch.no_grad()
def generative_toy_metrics(model, source, limit: int, seed: int = 0) -> dict[str, float]:
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    names = [m for m in model.names if m in TOY_READERS]
    sums: dict[str, float] = {}
    count = 0

    def add(key: str, value: torch.Tensor) -> None:
        sums[key] = sums.get(key, 0.0) + float(value.float().sum())

    for batch in limited_batches(source, 512, limit, seed=seed):
        batch = batch_to(batch, device)
        y, meta = labels(batch), batch.get("meta", {})
        n = y.shape[0]
        donor = torch.roll(torch.arange(n, device=device), 1)
        z_all, z_priv, cond = encode_latents(model, batch)
        for a in names:
            z_a, _ = encode_means(model, batch, joint_from=[a])
            for b in names:
                if a != b:
                    prior = model.cross_private(z_priv)
                    out = model.mean(b, model.decode(z_a, prior, [b], cond)[b])
                    add(f"coherence/{a}->{b}", TOY_READERS[b](out)["class"] == y)
        for m in names:
            read = TOY_READERS[m]
            add(f"recon_accuracy/{m}", read(model.mean(m, model.decode(z_all, z_priv, [m], cond)[m]))["class"] == y)
            joint_swapped = read(model.mean(m, model.decode(z_all[donor], z_priv, [m],
                                                            {c: f[donor] for c, f in cond.items()})[m]))
            add(f"swap/joint/{m}", joint_swapped["class"] == y[donor])
            if m not in z_priv:
                continue
            swapped = read(model.mean(m, model.decode(z_all, {**z_priv, m: z_priv[m][donor]}, [m], cond)[m]))
            add(f"swap/private/{m}", swapped["class"] == y)
            for f in STYLE_FACTORS[m]:
                if f in meta:
                    truth = meta[f]
                    nearer = _distance(f, swapped[f], truth[donor]) < _distance(f, swapped[f], truth)
                    add(f"style_transfer/{m}/{f}", nearer)
        count += n
    metrics = {k: v / count for k, v in sums.items()}
    for group in ("coherence", "swap", "style_transfer"):
        values = [v for k, v in metrics.items() if k.startswith(group + "/")]
        if values:
            metrics[f"{group}/{'cross_mean' if group == 'coherence' else 'accuracy' if group == 'swap' else 'mean'}"] = \
                float(np.mean(values))
    metrics["generative_samples"] = count
    return metrics


def style_probes(model, train, test, train_limit: int, test_limit: int) -> dict[str, float]:
    """R² of each style factor regressed linearly on Z_m (should be high) and on Z_y (should be low)."""
    from sklearn.linear_model import LinearRegression

    def collect(source, limit):
        parts: dict[str, list] = {}
        device = next(model.parameters()).device
        with torch.no_grad():
            for batch in limited_batches(source, 512, limit):
                batch = batch_to(batch, device)
                z_joint, z_priv = encode_means(model, batch)
                for key, value in [("joint", z_joint), *z_priv.items(), *batch.get("meta", {}).items()]:
                    parts.setdefault(key, []).append(value.cpu())
        return {k: torch.cat(v).numpy() for k, v in parts.items()}

    tr, te = collect(train, train_limit), collect(test, test_limit)
    out = {}
    for m, factors in STYLE_FACTORS.items():
        for f in factors:
            if f not in tr:
                continue
            targets_tr, targets_te = tr[f], te[f]
            if f == "phase":  # regress (cos, sin) of the angle
                targets_tr = np.stack([np.cos(targets_tr), np.sin(targets_tr)], 1)
                targets_te = np.stack([np.cos(targets_te), np.sin(targets_te)], 1)
            for where in ("joint", m):
                if where in tr:
                    fit = LinearRegression().fit(tr[where], targets_tr)
                    out[f"style_r2/{f}/{'joint' if where == 'joint' else 'private'}"] = float(fit.score(te[where], targets_te))
    return out


@torch.no_grad()
def toy_disentanglement(model, source, limit: int, seed: int = 0) -> dict[str, float]:
    """MIG, DCI and SAP on posterior means of at most `limit` test samples (seeded, class-balanced; DCI and SAP
    fit on 70% of them and score the other 30%): Z_y (from every modality) against the class, keys
    `<metric>/joint/class`, and each Z_m against its modality's true style factors (mmvae.data.toy.STYLE_FACTORS),
    keys `<metric>/private/<m>/style`; `disentanglement_samples` is the number of samples."""
    from mmvae.disentanglement import factor_metrics

    from mmvae.mnist_svhn_metrics import collect

    data = collect(model, source, limit, seed, label_key="class")
    if "joint" not in data or len(data["class"]) < 10:
        return {}
    out = factor_metrics(data["joint"], {"class": data["class"]}, "joint/class", seed=seed)
    for m, factors in STYLE_FACTORS.items():
        present = [f for f in factors if f in data]
        if m in data and present:
            out.update(factor_metrics(data[m], {f: data[f] for f in present}, f"private/{m}/style", seed=seed))
    out["disentanglement_samples"] = int(len(data["class"]))
    return out


def toy_metrics(run, train, test, settings) -> dict[str, float]:
    """The toy entry's metrics for `mmvae evaluate` (and the demo)."""
    from mmvae.disentanglement import latent_cycle_metrics

    limit = settings.generative_limit if settings.limit is None else min(settings.limit, settings.generative_limit)
    metrics = generative_toy_metrics(run.model, test, limit, settings.seed)
    metrics.update(latent_cycle_metrics(run.model, test, limit, settings.seed))
    metrics.update(toy_disentanglement(run.model, test, min(limit, 2000), settings.seed))
    if train is not None:
        metrics.update(linear_probes(run.model, train, test, settings.probe_train, limit))
        metrics.update(style_probes(run.model, train, test, settings.probe_train, limit))
    return metrics
