"""Disentanglement metrics on arrays (MIG, DCI, SAP) and a latent-cycle style score on a model.

The array metrics follow google-research/disentanglement_lib's definitions (re-written here, not copied), on
`codes` (N, D) — e.g. posterior means — and ground-truth `factors` (N, K), each factor discrete (integer
labels, or at most `num_bins` distinct values) or continuous:

  mig(codes, factors)   mutual information gap (Chen et al. 2018): for each factor k, the gap between the two
                        code dimensions with the largest mutual information with v_k, divided by H(v_k);
                        averaged over factors. Codes (always) and continuous factors are discretised into
                        `num_bins` histogram bins (disentanglement_lib's default, 20); disentanglement_lib's bins
                        are equal-width (binning="uniform"), the default here is equal-mass (binning="quantile"),
                        which makes MIG invariant to monotone per-dimension transforms of the code; the MI is the
                        plug-in estimate of the discretised pair (sklearn.metrics.mutual_info_score). A histogram
                        estimator and not mutual_info_classif's k-NN one: it is what disentanglement_lib uses,
                        it is exact for discrete data and needs no neighbour parameter; its small positive bias
                        (~ bins² / 2N nats) is why a shuffled code scores slightly above 0.
  dci(codes, factors)   disentanglement, completeness, informativeness (Eastwood & Williams 2018): one
                        gradient-boosted tree ensemble per factor (sklearn GradientBoostingClassifier for
                        discrete factors, GradientBoostingRegressor for continuous ones — disentanglement_lib's
                        choice; trees are invariant to monotone per-dimension transforms, unlike a Lasso) fitted
                        on a train split; its feature_importances_ form the (D, K) importance matrix R.
                        disentanglement = sum_j rho_j (1 - H_K(R_j. / sum R_j.)), rho_j = sum_k R_jk / sum R;
                        completeness = sum_k rho_k (1 - H_D(R_.k / sum R_.k)), rho_k = sum_j R_jk / sum R;
                        informativeness = mean over factors of the held-out accuracy (discrete) or R² clipped at
                        0 (continuous). With one factor, disentanglement is undefined (H_1) and reported as NaN.
  sap(codes, factors)   separated attribute predictability (Kumar et al. 2018): a (D, K) score matrix of how well
                        each single code dimension predicts each factor; per factor the gap between the best and
                        second-best dimension, averaged. disentanglement_lib scores a dimension by its linear R²
                        (continuous) or a linear SVM's accuracy (discrete); a linear SVM on one dimension cannot
                        separate more than two classes and a linear R² penalises invertible non-linear codes, so
                        here a score is the held-out R² (continuous) or accuracy above chance,
                        (acc - p_majority) / (1 - p_majority) (discrete, so that 0 means "no better than no code"
                        as R² does), both clipped at 0, of a one-feature decision tree with at most `num_bins`
                        leaves — the same idea, invariant to monotone transforms.

Every function returns a dict with the figure(s), the per-factor values and the number of samples it used
(`samples`, and `train_samples` / `test_samples` where there is a split). Everything is deterministic with `seed`.

On a model:
  latent_cycle(model, batch)      re-encode a private swap (decode Z_y of sample a with Z_m of sample b, encode
                                  the output) and check it lands at b's Z_m and a's Z_y
  latent_cycle_metrics(model, source, limit, seed)   the same averaged over a test source: `cycle/...` keys
  factor_metrics(codes, factors, names, prefix)      MIG, DCI and SAP under a key scheme (see docs/disentanglement.md)
"""

from __future__ import annotations

import numpy as np
import torch


# --- helpers ----------------------------------------------------------------------------------------
def _as_2d(a) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a)
    return a[:, None] if a.ndim == 1 else a


def is_discrete(factor: np.ndarray, num_bins: int = 20) -> bool:
    """A factor is discrete if it holds integers, or at most `num_bins` distinct values."""
    factor = np.asarray(factor)
    return bool(np.issubdtype(factor.dtype, np.integer) or np.issubdtype(factor.dtype, np.bool_)
                or np.unique(factor).size <= num_bins)


