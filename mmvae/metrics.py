"""Generative and representation metrics in the style of the MNIST–SVHN literature.

Array-level functions (known answers, easy to test) come first; `generative_metrics` and `linear_probes`
apply them to a model and a batch source, scoring generated images with frozen classifiers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from mmvae.classifiers import predict
from mmvae.data.loader import limited_batches
from mmvae.batch import batch_to, labels
from mmvae.data.source import BatchSource
from mmvae.families.base import MultimodalModel
from mmvae.swap import encode_latents, encode_means


# --- on arrays ------------------------------------------------------------------------------------
def coherence(predicted: Tensor, target: Tensor) -> float:
    """Fraction of generated samples whose classified label is the intended one."""
    return float((predicted == target).float().mean())


def agreement(predictions: list[Tensor]) -> float:
    """Fraction of samples on which every modality's classifier reads the same label (joint coherence)."""
    stacked = torch.stack(predictions)
    return float((stacked == stacked[0]).all(0).float().mean())


def image_style(x: Tensor) -> Tensor:
    """Per-channel mean and standard deviation (colour, brightness, contrast, ink): (N, C, H, W) -> (N, 2C)."""
    flat = x.float().flatten(2)
    return torch.cat([flat.mean(-1), flat.std(-1)], dim=1)


def style_preservation(swapped: Tensor, style_donor: Tensor, content_donor: Tensor) -> float:
    """Fraction of swaps whose image style is nearer the style donor's than the content donor's (chance 0.5)."""
    s = image_style(swapped)
    to_style = (s - image_style(style_donor)).norm(dim=1)
    to_content = (s - image_style(content_donor)).norm(dim=1)
    return float((to_style < to_content).float().mean())


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int = 0) -> float:
    """Test accuracy of a logistic-regression probe (standardised features)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


# --- on a model -----------------------------------------------------------------------------------
@torch.no_grad()
def generative_metrics(model: MultimodalModel, source: BatchSource, classifiers: dict[str, nn.Module],
                       limit: int = 10_000, prior_samples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Cross and joint coherence, swap accuracy, style preservation and reconstruction error on `limit` test pairs."""
    device = next(model.parameters()).device
    names = [m for m in model.names if m in classifiers]
    torch.manual_seed(seed)
    sums: dict[str, float] = {}
    count = 0

    def add(key: str, value: float, n: int) -> None:
        sums[key] = sums.get(key, 0.0) + value * n

    for batch in limited_batches(source, 500, limit, shuffle=True):
        batch = batch_to(batch, device)
        y = labels(batch)
        n = y.shape[0]
        inputs = model.preprocess(batch["x"], batch.get("mask"))
        z_all, z_priv, cond = encode_latents(model, batch)
        donor = torch.roll(torch.arange(n, device=device), 1)  # sample i takes from sample i-1
        for a in names:
            z_a, _ = encode_means(model, batch, joint_from=[a])
            for b in names:
                if a == b:
                    continue
                prior_private = model.cross_private(z_priv)
                gen = model.mean(b, model.decode(z_a, prior_private, [b], cond)[b])
                add(f"coherence/{a}->{b}", coherence(predict(classifiers[b], gen), y), n)
        for m in names:
            clf = classifiers[m]
            donor_cond = {c: f[donor] for c, f in cond.items()}
            recon = model.mean(m, model.decode(z_all, z_priv, [m], cond)[m])
            add(f"recon_mae/{m}", float((recon - inputs[m]).abs().mean()), n)
            add(f"recon_accuracy/{m}", coherence(predict(clf, recon), y), n)
            joint_swapped = model.mean(m, model.decode(z_all[donor], z_priv, [m], donor_cond)[m])  # digit from the donor
            add(f"swap/joint/{m}", coherence(predict(clf, joint_swapped), y[donor]), n)
            private_swapped = {k: (z[donor] if k == m else z) for k, z in z_priv.items()}
            style_swapped = model.mean(m, model.decode(z_all, private_swapped, [m], cond)[m])  # digit kept, donor's style
            add(f"swap/private/{m}", coherence(predict(clf, style_swapped), y), n)
            add(f"style_preservation/{m}", style_preservation(style_swapped, inputs[m][donor], inputs[m]), n)
        count += n
    metrics = {k: v / count for k, v in sums.items()}
    cross = [v for k, v in metrics.items() if k.startswith("coherence/")]
    swaps = [v for k, v in metrics.items() if k.startswith("swap/")]
    metrics["coherence/cross_mean"] = float(np.mean(cross)) if cross else float("nan")
    metrics["swap/accuracy"] = float(np.mean(swaps)) if swaps else float("nan")
    metrics["coherence/joint"] = joint_coherence(model, classifiers, names, prior_samples)
    metrics["generative_samples"] = count
    metrics["joint_coherence_samples"] = prior_samples
    return metrics


@torch.no_grad()
def joint_coherence(model: MultimodalModel, classifiers: dict[str, nn.Module], names: list[str], n: int) -> float:
    """Decode N(0, I) draws of every factor to every modality; fraction where all classifiers agree."""
    device = next(model.parameters()).device
    preds = {m: [] for m in names}
    for start in range(0, n, 1000):
        z_joint, z_private = model.sample_prior(min(1000, n - start), device)
        params = model.decode(z_joint, z_private, names)
        for m in names:
            preds[m].append(predict(classifiers[m], model.mean(m, params[m])))
    return agreement([torch.cat(preds[m]) for m in names])


@torch.no_grad()
def latent_means(model: MultimodalModel, source: BatchSource, limit: int) -> dict[str, np.ndarray]:
    """Posterior means for `limit` samples, plus their labels: (N, d) arrays keyed
    "joint" (Z_y from all modalities), "joint/<m>" (Z_y from modality m alone) and "<m>" (private Z_m)."""
    device = next(model.parameters()).device
    private = [m for m in model.names if m in getattr(model, "private_names", model.names)]
    keys = ["joint", *(f"joint/{m}" for m in model.names), *private, "y"]
    parts: dict[str, list] = {k: [] for k in keys}
    for batch in limited_batches(source, 500, limit, shuffle=True):
        batch = batch_to(batch, device)
        z_joint, z_priv = encode_means(model, batch)
        parts["joint"].append(z_joint.cpu())
        parts["y"].append(labels(batch).cpu())
        for m in private:
            parts[m].append(z_priv[m].cpu())
        for m in model.names:
            parts[f"joint/{m}"].append(encode_means(model, batch, joint_from=[m])[0].cpu())
    return {k: torch.cat(v)[:limit].numpy() for k, v in parts.items()}


def linear_probes(model: MultimodalModel, train: BatchSource, test: BatchSource,
                  train_limit: int = 10_000, test_limit: int = 5_000) -> dict[str, float]:
    """Logistic-regression probes of the label (fitted on train, scored on test):
    probe/joint from Z_y of all modalities, probe/joint/<m> from Z_y inferred from m alone (high is good),
    probe/private/<m> from Z_m (near chance, 0.1 for digits, is good)."""
    tr, te = latent_means(model, train, train_limit), latent_means(model, test, test_limit)
    out = {}
    for key in ["joint", *(f"joint/{m}" for m in model.names)]:
        out[f"probe/{key}"] = probe_accuracy(tr[key], tr["y"], te[key], te["y"])
    for m in [k for k in model.names if k in tr]:
        out[f"probe/private/{m}"] = probe_accuracy(tr[m], tr["y"], te[m], te["y"])
    out["probe_train_samples"], out["probe_test_samples"] = len(tr["y"]), len(te["y"])
    return out
