"""Known answers of the disentanglement metrics (MIG, DCI, SAP), the latent-cycle score, and their wiring."""

from __future__ import annotations

import numpy as np
import pytest

from mmvae.disentanglement import dci, factor_metrics, mig, sap

N = 1200


def _factors(seed: int = 0) -> np.ndarray:
    """Two independent factors: a 5-class discrete one and a continuous one in [0, 1)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, 5, N).astype(np.float64), rng.random(N)], 1)


DISCRETE = [True, False]


@pytest.fixture(scope="module")
def factors() -> np.ndarray:
    return _factors()


def _all(codes, factors):
    return mig(codes, factors, DISCRETE), dci(codes, factors, DISCRETE, n_estimators=30), sap(codes, factors, DISCRETE)


def test_perfect_code_scores_one(factors):
    for codes in (factors, np.stack([np.exp(factors[:, 0]), factors[:, 1] ** 3], 1)):  # identity, invertible transform
        m, d, s = _all(codes, factors)
        assert m["mig"] > 0.95, m
        assert d["disentanglement"] > 0.95 and d["completeness"] > 0.95, d
        assert d["informativeness"] > 0.95, d
        assert s["sap"] > 0.9, s
        assert m["samples"] == N and d["train_samples"] + d["test_samples"] == N and d["test_samples"] == 360


def test_constant_code_scores_zero(factors):
    m, d, s = _all(np.zeros((N, 3)), factors)
    assert m["mig"] == 0.0
    assert d["disentanglement"] == 0.0 and d["completeness"] == 0.0
    # informativeness at chance: the majority class (~0.2 of 5) for the discrete factor, R² 0 for the continuous
    assert d["informativeness_per_factor"][0] < 0.3 and d["informativeness_per_factor"][1] == 0.0
    assert s["sap"] == pytest.approx(0.0, abs=1e-12)


def test_shuffled_code_scores_near_zero(factors):
    codes = factors[np.random.default_rng(1).permutation(N)]
    m, d, s = _all(codes, factors)
    assert m["mig"] < 0.05, m
    assert d["informativeness_per_factor"][0] < 0.3 and d["informativeness_per_factor"][1] < 0.05, d
    assert d["disentanglement"] < 0.05, d
    # Completeness is not ~0 here (0.47 measured): trees fitted on noise still split mostly on one dimension.
    # DCI's d and c only mean something where informativeness is above chance (docs/disentanglement.md).
    assert s["sap"] < 0.05, s


def test_one_factor_over_two_dimensions_is_penalised(factors):
    noise = np.random.default_rng(2).normal(0, 1e-3, N)
    codes = np.stack([factors[:, 0], factors[:, 0] + noise, factors[:, 1]], 1)  # factor 0 read twice
    m, d, s = _all(codes, factors)
    assert m["per_factor"][0] < 0.1 and m["per_factor"][1] > 0.9  # no gap for the duplicated factor (0.94: plug-in MI bias)
    assert m["mig"] < 0.6
    assert d["completeness_per_factor"][0] < 0.8 < d["completeness_per_factor"][1], d
    assert s["per_factor"][0] < 0.1 < 0.9 < s["per_factor"][1], s


def test_two_factors_in_one_dimension_is_penalised(factors):
    rng = np.random.default_rng(3)
    codes = np.stack([factors[:, 0] + factors[:, 1], rng.normal(size=N)], 1)  # both factors in dimension 0
    perfect = dci(factors, factors, DISCRETE, n_estimators=30)
    mixed = dci(codes, factors, DISCRETE, n_estimators=30)
    assert mixed["informativeness"] > 0.8  # everything is still there (0.88: a sawtooth for 30 trees) ...
    assert mixed["disentanglement"] < 0.5 < 0.95 < perfect["disentanglement"]  # ... but not separated
    # MIG is not built to see this (a factor-wise gap, like completeness): it stays high (0.66 measured)
    assert mig(codes, factors, DISCRETE)["mig"] > 0.5


def test_deterministic_with_a_seed(factors):
    codes = factors + np.random.default_rng(4).normal(0, 0.3, factors.shape)
    a, b = dci(codes, factors, DISCRETE, seed=5, n_estimators=20), dci(codes, factors, DISCRETE, seed=5, n_estimators=20)
    assert np.array_equal(a["importance"], b["importance"]) and a["informativeness"] == b["informativeness"]
    assert sap(codes, factors, DISCRETE, seed=5) ["sap"] == sap(codes, factors, DISCRETE, seed=5)["sap"]
    assert mig(codes, factors)["mig"] == mig(codes, factors)["mig"]


def test_factor_metrics_keys(factors):
    out = factor_metrics(factors, {"cls": factors[:, 0].astype(int), "x": factors[:, 1]}, "private/m/style",
                         n_estimators=10)
    assert set(out) == {"mig/private/m/style", "sap/private/m/style", "dci/disentanglement/private/m/style",
                        "dci/completeness/private/m/style", "dci/informativeness/private/m/style",
                        "dci/informativeness/private/m/style/cls", "dci/informativeness/private/m/style/x"}
    one = factor_metrics(factors[:, :1], {"class": factors[:, 0].astype(int)}, "joint/class", n_estimators=10)
    assert "dci/disentanglement/joint/class" not in one and one["mig/joint/class"] > 0.95


# --- the latent cycle and the toy wiring, on a tiny trained run -------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import mmvae
    from tests.conftest import tiny_config

    run_dir = tmp_path_factory.mktemp("dis") / "run"
    mmvae.fit(tiny_config(run_dir.parent / "runs"), run_dir)
    return mmvae.load(run_dir)


def test_latent_cycle_on_a_batch_and_on_a_perfect_identity():
    """With the style donor equal to the content donor the swap is a reconstruction; shapes and ranges hold."""
    import torch

    import mmvae
    from mmvae.data.toy import make_toy
    from mmvae.disentanglement import latent_cycle
    from tests.conftest import tiny_config

    model = mmvae.build(tiny_config()).eval()
    batch = make_toy(32, seed=0).gather(torch.arange(32))
    out = latent_cycle(model, batch)
    assert set(out) == {"bars", "wave"}
    for r in out.values():
        assert r["style_nearer"].shape == (32,) and r["style_nearer"].dtype == torch.bool
        assert (r["style_distance"] >= 0).all()
    same = latent_cycle(model, batch, donor=torch.arange(32))  # a == b: distances to both donors tie
    for r in same.values():
        assert not r["style_nearer"].any() and torch.allclose(r["style_spread"], torch.zeros(32))


def test_evaluate_reports_cycle_and_disentanglement_keys(tiny_run, tmp_path):
    from mmvae.data.registry import build_sources
    from mmvae.evaluate import evaluate_run, metric_help

    train, test = build_sources(tiny_run.config)
    metrics = evaluate_run(tiny_run, test, tmp_path / "eval", iwae_samples=0, train=train, generative_limit=128,
                           probe_train=256)
    expected = ["cycle/style/bars", "cycle/style/wave", "cycle/content/bars", "cycle/style", "cycle/content",
                "cycle/style_distance/bars", "cycle/content_distance/wave",
                "mig/joint/class", "dci/completeness/joint/class", "dci/informativeness/joint/class", "sap/joint/class",
                *(f"{k}/private/{m}/style" for m in ("bars", "wave")
                  for k in ("mig", "sap", "dci/disentanglement", "dci/completeness", "dci/informativeness")),
                "dci/informativeness/private/wave/style/amplitude"]
    for key in expected:
        assert key in metrics, key
        assert metric_help(key)[1], key
        assert metric_help(key)[0] in metrics, key  # the count of samples it used is reported
        low, high = (0.0, 10.0) if "distance" in key else (0.0, 1.0)
        assert low <= metrics[key] <= high, (key, metrics[key])
    assert metrics["cycle_samples"] == 128 and metrics["disentanglement_samples"] == 128
    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| mig/joint/class |" in md and "| cycle/style |" in md