def _discretize(x: np.ndarray, num_bins: int, binning: str = "quantile") -> np.ndarray:
    """Histogram bins of one column: equal-mass ("quantile", the default) or equal-width ("uniform", what
    disentanglement_lib does). A constant column is one bin."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros(x.shape[0], dtype=np.int64)
    if binning == "uniform":
        edges = np.linspace(lo, hi, num_bins + 1)[1:-1]
    elif binning == "quantile":
        edges = np.unique(np.quantile(x, np.linspace(0, 1, num_bins + 1)[1:-1]))
    else:
        raise ValueError(f"binning must be 'quantile' or 'uniform', got {binning!r}")
    return np.digitize(x, edges)


def _discrete_flags(factors: np.ndarray, discrete, num_bins: int) -> list[bool]:
    k = factors.shape[1]
    if discrete is None:
        return [is_discrete(factors[:, i], num_bins) for i in range(k)]
    if isinstance(discrete, bool):
        return [discrete] * k
    flags = list(discrete)
    if len(flags) != k:
        raise ValueError(f"discrete has {len(flags)} flags for {k} factors")
    return flags


def _split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return order[n_test:], order[:n_test]


def _check(codes: np.ndarray, factors: np.ndarray) -> None:
    if codes.shape[0] != factors.shape[0]:
        raise ValueError(f"codes have {codes.shape[0]} rows, factors {factors.shape[0]}")
    if codes.shape[0] < 10:
        raise ValueError(f"need at least 10 samples, got {codes.shape[0]}")


def _labels(column: np.ndarray) -> np.ndarray:
    """Discrete factor values -> 0..C-1."""
    return np.unique(column, return_inverse=True)[1]


# --- MIG --------------------------------------------------------------------------------------------
def mutual_info_matrix(codes, factors, discrete=None, num_bins: int = 20, binning: str = "quantile") -> np.ndarray:
    """(D, K) plug-in mutual information (nats) between each binned code dimension and each (binned) factor."""
    from sklearn.metrics import mutual_info_score

    codes, factors = _as_2d(codes), _as_2d(factors)
    flags = _discrete_flags(factors, discrete, num_bins)
    zs = [_discretize(codes[:, j], num_bins, binning) for j in range(codes.shape[1])]
    vs = [_labels(factors[:, k]) if flags[k] else _discretize(factors[:, k], num_bins, binning)
          for k in range(factors.shape[1])]
    return np.array([[mutual_info_score(v, z) for v in vs] for z in zs])


def mig(codes, factors, discrete=None, num_bins: int = 20, binning: str = "quantile") -> dict:
    """Mutual information gap in [0, 1] (see the module docstring): {"mig", "per_factor", "samples"}."""
    from sklearn.metrics import mutual_info_score

    codes, factors = _as_2d(codes), _as_2d(factors)
    _check(codes, factors)
    flags = _discrete_flags(factors, discrete, num_bins)
    m = mutual_info_matrix(codes, factors, flags, num_bins, binning)  # (D, K)
    per_factor = []
    for k in range(factors.shape[1]):
        v = _labels(factors[:, k]) if flags[k] else _discretize(factors[:, k], num_bins, binning)
        h = mutual_info_score(v, v)  # the entropy H(v_k)
        top = np.sort(m[:, k])[::-1]
        second = top[1] if top.size > 1 else 0.0
        per_factor.append(float((top[0] - second) / h) if h > 0 else 0.0)
    return {"mig": float(np.mean(per_factor)), "per_factor": per_factor, "samples": int(codes.shape[0])}


# --- DCI --------------------------------------------------------------------------------------------
def _entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy (base `base`) of each row of non-negative weights (normalised; a zero row counts as uniform)."""
    p = p + 1e-11
    p = p / p.sum(axis=1, keepdims=True)
    return -(p * np.log(p)).sum(axis=1) / np.log(base)


