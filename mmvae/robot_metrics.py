"""Evaluation of the robot vision-and-touch models (the vision_touch dataset entry's `metrics`; docs/robot.md).

On a seeded random subset of the test split (`generative_limit` samples, or `--limit`), posterior means, eval mode:
  flow/epe                    EPE (pixels) of the flow head on the aligned rows: mean over pixels of ||f_hat - f||
  flow/epe_zero_baseline      the same for predicting zero flow everywhere (= the mean flow magnitude)
  flow/epe_moving, ..._zero_baseline   the same over moving pixels only (flow_mask = 1), pooled over pixels
  flow_mask/accuracy, flow_mask/base_rate      the mask head thresholded at 0.5, the fraction of moving pixels
  contact/accuracy, balanced_accuracy, f1, precision, recall, base_rate, predicted_rate    on the aligned rows;
                              contact is imbalanced: compare accuracy with max(base_rate, 1 - base_rate)
  alignment/accuracy (every row), alignment/accuracy_aligned, alignment/accuracy_misaligned, alignment/base_rate
  next_pose/mse               the next-pose head (pose_delta or pose_next) on the aligned rows, mean over the 4 values
  next_pose/mse_no_motion     "the pose does not move": delta 0 (pose_next: the current pose), the same target units
  next_pose/mse_xyz, next_pose/mse_xyz_no_motion   the position part only (metres^2)
  probe/contact/<z>           logistic-regression probe of contact_next (accuracy, balanced_accuracy) and
  probe/pose/<z>              ridge probe of pose_next (r2), fitted on `probe_train` aligned training rows,
                              scored on the aligned test rows; <z> = joint (Z_y from every modality),
                              joint/<m> (Z_y from m alone) and private/<m> (Z_m)
with the sample counts used (robot_eval_samples, robot_aligned_samples, robot_probe_train_samples,
robot_probe_test_samples).
Only the heads a model has are scored (found by kind); the probes need no head.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmvae.batch import batch_to
from mmvae.heads_robot import AlignmentHead, ContactHead, FlowHead, NextPoseHead, end_point_error

EVAL_BATCH = 32


# --- on arrays ----------------------------------------------------------------------------------------------
def binary_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean of the two recalls), F1, precision, recall, base and predicted rates of
    boolean predictions against boolean targets; an undefined ratio (no positives) is nan."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    n = pred.size
    tp = int((pred & target).sum())
    tn = int((~pred & ~target).sum())
    fp = int((pred & ~target).sum())
    fn = int((~pred & target).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    recall, specificity, precision = ratio(tp, tp + fn), ratio(tn, tn + fp), ratio(tp, tp + fp)
    recalls = [r for r in (recall, specificity) if not math.isnan(r)]
    return {"accuracy": ratio(tp + tn, n), "balanced_accuracy": float(np.mean(recalls)) if recalls else math.nan,
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "precision": precision, "recall": recall,
            "base_rate": ratio(tp + fn, n), "predicted_rate": ratio(tp + fp, n), "samples": n}


def flow_epe(pred: Tensor, target: Tensor) -> dict[str, float]:
    """EPE of predicted flow (N, 2, H, W) and of the zero-flow baseline against the target, mean over samples."""
    return {"epe": float(end_point_error(pred, target).mean()),
            "epe_zero_baseline": float(torch.linalg.vector_norm(target, dim=1).flatten(1).mean(1).mean())}


def pose_mse(pred: np.ndarray, target: np.ndarray, no_motion: np.ndarray) -> dict[str, float]:
    """MSE (mean over rows and values) of a pose prediction and of the no-motion prediction, also for xyz only."""
    pred, target, no_motion = (np.asarray(a, np.float64) for a in (pred, target, no_motion))
    return {"mse": float(((pred - target) ** 2).mean()), "mse_no_motion": float(((no_motion - target) ** 2).mean()),
            "mse_xyz": float(((pred - target)[:, :3] ** 2).mean()),
            "mse_xyz_no_motion": float(((no_motion - target)[:, :3] ** 2).mean())}


def contact_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                  seed: int = 0) -> dict[str, float]:
    """Logistic-regression probe (standardised features): test accuracy and balanced accuracy; nan when the
    training rows hold one class only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_y, test_y = np.asarray(train_y, bool), np.asarray(test_y, bool)
    if train_y.all() or not train_y.any() or len(test_y) == 0:
        return {"accuracy": math.nan, "balanced_accuracy": math.nan}
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train_x, train_y)
    m = binary_metrics(probe.predict(test_x).astype(bool), test_y)
    return {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"]}


def pose_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> dict[str, float]:
    """Ridge probe (standardised features, alpha 1) of a pose (N, 4): test R² (uniform over the values) and MSE."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(train_y) < 2 or len(test_y) < 2:
        return {"r2": math.nan, "mse": math.nan}
    probe = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    probe.fit(train_x, train_y)
    pred = probe.predict(test_x)
    return {"r2": float(r2_score(test_y, pred)), "mse": float(((pred - test_y) ** 2).mean())}


# --- on a model ---------------------------------------------------------------------------------------------
def subset(source, limit: int | None, seed: int) -> Tensor:
    """A seeded random subset of the split's indices (all, shuffled, when limit covers it). The robot source has
    no labels to balance, and data.sampling's class balancing would read every frame to look for them."""
    n = len(source)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order if limit is None or limit >= n else order[:limit]


def _heads_of(model, kind: type) -> list[str]:
    return [name for name, head in getattr(model, "heads", {}).items() if isinstance(head, kind)]


def _aligned(batch) -> Tensor:
    targets = batch.get("targets", {})
    n = next(iter(batch["present"].values())).shape[0]
    if "aligned" not in targets:
        return torch.ones(n, dtype=torch.bool, device=next(iter(batch["present"].values())).device)
    return targets["aligned"] > 0.5


@torch.no_grad()
def head_metrics(model, source, limit: int | None, seed: int = 0) -> dict[str, Any]:
    """Every robot head of the model scored on a seeded subset of `source` (see the module docstring)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    flow_heads, contact_heads = _heads_of(model, FlowHead), _heads_of(model, ContactHead)
    align_heads, pose_heads = _heads_of(model, AlignmentHead), _heads_of(model, NextPoseHead)
    acc: dict[str, list] = {}

    def add(key: str, value) -> None:
        acc.setdefault(key, []).append(value.detach().cpu() if isinstance(value, Tensor) else value)

    index = subset(source, limit, seed)
    n_rows = n_aligned = 0
    for lo in range(0, index.numel(), EVAL_BATCH):
        batch = batch_to(source.gather(index[lo:lo + EVAL_BATCH].to(source.device)), device)
        out = model(batch, sample=False)
        targets = batch.get("targets", {})
        aligned = _aligned(batch)
        n_rows += int(aligned.numel())
        n_aligned += int(aligned.sum())
        for name in flow_heads:
            head, o = model.heads[name], out.heads[name]
            flow_t = targets[head.options.target][aligned].float()
            pred = o["flow"][aligned].float()
            add(f"{name}/epe", end_point_error(pred, flow_t))
            add(f"{name}/epe_zero", torch.linalg.vector_norm(flow_t, dim=1).flatten(1).mean(1))
            moving = targets[head.options.mask_target][aligned][:, 0] > 0.5  # (n, H, W)
            err = torch.linalg.vector_norm(pred - flow_t, dim=1)
            add(f"{name}/moving_err", err[moving].sum())
            add(f"{name}/moving_zero", torch.linalg.vector_norm(flow_t, dim=1)[moving].sum())
            add(f"{name}/moving_count", moving.sum())
            if head.options.mask:
                mask_pred = o["mask_logits"][aligned][:, 0] > 0
                add(f"{name}/mask_correct", (mask_pred == moving).float().sum())
                add(f"{name}/mask_pixels", torch.tensor(float(moving.numel())))
        for name in contact_heads:
            head = model.heads[name]
            add(f"{name}/pred", (out.heads[name][aligned] > 0))
            add(f"{name}/target", (targets[head.options.target][aligned] > 0.5))
        for name in align_heads:
            head = model.heads[name]
            add(f"{name}/pred", out.heads[name] > 0)
            add(f"{name}/target", targets[head.options.target] > 0.5)
        for name in pose_heads:
            head = model.heads[name]
            target = targets[head.options.target][aligned].float()
            no_motion = (torch.zeros_like(target) if head.options.target == "pose_delta"
                         else (targets["pose_next"] - targets["pose_delta"])[aligned].float())
            add(f"{name}/pred", out.heads[name][aligned].float())
            add(f"{name}/target", target)
            add(f"{name}/no_motion", no_motion)
    model.train(was_training)

    cat = lambda k: torch.cat(acc[k])  # noqa: E731  (per-row values)
    total = lambda k: float(sum(float(v) for v in acc[k]))  # noqa: E731
    metrics: dict[str, Any] = {"robot_eval_samples": n_rows, "robot_aligned_samples": n_aligned}
    for name in flow_heads:
        p = name if name == "flow" else f"flow/{name}"
        if n_aligned:
            metrics[f"{p}/epe"] = float(cat(f"{name}/epe").mean())
            metrics[f"{p}/epe_zero_baseline"] = float(cat(f"{name}/epe_zero").mean())
        count = total(f"{name}/moving_count")
        metrics[f"{p}/epe_moving"] = total(f"{name}/moving_err") / count if count else math.nan
        metrics[f"{p}/epe_moving_zero_baseline"] = total(f"{name}/moving_zero") / count if count else math.nan
        if model.heads[name].options.mask:
            pixels = total(f"{name}/mask_pixels")
            mp = "flow_mask" if name == "flow" else f"flow_mask/{name}"
            metrics[f"{mp}/accuracy"] = total(f"{name}/mask_correct") / pixels if pixels else math.nan
            metrics[f"{mp}/base_rate"] = count / pixels if pixels else math.nan
    for name in contact_heads:
        p = "contact" if name == "contact" else f"contact/{name}"
        m = binary_metrics(cat(f"{name}/pred").numpy(), cat(f"{name}/target").numpy())
        metrics.update({f"{p}/{k}": v for k, v in m.items() if k != "samples"})
        metrics[f"{p}/majority_baseline"] = max(m["base_rate"], 1 - m["base_rate"]) if n_aligned else math.nan
    for name in align_heads:
        p = "alignment" if name == "alignment" else f"alignment/{name}"
        pred, target = cat(f"{name}/pred").numpy(), cat(f"{name}/target").numpy()
        m = binary_metrics(pred, target)
        metrics[f"{p}/accuracy"] = m["accuracy"]
        metrics[f"{p}/accuracy_aligned"] = m["recall"]  # aligned rows called aligned
        metrics[f"{p}/accuracy_misaligned"] = binary_metrics(~pred, ~target)["recall"]
        metrics[f"{p}/base_rate"] = m["base_rate"]
    for name in pose_heads:
        p = "next_pose" if name == "next_pose" else f"next_pose/{name}"
        if n_aligned:
            m = pose_mse(cat(f"{name}/pred").numpy(), cat(f"{name}/target").numpy(), cat(f"{name}/no_motion").numpy())
            metrics.update({f"{p}/{k}": v for k, v in m.items()})
    return metrics


@torch.no_grad()
def latent_table(model, source, limit: int | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Posterior means of the aligned rows of a seeded subset: "joint", "joint/<m>", "private/<m>", plus the
    targets "contact" (N,) bool and "pose" (N, 4) = pose_next."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    private = list(getattr(model, "private_names", []))
    parts: dict[str, list] = {}
    index = subset(source, limit, seed)
    for lo in range(0, index.numel(), EVAL_BATCH):
        batch = batch_to(source.gather(index[lo:lo + EVAL_BATCH].to(source.device)), device)
        keep = _aligned(batch)
        post = model.posteriors(batch)
        rows = {"joint": post.joint.mean, **{f"private/{m}": post.private[m].mu for m in private}}
        for m in model.names:
            rows[f"joint/{m}"] = model.posteriors(batch, joint_from=[m]).joint.mean
        rows["contact"] = batch["targets"]["contact_next"] > 0.5
        rows["pose"] = batch["targets"]["pose_next"]
        for k, v in rows.items():
            parts.setdefault(k, []).append(v[keep].cpu())
    model.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


def linear_probes(model, train, test, train_limit: int, test_limit: int | None, seed: int = 0) -> dict[str, Any]:
    """Probes of contact_next and pose_next from Z_y (all, each modality alone) and each Z_m (module docstring)."""
    tr, te = latent_table(model, train, train_limit, seed), latent_table(model, test, test_limit, seed + 1)
    out: dict[str, Any] = {"robot_probe_train_samples": int(len(tr["contact"])),
                           "robot_probe_test_samples": int(len(te["contact"]))}
    for key in [k for k in tr if k not in ("contact", "pose")]:
        for k, v in contact_probe(tr[key], tr["contact"], te[key], te["contact"], seed).items():
            out[f"probe/contact/{key}/{k}"] = v
        out[f"probe/pose/{key}/r2"] = pose_probe(tr[key], tr["pose"], te[key], te["pose"])["r2"]
    out["probe/contact/base_rate"] = float(te["contact"].mean()) if len(te["contact"]) else math.nan
    return out


def vision_touch_metrics(run, train, test, settings) -> dict[str, Any]:
    """The vision_touch DatasetEntry's `metrics`: fn(run, train, test, settings) as every entry's."""
    limit = settings.generative_limit if settings.limit is None else min(settings.limit, settings.generative_limit)
    metrics = head_metrics(run.model, test, limit, settings.seed)
    if train is not None:
        metrics.update(linear_probes(run.model, train, test, settings.probe_train, limit, settings.seed))
    return metrics


# One line per metric for metrics.md (the vision_touch entry's metric_help; the same (prefix, count key, meaning) as
# mmvae.evaluate.METRIC_HELP, consulted before it).
ROBOT_METRIC_HELP: list[tuple[str, str | None, str]] = [
    ("flow/epe_zero_baseline", "robot_aligned_samples", "EPE of predicting zero flow (pixels): the baseline"),
    ("flow/epe_moving_zero", "robot_aligned_samples", "zero-flow EPE over the moving pixels (pixels)"),
    ("flow/epe_moving", "robot_aligned_samples", "flow-head EPE over the moving pixels (flow_mask = 1), pooled (pixels)"),
    ("flow/epe", "robot_aligned_samples", "flow-head end-point error, mean over pixels and aligned samples (pixels)"),
    ("flow_mask/", "robot_aligned_samples", "flow-mask head thresholded at 0.5: pixel accuracy; base rate = moving pixels"),
    ("contact/", "robot_aligned_samples", "next-step contact head on aligned rows (imbalanced: compare with base_rate)"),
    ("alignment/", "robot_eval_samples", "alignment head over aligned and misaligned rows"),
    ("next_pose/", "robot_aligned_samples", "next-pose head MSE (target units) against 'the pose does not move'"),
    ("probe/contact/", "robot_probe_test_samples", "logistic probe of contact_next from a latent (aligned rows)"),
    ("probe/pose/", "robot_probe_test_samples", "ridge probe R² of pose_next from a latent (aligned rows)"),
    ("robot_eval_samples", None, "test rows the robot heads were scored on (seeded random subset)"),
    ("robot_aligned_samples", None, "of which aligned (force and proprio their own)"),
    ("robot_probe_train_samples", None, "aligned training rows the robot probes are fitted on (seeded random subset)"),
    ("robot_probe_test_samples", None, "aligned test rows the robot probes are scored on"),
]
