"""Evaluation in one place: `mmvae evaluate RUN` (metrics on the test split, written as JSON and markdown)
and the evaluation the trainer runs every `train.eval_every` steps.

Metric functions take arrays or a model (any family) plus a batch source; each returns a flat dict of
floats. Dataset-specific metrics and reference targets come from the dataset's registry entry.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from mmvae.batch import batch_size as batch_size_of
from mmvae.batch import batch_to, labels
from mmvae.data.loader import limited_batches
from mmvae.data.registry import DATASETS, MNIST_SVHN_TARGETS  # noqa: F401  (MNIST_SVHN_TARGETS: its old home)
from mmvae.data.source import BatchSource
from mmvae.families.base import MultimodalModel
from mmvae.iwae import iwae_log_likelihood
from mmvae.losses import compute_loss
from mmvae.progress import Progress
from mmvae.runs import LoadedRun
from mmvae.tracking import write_summary


@dataclass(frozen=True)
class EvalSettings:
    """How much of the data each metric uses."""

    limit: int | None = None  # test samples for loss terms and label accuracy (None: all)
    iwae_samples: int = 1000
    iwae_limit: int = 256
    seed: int = 0
    generative_limit: int = 10_000
    probe_train: int = 10_000


@torch.no_grad()
def loss_metrics(model: MultimodalModel, run: LoadedRun, source: BatchSource, limit: int | None, device) -> dict[str, float]:
    """Mean of every loss term over the first `limit` test samples (posterior samples, fixed seed)."""
    sums: dict[str, float] = {}
    count = 0
    for batch in limited_batches(source, 256, limit):
        batch = batch_to(batch, device)
        out = model(batch)
        loss = compute_loss(model, out, batch, run.config.loss, step=10**9)
        b = batch_size_of(batch)
        for k, v in loss.as_log("test/").items():
            sums[k] = sums.get(k, 0.0) + float(v) * b
        count += b
    return {k: v / count for k, v in sums.items()}


@torch.no_grad()
def label_accuracy(model: MultimodalModel, source: BatchSource, limit: int | None, device) -> dict[str, float]:
    """Label accuracy of the head on the joint posterior mean, from all modalities and from each one alone."""
    if not model.has_label_head:
        return {}
    subsets = {"all": None, **{m: [m] for m in model.names}}
    correct = {k: 0 for k in subsets}
    count = 0
    for batch in limited_batches(source, 256, limit):
        batch = batch_to(batch, device)
        y = labels(batch)
        known = y >= 0
        for key, names in subsets.items():
            pred = model.classify(model.posteriors(batch, joint_from=names).joint.mean).argmax(-1)
            correct[key] += int((pred[known] == y[known]).sum())
        count += int(known.sum())
    return {f"label_accuracy/{k}": c / max(count, 1) for k, c in correct.items()}


def iwae_metric(model: MultimodalModel, source: BatchSource, num_samples: int, limit: int, device) -> dict[str, float]:
    """Mean IWAE log-likelihood (nats per sample) over the first `limit` test samples."""
    total, count = 0.0, 0
    for batch in limited_batches(source, 32, limit):
        ll = iwae_log_likelihood(model, batch_to(batch, device), num_samples)
        total += float(ll.sum())
        count += ll.shape[0]
    return {f"iwae_log_likelihood/K={num_samples}": total / max(count, 1), "iwae_samples": count}


@torch.no_grad()
def in_training_metrics(model: MultimodalModel, source: BatchSource, loss_cfg, step: int, batch_size: int,
                        max_batches: int, seed: int, device: torch.device, autocast=None) -> dict[str, float]:
    """What the trainer logs every eval_every steps: mean loss terms and label accuracy from Z_y on the first
    `max_batches` test batches.

    The samples are a fixed class-balanced subset of max_batches x batch_size (the same at every evaluation).
    Runs under a forked RNG with a fixed seed, so it neither perturbs training nor varies between runs.
    """
    autocast = autocast or nullcontext()
    model.eval()
    devices = [device] if device.type == "cuda" else []
    totals: dict[str, float] = {}
    correct = count = n = 0
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for batch in limited_batches(source, batch_size, max_batches * batch_size):
            n += 1
            batch = batch_to(batch, device)
            with autocast:
                out = model(batch)
                loss = compute_loss(model, out, batch, loss_cfg, step)
            for k, v in loss.as_log("eval/").items():
                totals[k] = totals.get(k, 0.0) + float(v)
            if out.logits is not None:
                with autocast:  # the posterior mean is bf16 under autocast; classify it the same way
                    pred = model.classify(out.posteriors.joint.mean).argmax(-1)
                y = labels(batch)
                known = y >= 0
                correct += int((pred[known] == y[known]).sum())
                count += int(known.sum())
    metrics = {k: v / n for k, v in totals.items()}
    if count:
        metrics["eval/label_accuracy"] = correct / count
    return metrics


def evaluate_run(run: LoadedRun, test: BatchSource, out_dir: Path, limit: int | None = None,
                 iwae_samples: int = 1000, iwae_limit: int = 256, seed: int = 0,
                 train: BatchSource | None = None, generative_limit: int = 10_000, probe_train: int = 10_000,
                 show_progress: bool = True) -> dict:
    """All metrics the run's dataset supports; writes metrics.json and metrics.md into out_dir.

    Every dataset: loss terms, label accuracy from Z_y, IWAE. Beyond those, whatever the dataset's
    registry entry provides (MNIST–SVHN with its cached digit classifiers: cross/joint coherence, swap
    accuracy, style preservation, linear probes; and the latent cycle, MIG, DCI and SAP against the digit and the
    style factors).
    """
    settings = EvalSettings(limit, iwae_samples, iwae_limit, seed, generative_limit, probe_train)
    device = next(run.model.parameters()).device
    torch.manual_seed(seed)
    progress = Progress(None, "evaluate", "phase", enabled=show_progress)
    metrics: dict = {"step": run.step, "test_samples": len(test) if limit is None else min(limit, len(test))}
    phases = [("loss terms", lambda: loss_metrics(run.model, run, test, limit, device)),
              ("label accuracy", lambda: label_accuracy(run.model, test, limit, device))]
    if iwae_samples > 0:
        phases.append((f"IWAE (K = {iwae_samples})", lambda: iwae_metric(run.model, test, iwae_samples, iwae_limit, device)))
    entry = DATASETS[run.config.data.name]
    if entry.metrics is not None:
        phases.append((f"{entry.name} metrics", lambda: entry.metrics(run, train, test, settings)))
    for name, compute in phases:
        started = time.perf_counter()
        progress.event(f"{name} ...")
        metrics.update(compute())
        progress.event(f"{name} done in {time.perf_counter() - started:.1f} s")
    metrics["provenance"] = getattr(test, "provenance", {})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (out_dir / "metrics.md").write_text(metrics_markdown(metrics, run))
    write_summary(run.run_dir, run.config, {f"evaluate/{k}": v for k, v in metrics.items()})
    return metrics


# One line per metric family: (key prefix, the count key that says how many samples it used, meaning).
# The first matching prefix wins.
METRIC_HELP: list[tuple[str, str | None, str]] = [
    ("step", None, "optimiser steps of the evaluated checkpoint"),
    ("test/recon/", "test_samples", "-log p(x_m | Z_y, Z_m) per sample at posterior samples (nats; lower is better)"),
    ("test/kl/", "test_samples", "KL of the posterior to N(0, I) per sample (nats)"),
    ("test/mmd/", "test_samples", "MMD between the posterior samples and N(0, I)"),
    ("test/label", "test_samples", "cross-entropy of the label head on F_y (nats)"),
    ("test/total", "test_samples", "the weighted training loss"),
    ("test/", "test_samples", "a head's or loss group's term"),
    ("label_accuracy/all", "test_samples", "label head on the mean of Z_y inferred from every modality"),
    ("label_accuracy/", "test_samples", "label head on the mean of Z_y inferred from this modality alone"),
    ("iwae_log_likelihood", "iwae_samples", "importance-weighted log p(x) (nats per sample; higher is better)"),
    ("classifier_test_accuracy/", None, "accuracy of the frozen classifier that scores generated samples, on its test split"),
    ("coherence/joint", "joint_coherence_samples", "prior draws decoded to every modality on which all classifiers agree"),
    ("coherence/cross_mean", "generative_samples", "mean of the cross-coherence figures"),
    ("coherence/", "generative_samples", "a->b: b generated from Z_y of a alone (private factor from the prior) shows a's class"),
    ("recon_mae/", "generative_samples", "mean absolute error of the posterior-mean reconstruction"),
    ("recon_accuracy/", "generative_samples", "the reconstruction is classified as its own label"),
    ("swap/joint/", "generative_samples", "decoded with another sample's Z_y: classified as that sample's label"),
    ("swap/private/", "generative_samples", "decoded with another sample's Z_m: the own label is kept"),
    ("swap/accuracy", "generative_samples", "mean of the swap figures"),
    ("style_preservation/", "generative_samples", "swap's image statistics nearer the style donor's than the content donor's (chance 0.5)"),
    ("probe/private/", "probe_test_samples", "logistic-regression probe of the label on Z_m (near chance is good)"),
    ("style_transfer/", "generative_samples", "after a Z_m swap the style read from the output is the style donor's (chance 0.5)"),
    ("style_r2/", "probe_test_samples", "linear-regression R² of a true style factor from Z_m (high is good) or Z_y (low is good)"),
    ("probe/", "probe_test_samples", "logistic-regression probe of the label on Z_y (all modalities, or one alone)"),
    ("cycle/style_distance/", "cycle_samples", "re-encoded swap: mean |Z_m(x~) - Z_m(style donor)| / mean |Z_m(content donor) - Z_m(style donor)| (0 is exact)"),
    ("cycle/content_distance/", "cycle_samples", "re-encoded swap: mean |Z_y(x~) - Z_y(content donor)| / mean |Z_y(content) - Z_y(style donor)|, Z_y from m alone"),
    ("cycle/style", "cycle_samples", "a Z_m swap re-encoded: its Z_m is nearer the style donor's than the content donor's (chance 0.5; the main style measure)"),
    ("cycle/content", "cycle_samples", "a Z_m swap re-encoded from m alone: its Z_y is nearer the content donor's than the style donor's (chance 0.5)"),
    ("mig/", "disentanglement_samples", "mutual information gap of the codes (joint: Z_y, private/<m>: Z_m) against the true factors named (0..1)"),
    ("dci/disentanglement/", "disentanglement_samples", "DCI disentanglement: each code dimension explains one factor (tree importances; 0..1)"),
    ("dci/completeness/", "disentanglement_samples", "DCI completeness: each factor is read from one code dimension (0..1)"),
    ("dci/informativeness/", "disentanglement_samples", "DCI informativeness: held-out accuracy (discrete) or R² (continuous) of trees reading the factor(s) from the code"),
    ("sap/", "disentanglement_samples", "separated attribute predictability: gap between the two most predictive single dimensions (0..1)"),
    ("test_samples", None, "test samples for the loss terms and label accuracy (a seeded class-balanced subset when limited)"),
    ("iwae_samples", None, "test samples for the IWAE estimate (seeded, class-balanced)"),
    ("generative_samples", None, "test samples for coherence, swap and reconstruction figures (seeded, class-balanced)"),
    ("joint_coherence_samples", None, "prior draws for joint coherence"),
    ("probe_train_samples", None, "training samples the probes are fitted on (seeded, class-balanced)"),
    ("probe_test_samples", None, "test samples the probes are scored on (seeded, class-balanced)"),
    ("cycle_samples", None, "test samples for the latent-cycle score (seeded, class-balanced; donor: the previous sample)"),
    ("disentanglement_samples", None, "test samples for MIG, DCI and SAP (DCI and SAP fit on 70%, score on 30%)"),
]


def metric_help(key: str, dataset: str | None = None) -> tuple[str | None, str]:
    """(count key, one-line meaning) of a metric; the dataset's own help lines first, then the generic ones."""
    entry = DATASETS.get(dataset) if dataset else None
    own = entry.metric_help() if entry is not None and entry.metric_help is not None else []
    for prefix, count_key, text in [*own, *METRIC_HELP]:
        if key == prefix or key.startswith(prefix):
            return count_key, text
    return None, ""


