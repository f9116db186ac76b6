"""`mmvae evaluate RUN`: metrics on the test split, written as JSON and markdown.

Metric functions take arrays or a model plus a batch source; each returns a flat dict of floats.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmvae.data.loader import limited_batches
from mmvae.data.source import BatchSource, batch_to
from mmvae.iwae import iwae_log_likelihood
from mmvae.losses import compute_loss
from mmvae.model import FactorizedMultimodalVAE
from mmvae.runs import LoadedRun

# MNIST–SVHN reference figures: (metric, ">=" or "<=", full-budget target, quick-CPU floor or None).
# The classifier rows are the accuracies below which coherence figures are not trustworthy.
MNIST_SVHN_TARGETS = [
    ("classifier_test_accuracy/mnist", ">=", 0.99, 0.99),
    ("classifier_test_accuracy/svhn", ">=", 0.95, 0.95),
    ("coherence/mnist->svhn", ">=", 0.90, 0.80),
    ("coherence/svhn->mnist", ">=", 0.85, 0.80),
    ("coherence/joint", ">=", 0.50, None),
    ("probe/joint/mnist", ">=", 0.95, None),
    ("probe/joint/svhn", ">=", 0.85, None),
    ("probe/private/mnist", "<=", 0.20, 0.25),
    ("probe/private/svhn", "<=", 0.20, 0.25),
    ("swap/accuracy", ">=", 0.90, 0.80),
]


@torch.no_grad()
def loss_metrics(model: FactorizedMultimodalVAE, run: LoadedRun, source: BatchSource, limit: int | None, device) -> dict[str, float]:
    """Mean of every loss term over the first `limit` test samples (posterior samples, fixed seed)."""
    sums: dict[str, float] = {}
    count = 0
    for batch in limited_batches(source, 256, limit):
        batch = batch_to(batch, device)
        out = model(batch)
        loss = compute_loss(model, out, batch, run.config.loss, step=10**9)
        b = batch["y"].shape[0]
        for k, v in loss.as_log("test/").items():
            sums[k] = sums.get(k, 0.0) + float(v) * b
        count += b
    return {k: v / count for k, v in sums.items()}


@torch.no_grad()
def label_accuracy(model: FactorizedMultimodalVAE, source: BatchSource, limit: int | None, device) -> dict[str, float]:
    """Label accuracy of the head on the joint posterior mean, from all modalities and from each one alone."""
    if model.label_head is None:
        return {}
    subsets = {"all": model.names, **{m: [m] for m in model.names}}
    correct = {k: 0 for k in subsets}
    count = 0
    for batch in limited_batches(source, 256, limit):
        batch = batch_to(batch, device)
        inputs = model.preprocess(batch["x"])
        known = batch["y"] >= 0
        for key, names in subsets.items():
            present = {m: batch["present"][m] & (m in names) for m in model.names}
            pred = model.classify(model.encode(inputs, present).joint.mu).argmax(-1)
            correct[key] += int((pred[known] == batch["y"][known]).sum())
        count += int(known.sum())
    return {f"label_accuracy/{k}": c / max(count, 1) for k, c in correct.items()}


def iwae_metric(model: FactorizedMultimodalVAE, source: BatchSource, num_samples: int, limit: int, device) -> dict[str, float]:
    """Mean IWAE log-likelihood (nats per sample) over the first `limit` test samples."""
    total, count = 0.0, 0
    for batch in limited_batches(source, 32, limit):
        ll = iwae_log_likelihood(model, batch_to(batch, device), num_samples)
        total += float(ll.sum())
        count += ll.shape[0]
    return {f"iwae_log_likelihood/K={num_samples}": total / max(count, 1), "iwae_samples": count}


def evaluate_run(run: LoadedRun, test: BatchSource, out_dir: Path, limit: int | None = None,
                 iwae_samples: int = 1000, iwae_limit: int = 256, seed: int = 0,
                 train: BatchSource | None = None, generative_limit: int = 10_000, probe_train: int = 10_000) -> dict:
    """All metrics the run's dataset supports; writes metrics.json and metrics.md into out_dir.

    Every dataset: loss terms, label accuracy from Z_y, IWAE. MNIST–SVHN (with its cached digit
    classifiers): cross/joint coherence, swap accuracy, style preservation, linear probes.
    """
    device = next(run.model.parameters()).device
    torch.manual_seed(seed)
    metrics: dict = {"step": run.step, "test_samples": len(test) if limit is None else min(limit, len(test))}
    metrics.update(loss_metrics(run.model, run, test, limit, device))
    metrics.update(label_accuracy(run.model, test, limit, device))
    if iwae_samples > 0:
        metrics.update(iwae_metric(run.model, test, iwae_samples, iwae_limit, device))
    if run.config.data.name == "mnist_svhn":
        from mmvae.classifiers import load_digit_classifiers
        from mmvae.metrics import generative_metrics, linear_probes

        classifiers, record = load_digit_classifiers(run.config.data.path, device)
        metrics.update({f"classifier_test_accuracy/{m}": r["test_accuracy"] for m, r in record["modalities"].items()})
        glimit = generative_limit if limit is None else min(limit, generative_limit)
        metrics.update(generative_metrics(run.model, test, classifiers, glimit, prior_samples=glimit, seed=seed))
        if train is not None:
            metrics.update(linear_probes(run.model, train, test, probe_train, glimit))
    metrics["provenance"] = getattr(test, "provenance", {})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (out_dir / "metrics.md").write_text(metrics_markdown(metrics, run))
    return metrics


def metrics_markdown(metrics: dict, run: LoadedRun) -> str:
    """A small markdown table of every numeric metric."""
    lines = [f"# Evaluation of `{run.run_dir}` at step {run.step}", "", "| metric | value |", "|---|---|"]
    for k, v in metrics.items():
        if isinstance(v, (int, float)):
            lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    if any(key in metrics for key, *_ in MNIST_SVHN_TARGETS):
        lines += ["", "| against the reference figures | value | full target | quick floor |", "|---|---|---|---|"]
        for key, op, full, quick in MNIST_SVHN_TARGETS:
            if key in metrics:
                lines.append(f"| {key} | {metrics[key]:.4f} | {_verdict(metrics[key], op, full)} | "
                             f"{_verdict(metrics[key], op, quick)} |")
    prov = metrics.get("provenance") or {}
    svhn = prov.get("svhn") if isinstance(prov.get("svhn"), dict) else None
    if svhn is not None:
        lines += ["", f"SVHN source: **{svhn.get('source')}** ({svhn.get('reason', '')})."]
        if svhn.get("source") == "synthetic":
            lines.append("These figures use the offline street-digit stand-in, not real SVHN: they are not comparable "
                         "with published MNIST–SVHN results.")
    if prov:
        flat = {k: v for k, v in prov.items() if not isinstance(v, (dict, list))}
        if flat:
            lines += ["", "Data provenance: " + ", ".join(f"{k}={v}" for k, v in flat.items())]
    return "\n".join(lines) + "\n"


def _verdict(value: float, op: str, bound: float | None) -> str:
    """'met (>= 0.9)' / 'MISSED (>= 0.9)' / '–' for a metric against one bound."""
    if bound is None:
        return "–"
    ok = value >= bound if op == ">=" else value <= bound
    return f"{'met' if ok else 'MISSED'} ({op} {bound:g})"