def importance_matrix(codes, factors, discrete=None, num_bins: int = 20, test_fraction: float = 0.3,
                      seed: int = 0, n_estimators: int = 50) -> tuple[np.ndarray, list[float], int, int]:
    """(R (D, K) tree importances, per-factor held-out informativeness, train samples, test samples)."""
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    codes, factors = _as_2d(codes).astype(np.float64), _as_2d(factors)
    _check(codes, factors)
    flags = _discrete_flags(factors, discrete, num_bins)
    tr, te = _split(codes.shape[0], test_fraction, seed)
    importance = np.zeros((codes.shape[1], factors.shape[1]))
    informativeness = []
    for k in range(factors.shape[1]):
        if flags[k]:
            y = _labels(factors[:, k])
            if np.unique(y[tr]).size < 2:  # a constant factor: nothing to read, nothing to attribute
                informativeness.append(float(np.mean(y[te] == y[tr][0])))
                continue
            model = GradientBoostingClassifier(n_estimators=n_estimators, random_state=seed)
            model.fit(codes[tr], y[tr])
            informativeness.append(float(model.score(codes[te], y[te])))
        else:
            y = factors[:, k].astype(np.float64)
            model = GradientBoostingRegressor(n_estimators=n_estimators, random_state=seed)
            model.fit(codes[tr], y[tr])
            informativeness.append(max(0.0, float(model.score(codes[te], y[te]))))
        importance[:, k] = np.abs(model.feature_importances_)
    return importance, informativeness, int(tr.size), int(te.size)


def dci_from_importance(importance: np.ndarray) -> tuple[float, float, list[float], list[float]]:
    """(disentanglement, completeness, per-code disentanglement, per-factor completeness) of a (D, K) matrix."""
    d_dim, k_dim = importance.shape
    total = importance.sum()
    weights = importance if total > 0 else np.ones_like(importance)
    per_code = 1.0 - _entropy(importance, k_dim) if k_dim > 1 else np.full(d_dim, np.nan)
    per_factor = 1.0 - _entropy(importance.T, d_dim) if d_dim > 1 else np.ones(k_dim)
    if total == 0:  # nothing predicts anything: no structure to credit
        per_code, per_factor = np.zeros(d_dim) if k_dim > 1 else per_code, np.zeros(k_dim)
    rho_code = weights.sum(1) / weights.sum()
    rho_factor = weights.sum(0) / weights.sum()
    disentanglement = float(np.sum(per_code * rho_code)) if k_dim > 1 else float("nan")
    completeness = float(np.sum(per_factor * rho_factor))
    return disentanglement, completeness, [float(x) for x in per_code], [float(x) for x in per_factor]


def dci(codes, factors, discrete=None, num_bins: int = 20, test_fraction: float = 0.3, seed: int = 0,
        n_estimators: int = 50) -> dict:
    """DCI (see the module docstring): {"disentanglement", "completeness", "informativeness", "importance",
    "informativeness_per_factor", "completeness_per_factor", "train_samples", "test_samples", "samples"}.

    `n_estimators` trees per factor (sklearn's default is 100; 50 keeps evaluation cheap on a CPU).
    """
    importance, info, n_tr, n_te = importance_matrix(codes, factors, discrete, num_bins, test_fraction, seed,
                                                     n_estimators)
    d, c, _, per_factor = dci_from_importance(importance)
    return {"disentanglement": d, "completeness": c, "informativeness": float(np.mean(info)),
            "informativeness_per_factor": info, "completeness_per_factor": per_factor, "importance": importance,
            "train_samples": n_tr, "test_samples": n_te, "samples": n_tr + n_te}