def format_value(v) -> str:
    """A figure for metrics.md: 4 decimals, or 4 significant digits where that would show 0.0000 (squared errors in
    metres, for one)."""
    if not isinstance(v, float):
        return f"{v}"
    return f"{v:.4g}" if v != 0 and abs(v) < 5e-4 else f"{v:.4f}"


def metrics_markdown(metrics: dict, run: LoadedRun) -> str:
    """A markdown table of every numeric metric with the number of samples it used and what it means."""
    lines = [f"# Evaluation of `{run.run_dir}` at step {run.step}", "",
             "| metric | value | samples | meaning |", "|---|---|---|---|"]
    config = getattr(run, "config", None)
    dataset = config.data.name if config is not None else None
    for k, v in metrics.items():
        if isinstance(v, (int, float)):
            count_key, text = metric_help(k, dataset)
            count = metrics.get(count_key, "") if count_key else ""
            value = format_value(v)
            lines.append(f"| {k} | {value} | {count} | {text} |")
    entry = DATASETS.get(dataset) if dataset is not None else None
    # Without a config (a bare report of figures), every dataset's targets whose metrics are present apply.
    targets = entry.targets if entry is not None else [t for e in DATASETS.values() for t in e.targets]
    if any(key in metrics for key, *_ in targets):
        lines += ["", "| against the reference figures | value | full target | quick floor |", "|---|---|---|---|"]
        for key, op, full, quick in targets:
            if key in metrics:
                lines.append(f"| {key} | {format_value(metrics[key])} | {_verdict(metrics[key], op, full)} | "
                             f"{_verdict(metrics[key], op, quick)} |")
    prov = metrics.get("provenance") or {}
    if entry is not None and entry.provenance_notes is not None:
        notes = entry.provenance_notes(prov)
        if notes:
            lines += ["", *notes]
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
