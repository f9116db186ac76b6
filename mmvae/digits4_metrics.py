"""Evaluation of the four-modality digits benchmark (the digits4 dataset entry's `metrics`).

Scored by the cached frozen classifiers of mmvae/digits4_classifiers.py, on `generative_limit` test tuples:
  coherence/<S>-><t>      Z_y inferred from the modalities of subset S only (every non-empty subset, names joined
                          by "+"), modality t decoded with a private factor drawn from the prior, classified
  coherence/single_min    the smallest coherence from one modality to another
  coherence/others3-><t>  from the three other modalities together; coherence/others3_min their minimum
  coherence/joint         prior draws of every factor decoded to all modalities: fraction where all classifiers agree
  swap/joint/<m>          x_m decoded from Z_y of a donor and Z_m of the sample: the classifier must read the donor's digit
  swap/private/<m>        from Z_y of the sample and Z_m of a donor: the sample's digit
  swap/<m>                the mean of the two; swap/cross/<a>-><b>: Z_y from a alone, style Z_b of a donor, decoded as b
  probe/...               logistic-regression probes on Z_y from all and from each modality alone, and on each Z_m
Only the modalities a model has are evaluated (a model of any subset of the four works).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import torch

from mmvae.batch import batch_to, labels
from mmvae.data.loader import limited_batches
from mmvae.metrics import agreement, linear_probes
from mmvae.swap import encode_latents

ORDER = ("mnist", "svhn", "audio", "text")


def subsets(names: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, smallest first, in the model's modality order."""
    return [c for k in range(1, len(names) + 1) for c in combinations(names, k)]


def subset_key(s: tuple[str, ...]) -> str:
    return "+".join(s)


@torch.no_grad()
def classify(classifiers: dict, m: str, x: torch.Tensor) -> torch.Tensor:
    return classifiers[m](x).argmax(-1)


@torch.no_grad()
def digits4_generative(model, source, classifiers: dict, limit: int, prior_samples: int, seed: int = 0) -> dict[str, float]:
    device = next(model.parameters()).device
    names = [m for m in model.names if m in classifiers]
    torch.manual_seed(seed)
    sums: dict[str, float] = {}
    count = 0

    def add(key: str, value: float, n: int) -> None:
        sums[key] = sums.get(key, 0.0) + value * n

    for batch in limited_batches(source, 250, limit, shuffle=True):
        batch = batch_to(batch, device)
        y = labels(batch)
        n = y.shape[0]
        z_all, z_priv, cond = encode_latents(model, batch)
        donor = torch.roll(torch.arange(n, device=device), 1)
        for s in subsets(names):
            z_s, _, _ = encode_latents(model, batch, joint_from=list(s))
            prior_private = model.cross_private(z_priv)
            params = model.decode(z_s, prior_private, names, cond)
            for t in names:
                pred = classify(classifiers, t, model.mean(t, params[t]))
                add(f"coherence/{subset_key(s)}->{t}", float((pred == y).float().mean()), n)
        for m in names:
            joint_swapped = model.mean(m, model.decode(z_all[donor], z_priv, [m], cond)[m])
            add(f"swap/joint/{m}", float((classify(classifiers, m, joint_swapped) == y[donor]).float().mean()), n)
            private_swapped = {k: (z[donor] if k == m else z) for k, z in z_priv.items()}
            style_swapped = model.mean(m, model.decode(z_all, private_swapped, [m], cond)[m])
            add(f"swap/private/{m}", float((classify(classifiers, m, style_swapped) == y).float().mean()), n)
            recon = model.mean(m, model.decode(z_all, z_priv, [m], cond)[m])
            add(f"recon_accuracy/{m}", float((classify(classifiers, m, recon) == y).float().mean()), n)
        for a in names:
            z_a, _, _ = encode_latents(model, batch, joint_from=[a])
            for b in names:
                if a == b:
                    continue
                style = {k: (z[donor] if k == b else z) for k, z in z_priv.items()}
                out = model.mean(b, model.decode(z_a, style, [b], cond)[b])
                add(f"swap/cross/{a}->{b}", float((classify(classifiers, b, out) == y).float().mean()), n)
        count += n
    metrics = {k: v / count for k, v in sums.items()}
    for m in names:
        metrics[f"swap/{m}"] = (metrics[f"swap/joint/{m}"] + metrics[f"swap/private/{m}"]) / 2
    single = [metrics[f"coherence/{a}->{t}"] for a in names for t in names if a != t]
    metrics["coherence/single_min"] = float(min(single)) if single else float("nan")
    metrics["coherence/single_mean"] = float(np.mean(single)) if single else float("nan")
    if len(names) > 1:
        others = []
        for t in names:
            key = f"coherence/{subset_key(tuple(m for m in names if m != t))}->{t}"
            metrics[f"coherence/others->{t}"] = metrics[key]
            others.append(metrics[key])
        metrics["coherence/others_min"] = float(min(others))
    cross = [v for k, v in metrics.items() if k.startswith("swap/cross/")]
    metrics["swap/cross_mean"] = float(np.mean(cross)) if cross else float("nan")
    metrics["swap/accuracy"] = float(np.mean([metrics[f"swap/{m}"] for m in names]))
    metrics["coherence/joint"] = joint_coherence(model, classifiers, names, prior_samples)
    metrics["generative_samples"] = count
    return metrics