# --- SAP --------------------------------------------------------------------------------------------
def sap_score_matrix(codes, factors, discrete=None, num_bins: int = 20, test_fraction: float = 0.3,
                     seed: int = 0) -> tuple[np.ndarray, int, int]:
    """(D, K) held-out predictability of each factor from each single code dimension (one-feature trees)."""
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    codes, factors = _as_2d(codes).astype(np.float64), _as_2d(factors)
    _check(codes, factors)
    flags = _discrete_flags(factors, discrete, num_bins)
    tr, te = _split(codes.shape[0], test_fraction, seed)
    scores = np.zeros((codes.shape[1], factors.shape[1]))
    leaf = max(1, tr.size // (4 * num_bins))
    for k in range(factors.shape[1]):
        y = _labels(factors[:, k]) if flags[k] else factors[:, k].astype(np.float64)
        for j in range(codes.shape[1]):
            x = codes[:, j:j + 1]
            if flags[k]:
                tree = DecisionTreeClassifier(max_leaf_nodes=max(2, num_bins), min_samples_leaf=leaf, random_state=seed)
                tree.fit(x[tr], y[tr])
                chance = np.bincount(y[tr]).max() / tr.size  # the majority class's share: the accuracy of no code
                acc = float(tree.score(x[te], y[te]))
                scores[j, k] = max(0.0, (acc - chance) / (1.0 - chance)) if chance < 1 else 0.0
            else:
                tree = DecisionTreeRegressor(max_leaf_nodes=max(2, num_bins), min_samples_leaf=leaf, random_state=seed)
                tree.fit(x[tr], y[tr])
                scores[j, k] = max(0.0, float(tree.score(x[te], y[te])))
    return scores, int(tr.size), int(te.size)


def sap(codes, factors, discrete=None, num_bins: int = 20, test_fraction: float = 0.3, seed: int = 0) -> dict:
    """SAP (see the module docstring): {"sap", "per_factor", "scores", "train_samples", "test_samples", "samples"}.

    With one code dimension the gap is to 0 (the second dimension does not exist)."""
    scores, n_tr, n_te = sap_score_matrix(codes, factors, discrete, num_bins, test_fraction, seed)
    per_factor = []
    for k in range(scores.shape[1]):
        top = np.sort(scores[:, k])[::-1]
        per_factor.append(float(top[0] - (top[1] if top.size > 1 else 0.0)))
    return {"sap": float(np.mean(per_factor)), "per_factor": per_factor, "scores": scores,
            "train_samples": n_tr, "test_samples": n_te, "samples": n_tr + n_te}


# --- under a key scheme -----------------------------------------------------------------------------
def factor_metrics(codes, factors: dict[str, np.ndarray], prefix: str, seed: int = 0, num_bins: int = 20,
                   n_estimators: int = 50, discrete: dict[str, bool] | None = None) -> dict[str, float]:
    """MIG, DCI and SAP of `codes` against the named factors, as flat keys:

      mig/<prefix>, sap/<prefix>,
      dci/disentanglement/<prefix> (only with two or more factors), dci/completeness/<prefix>,
      dci/informativeness/<prefix>, dci/informativeness/<prefix>/<factor>
    e.g. prefix "joint/class" or "private/bars/style". The sample counts go under `disentanglement_samples`.
    `discrete` says which factors are discrete where known (e.g. a pixel count with few distinct values is still a
    continuous measure); the others are judged by `is_discrete`.
    """
    names = list(factors)
    v = np.stack([np.asarray(factors[f]) for f in names], 1)
    known = discrete or {}
    discrete = [bool(known[f]) if f in known else is_discrete(v[:, k], num_bins) for k, f in enumerate(names)]
    out: dict[str, float] = {}
    out[f"mig/{prefix}"] = mig(codes, v, discrete, num_bins)["mig"]
    d = dci(codes, v, discrete, num_bins, seed=seed, n_estimators=n_estimators)
    if len(names) > 1:
        out[f"dci/disentanglement/{prefix}"] = d["disentanglement"]
    out[f"dci/completeness/{prefix}"] = d["completeness"]
    out[f"dci/informativeness/{prefix}"] = d["informativeness"]
    if len(names) > 1:
        for f, value in zip(names, d["informativeness_per_factor"]):
            out[f"dci/informativeness/{prefix}/{f}"] = value
    out[f"sap/{prefix}"] = sap(codes, v, discrete, num_bins, seed=seed)["sap"]
    return out


# --- latent cycle on a model ------------------------------------------------------------------------
@torch.no_grad()
def latent_cycle(model, batch: dict, donor: torch.Tensor | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Re-encode private swaps of one batch, per modality m with a private factor.

    Sample i is the content donor (a = i) and donor[i] the style donor (b; default: the previous sample). x̃_m is
    the decoder mean of m from Z_y(a) (inferred from every present modality, as the swap grids do) and Z_m(b);
    it is encoded again (`model.encode` on modelled inputs) into Z_m(x̃) and Z_y(x̃ alone). All are posterior means.

    Returns {m: {"style_nearer": (B,) bool   |Z_m(x̃) - Z_m(b)| < |Z_m(x̃) - Z_m(a)|,
                 "content_nearer": (B,) bool |Z_y(x̃) - Z_y(a | m)| < |Z_y(x̃) - Z_y(b | m)|, both with Z_y
                                             inferred from m alone,
                 "style_distance", "style_spread", "content_distance", "content_spread": (B,)
                 |Z_m(x̃) - Z_m(b)|, |Z_m(a) - Z_m(b)|, |Z_y(x̃) - Z_y(a | m)|, |Z_y(a | m) - Z_y(b | m)|}}.
    Uses only the family protocol: preprocess, posteriors, encode, decode, mean.
    """
    from mmvae.batch import restrict_present

    present = batch["present"]
    n = next(iter(present.values())).shape[0]
    device = next(iter(present.values())).device
    if donor is None:
        donor = torch.roll(torch.arange(n, device=device), 1)
    inputs = model.preprocess(batch["x"], batch.get("mask"))
    post = model.posteriors(batch)
    z_all = post.joint.mean
    z_priv = {m: q.mu for m, q in post.private.items()}
    cond = {c: post.encodings[c].h for c in model.conditions}
    out: dict[str, dict[str, torch.Tensor]] = {}
    for m in model.names:
        if m not in z_priv:
            continue
        z_y_m = model.posteriors(batch, joint_from=[m]).joint.mean  # Z_y(· | m alone)
        swapped = model.mean(m, model.decode(z_all, {**z_priv, m: z_priv[m][donor]}, [m], cond)[m])
        again = model.encode({**inputs, m: swapped}, restrict_present(present, [m]), batch.get("mask"))
        zm_new, zy_new = again.private[m].mu, again.joint.mean
        zm_a, zm_b = z_priv[m], z_priv[m][donor]
        zy_a, zy_b = z_y_m, z_y_m[donor]
        d_style, d_style_other = (zm_new - zm_b).norm(dim=1), (zm_new - zm_a).norm(dim=1)
        d_content, d_content_other = (zy_new - zy_a).norm(dim=1), (zy_new - zy_b).norm(dim=1)
        out[m] = {"style_nearer": d_style < d_style_other, "content_nearer": d_content < d_content_other,
                  "style_distance": d_style, "style_spread": (zm_a - zm_b).norm(dim=1),
                  "content_distance": d_content, "content_spread": (zy_a - zy_b).norm(dim=1)}
    return out


@torch.no_grad()
def latent_cycle_metrics(model, source, limit: int, seed: int = 0, batch_size: int = 512) -> dict[str, float]:
    """The latent-cycle score over at most `limit` test samples (seeded, class-balanced), per modality m:

      cycle/style/<m>              fraction of swaps whose re-encoded Z_m is nearer the style donor's (chance 0.5)
      cycle/content/<m>            fraction whose re-encoded Z_y (from x̃_m alone) is nearer the content donor's
      cycle/style_distance/<m>     mean |Z_m(x̃) - Z_m(b)| / mean |Z_m(a) - Z_m(b)| (0: exact, ~1: no closer than a)
      cycle/content_distance/<m>   mean |Z_y(x̃) - Z_y(a)| / mean |Z_y(a) - Z_y(b)|
      cycle/style, cycle/content   means over modalities; cycle_samples: the samples used.
    """
    from mmvae.batch import batch_to
    from mmvae.data.loader import limited_batches

    device = next(model.parameters()).device
    torch.manual_seed(seed)
    sums: dict[str, float] = {}
    count = 0
    for batch in limited_batches(source, batch_size, limit, seed=seed):
        batch = batch_to(batch, device)
        for m, r in latent_cycle(model, batch).items():
            for key, value in r.items():
                sums[f"{key}/{m}"] = sums.get(f"{key}/{m}", 0.0) + float(value.float().sum())
        count += next(iter(batch["present"].values())).shape[0]
    if count == 0:
        return {}
    names = sorted({k.split("/", 1)[1] for k in sums})
    out: dict[str, float] = {}
    for m in names:
        out[f"cycle/style/{m}"] = sums[f"style_nearer/{m}"] / count
        out[f"cycle/content/{m}"] = sums[f"content_nearer/{m}"] / count
        out[f"cycle/style_distance/{m}"] = sums[f"style_distance/{m}"] / max(sums[f"style_spread/{m}"], 1e-12)
        out[f"cycle/content_distance/{m}"] = sums[f"content_distance/{m}"] / max(sums[f"content_spread/{m}"], 1e-12)
    if names:
        out["cycle/style"] = float(np.mean([out[f"cycle/style/{m}"] for m in names]))
        out["cycle/content"] = float(np.mean([out[f"cycle/content/{m}"] for m in names]))
    out["cycle_samples"] = count
    return out