@torch.no_grad()
def joint_coherence(model, classifiers: dict, names: list[str], n: int) -> float:
    device = next(model.parameters()).device
    preds: dict[str, list] = {m: [] for m in names}
    for start in range(0, n, 500):
        z_joint, z_private = model.sample_prior(min(500, n - start), device)
        params = model.decode(z_joint, z_private, names)
        for m in names:
            preds[m].append(classify(classifiers, m, model.mean(m, params[m])))
    return agreement([torch.cat(preds[m]) for m in names])


def coherence_table(metrics: dict, names: list[str]) -> str:
    """Markdown: one row per non-empty subset, one column per target modality."""
    lines = ["| Z_y from \\ generated | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s in subsets(names):
        cells = [f"{metrics.get(f'coherence/{subset_key(s)}->{t}', float('nan')):.3f}" for t in names]
        lines.append(f"| {subset_key(s)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def digits4_metrics(run, train, test, settings) -> dict[str, Any]:
    """The dataset entry's metrics callable."""
    from mmvae.digits4_classifiers import check_audio_options, load_digits4_classifiers

    device = next(run.model.parameters()).device
    classifiers, record = load_digits4_classifiers(run.config.data.path, device)
    check_audio_options(run.model, record)
    metrics: dict[str, Any] = {f"classifier_test_accuracy/{m}": r["test_accuracy"] for m, r in record["modalities"].items()}
    glimit = settings.generative_limit if settings.limit is None else min(settings.limit, settings.generative_limit)
    metrics.update(digits4_generative(run.model, test, classifiers, glimit, prior_samples=glimit, seed=settings.seed))
    if train is not None:
        metrics.update(linear_probes(run.model, train, test, settings.probe_train, glimit))
    return metrics


def digits4_notes(prov: dict) -> list[str]:
    lines = []
    svhn = prov.get("svhn") if isinstance(prov.get("svhn"), dict) else None
    if svhn is not None:
        lines.append(f"SVHN source: **{svhn.get('source')}** ({svhn.get('reason', '')}).")
        if svhn.get("source") == "synthetic":
            lines.append("The SVHN modality is the offline street-digit stand-in, not real SVHN.")
    fsdd = prov.get("fsdd") if isinstance(prov.get("fsdd"), dict) else None
    if fsdd is not None:
        lines.append(f"Audio: FSDD ({fsdd.get('recordings')} recordings, sha256 {str(fsdd.get('sha256'))[:12]}…), "
                     "test recordings are takes 0–4 (never in training).")
    text = prov.get("text") if isinstance(prov.get("text"), dict) else None
    if text is not None:
        g = text.get("grammar", {})
        lines.append(f"Text: grammar {g.get('version')} (seed {g.get('seed')}, {len(g.get('vocab', []))} words).")
    return lines

