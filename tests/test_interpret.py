"""Gradient attribution: known answers for IG and Jacobians, a planted signal, deletion, and the report end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mmvae.attribution_report import write_report
from mmvae.config import ModalityConfig, ModelConfig
from mmvae.interpret import (
    AttributionSettings,
    attribute,
    deletion_curves,
    encode_means,
    integrated_gradients,
    loss_term_shares,
    part_gradient_norms,
    parts_to_elements,
    shares,
    top_parts,
)
from mmvae.modalities import MODALITY_KINDS, Modality
from mmvae.modalities.image import ImageConv, ImageMLP
from mmvae.modalities.vector import Vector
from mmvae.model import FactorizedMultimodalVAE
from tests.conftest import tiny_config


# --- modality kinds the framework will have: defined here to show attribution needs nothing but the interface ---
class ForceLike(Modality):
    """(C, T) force/torque window; the parts are time steps (channels summed)."""

    kind = "test_force"
    supported_likelihoods = ("gaussian", "laplace")

    def __init__(self, name: str, config: ModalityConfig, decoder_in: int):
        super().__init__(name, config, decoder_in)
        c, t = self.shape
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(c * t, 16), nn.ReLU())
        self.feature_dim = 16
        self.decoder = nn.Sequential(nn.Linear(decoder_in, 16), nn.Tanh(), nn.Linear(16, c * t), nn.Unflatten(1, (c, t)))

    def to_parts(self, elements: torch.Tensor) -> torch.Tensor:
        return elements.sum(1)

    @property
    def parts_shape(self) -> tuple[int, ...]:
        return (self.shape[1],)


class TokenLike(Modality):
    """(T,) integer tokens with a categorical likelihood: params (B, T, V); tokens are the parts."""

    kind = "test_tokens"
    supported_likelihoods = ("categorical",)
    vocab = 7

    def __init__(self, name: str, config: ModalityConfig, decoder_in: int):
        super().__init__(name, config, decoder_in)
        (t,) = self.shape
        self.encoder = nn.Sequential(nn.Embedding(self.vocab, 4), nn.Flatten(), nn.Linear(4 * t, 16), nn.ReLU())
        self.feature_dim = 16
        self.decoder = nn.Sequential(nn.Linear(decoder_in, t * self.vocab), nn.Unflatten(1, (t, self.vocab)))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return x.long()


def _modality(cls, shape, likelihood="laplace", decoder_in=9, **kw) -> Modality:
    torch.manual_seed(0)
    return cls("m", ModalityConfig(kind=cls.kind, shape=shape, likelihood=likelihood, hidden=[6], **kw), decoder_in)


def _data_for(modality: Modality, n: int) -> torch.Tensor:
    if isinstance(modality, TokenLike):
        return torch.randint(0, TokenLike.vocab, (n, *modality.shape))
    return torch.rand(n, *modality.shape)


# --- integrated gradients -------------------------------------------------------------------------------
def test_ig_on_a_linear_map_equals_difference_times_weight():
    torch.manual_seed(0)
    w1, w2 = torch.randn(5), torch.randn(2, 3)
    x1, x2 = torch.randn(4, 5), torch.randn(4, 2, 3)
    b1, b2 = torch.randn(4, 5), torch.randn(4, 2, 3)
    forward = lambda a, b: a @ w1 + (b * w2).flatten(1).sum(1)  # noqa: E731
    (a1, a2), comp = integrated_gradients(forward, (x1, x2), (b1, b2), steps=8)
    torch.testing.assert_close(a1, (x1 - b1) * w1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a2, (x2 - b2) * w2, rtol=1e-5, atol=1e-5)
    assert comp.relative_error < 1e-5


def test_ig_completeness_on_a_trained_model(trained_run):
    from mmvae.runs import load_run

    run = load_run(trained_run)
    batch = _toy_batch(run, 12)
    result = attribute(run.model, batch, AttributionSettings(private=False, deletion=False, ig_steps=64))
    enc = encode_means(run.model, batch)
    zeros = {m: torch.zeros_like(v) for m, v in enc.inputs.items()}
    with torch.no_grad():
        mu0 = run.model.encode(zeros, enc.present).joint.mu
        logit = lambda mu: run.model.classify(mu).gather(1, result.target.view(-1, 1)).squeeze(1)  # noqa: E731
        label_gap = logit(enc.z_joint) - logit(mu0)
        joint_gap = (enc.z_joint - mu0).norm(dim=1)
    for kind, gap in (("ig/label", label_gap), ("ig/joint", joint_gap)):
        total = sum(result.maps[m][kind].sum(1) for m in result.names)  # Σ over modalities and parts
        assert (total - gap).abs().sum() / gap.abs().sum() < 0.02, kind
        assert result.completeness[kind].ok


# --- forward-mode part norms agree with dense autograd Jacobians ----------------------------------------
@pytest.mark.parametrize(
    "cls,shape,likelihood,options",
    [
        (ImageMLP, [1, 4, 5], "laplace", {}),
        (ImageMLP, [1, 4, 4], "bernoulli", {}),
        (ImageConv, [3, 4, 4], "gaussian", {"channels": [4]}),
        (Vector, [7], "gaussian", {}),
        (ForceLike, [3, 6], "laplace", {}),
        (TokenLike, [5], "categorical", {}),
    ],
)
def test_part_norms_match_autograd_jacobian(cls, shape, likelihood, options):
    f_dim, p_dim, n = 5, 4, 3
    modality = _modality(cls, shape, likelihood, decoder_in=f_dim + p_dim, options=options).double()
    torch.manual_seed(1)
    f, fp = torch.randn(n, f_dim, dtype=torch.float64), torch.randn(n, p_dim, dtype=torch.float64)
    x = _data_for(modality, n)
    x = x if not x.is_floating_point() else x.double()
    decode = lambda z, fp=fp: modality.decode(torch.cat([z, fp], -1))  # noqa: E731
    ours = part_gradient_norms(modality, decode, f, x)

    for b in range(n):
        one = lambda z, b=b: modality.decode(torch.cat([z, fp[b]])[None])  # noqa: E731
        def recon(z, b=b):
            params = one(z)
            mean = modality.mean(params)
            return (mean if mean.is_floating_point() else torch.softmax(params, -1))[0]
        jac = torch.autograd.functional.jacobian(recon, f[b], vectorize=True)  # (*elements, F), reverse mode
        squares = jac.pow(2).flatten(len(modality.shape)).sum(-1) if jac.dim() > len(modality.shape) + 1 else jac.pow(2).sum(-1)
        expected_jac = modality.to_parts(squares[None])[0].sqrt()
        loss = lambda z, b=b: modality.to_parts(-modality.log_prob_elements(one(z), x[b : b + 1]))[0]  # noqa: E731
        expected_loss = torch.autograd.functional.jacobian(loss, f[b], vectorize=True).norm(dim=-1)  # (P,)
        torch.testing.assert_close(ours["jacobian"][b], expected_jac, rtol=1e-9, atol=1e-12)
        tol = {"rtol": 1e-5, "atol": 1e-7} if likelihood == "categorical" else {"rtol": 1e-9, "atol": 1e-12}
        torch.testing.assert_close(ours["loss"][b], expected_loss, check_dtype=False, **tol)  # categorical: float32
        whole = lambda z, b=b: loss(z, b).sum()  # noqa: E731  the modality's whole loss term
        expected_term = torch.autograd.functional.jacobian(whole, f[b]).norm()
        torch.testing.assert_close(ours["loss_term"][b], expected_term, check_dtype=False, **tol)


def test_parts_to_elements_is_the_adjoint_grouping():
    img = _modality(ImageConv, [3, 8, 8], "laplace", options={"channels": [4]})
    part_mask = torch.zeros(2, 64, dtype=torch.bool)
    part_mask[0, 9] = True
    elements = parts_to_elements(img, part_mask, torch.Size([2, 3, 8, 8]))
    assert elements[0, :, 1, 1].all() and elements.sum() == 3  # pixel 9 = (row 1, col 1), all channels


# --- a planted signal is found exactly --------------------------------------------------------------------
def test_planted_signal_parts_are_ranked_first():
    torch.manual_seed(0)
    cfg = ModelConfig(
        joint_dim=3, joint_feature_dim=5, fusion_hidden=[8], label_hidden=[8], num_classes=3,
        modalities={
            "img": {"kind": "image_mlp", "shape": [1, 6, 6], "hidden": [8], "private_dim": 2, "private_feature_dim": 4},
            "vec": {"kind": "vector", "shape": [5], "hidden": [8], "private_dim": 2, "private_feature_dim": 4,
                    "likelihood": "gaussian"},
        },
    )
    model = FactorizedMultimodalVAE(cfg).eval()
    joint_parts, private_parts = [3, 10, 17, 30], [0, 21, 35]
    first, last = model.modalities["img"].decoder[0][0], model.modalities["img"].decoder[0][2]
    with torch.no_grad():  # hidden units 0-3 read only F_y and feed only joint_parts; units 4-7 read only F_img
        first.weight[4:, :5] = 0
        first.weight[:4, 5:] = 0
        first.bias.fill_(10.0)  # keep every ReLU open so no planted path is switched off by chance
        last.weight.zero_()
        last.weight[joint_parts, :4] = torch.randn(len(joint_parts), 4)
        last.weight[private_parts, 4:] = torch.randn(len(private_parts), 4)
    batch = {"x": {"img": torch.randint(0, 256, (6, 1, 6, 6), dtype=torch.uint8), "vec": torch.randn(6, 5)},
             "present": {"img": torch.ones(6, dtype=torch.bool), "vec": torch.ones(6, dtype=torch.bool)},
             "y": torch.zeros(6, dtype=torch.long)}
    result = attribute(model, batch, AttributionSettings(integrated_gradients=False, deletion=False))
    for kind, planted in [("joint/loss", joint_parts), ("joint/jacobian", joint_parts),
                          ("private/loss", private_parts), ("private/jacobian", private_parts)]:
        values = result.maps["img"][kind]
        for b in range(values.shape[0]):
            top = {row["part"] for row in top_parts(values[b], len(planted), (6, 6))}
            assert top == set(planted), (kind, b)
        others = torch.ones(36, dtype=torch.bool)
        others[planted] = False
        assert values[:, others].abs().max() == 0 and (values[:, planted] > 0).all()


# --- deletion -------------------------------------------------------------------------------------------------
def test_deletion_prefers_a_correct_ranking_over_random():
    vec = _modality(Vector, [10], "gaussian")
    x = torch.ones(8, 10)
    planted = [2, 5]

    def score(masked):  # only the planted parts matter: degradation = planted mass removed
        reps = masked.shape[0] // x.shape[0]
        return (x.repeat(reps, 1) - masked)[:, planted].sum(1)

    good = torch.zeros(8, 10)
    good[:, planted] = 1.0
    fractions = [i / 10 for i in range(11)]
    right, wrong = deletion_curves(score, vec, x, {"right": good, "wrong": -good}, fractions, 4, torch.Generator().manual_seed(0))
    assert right.random == wrong.random  # one random baseline shared by every ranking
    assert right.top[2] == 2.0 and right.top[1] == 1.0 and right.area_ratio > 1.5
    assert wrong.area_ratio < 1.0
    assert right.top[-1] == right.random[-1] == 2.0  # everything masked: both orders agree


def test_deletion_interval_passes_a_planted_signal_and_not_a_random_ranking():
    """Known answer: only parts 2 and 5 matter. The right ranking's interval lies above 1 (pass); a random
    ranking (negative control) gets an interval containing 1 and is not a pass."""
    vec = _modality(Vector, [10], "gaussian")
    torch.manual_seed(3)
    n, planted = 64, [2, 5]
    x = torch.rand(n, 10) + 0.5

    def score(masked):
        reps = masked.shape[0] // n
        return (x.repeat(reps, 1) - masked)[:, planted].sum(1)

    right = torch.zeros(n, 10)
    right[:, planted] = 1.0
    noise = torch.rand(n, 10, generator=torch.Generator().manual_seed(7))
    good, control = deletion_curves(score, vec, x, {"right": right, "random": noise}, [i / 10 for i in range(11)],
                                    8, torch.Generator().manual_seed(0), "test", reference=float(score(0 * x).mean()))
    assert good.verdict == "pass" and good.ci[0] > 1.5 and good.ci[0] <= good.area_ratio <= good.ci[1]
    assert control.ci[0] < 1 < control.ci[1] and control.verdict == "fail"
    assert 0.8 < control.area_ratio < 1.2
    assert good.samples == control.samples == n and good.repeats == 8
    assert len(good.random_areas) == 8 and len(good.random_areas[0]) == n
    # The interval is seeded: the same inputs give the same interval.
    again = deletion_curves(score, vec, x, {"right": right}, [i / 10 for i in range(11)], 8,
                            torch.Generator().manual_seed(0), "test", reference=float(score(0 * x).mean()))[0]
    assert again.ci == good.ci


def test_deletion_with_areas_too_small_against_the_unmasked_score_is_na():
    vec = _modality(Vector, [10], "gaussian")
    x = torch.rand(16, 10) + 0.5

    def tiny(masked):  # masking changes the score by ~1e-7 of an unmasked score of about 1
        reps = masked.shape[0] // x.shape[0]
        return 1e-7 * (x.repeat(reps, 1) - masked)[:, :3].sum(1)

    ranking = torch.zeros(16, 10)
    ranking[:, :3] = 1.0
    (curve,) = deletion_curves(tiny, vec, x, {"r": ranking}, [i / 10 for i in range(11)], 4,
                               torch.Generator().manual_seed(0), "test", reference=1.0)
    assert curve.area_top > curve.area_random > 0  # the old code called this ratio (> 1) a pass
    assert curve.area_ratio is None and curve.ci is None and curve.verdict == "n/a"


def test_loss_shares_compare_whole_loss_terms_not_part_counts():
    """Two modalities with 4 and 16 parts whose whole loss terms have the same gradient g with respect to F_y
    get equal shares; summing per-part norms (the old share) would give the 16-part modality more."""
    f_dim, n = 3, 2
    a, b = _modality(Vector, [4], "laplace"), _modality(Vector, [16], "laplace")
    g, v = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([2.0, -1.0, 0.0])  # v ⟂ g
    w_a = (g / 4).expand(4, f_dim)
    w_b = g / 16 + torch.tensor([(-1.0) ** t for t in range(16)])[:, None] * v  # the ±v parts cancel in the sum
    f = torch.randn(n, f_dim)
    norms = {}
    for name, mod, w in (("a", a, w_a), ("b", b, w_b)):
        x = torch.full((n, w.shape[0]), -100.0)  # x below the mean everywhere: ∂ℓ_t/∂x̂_t = 1 / scale
        norms[name] = part_gradient_norms(mod, lambda z, w=w: z @ w.T, f, x, ("loss",))
    torch.testing.assert_close(norms["a"]["loss_term"], norms["b"]["loss_term"])
    torch.testing.assert_close(norms["a"]["loss_term"], (g.norm() / a.likelihood.scale).expand(n))
    equal = loss_term_shares({m: v["loss_term"] for m, v in norms.items()}, {"a": 1.0, "b": 1.0})
    torch.testing.assert_close(equal["a"], torch.full((n,), 0.5))
    torch.testing.assert_close(equal["b"], torch.full((n,), 0.5))
    old_a = norms["a"]["loss"].sum(1) / (norms["a"]["loss"].sum(1) + norms["b"]["loss"].sum(1))
    assert (old_a < 0.2).all()  # what the per-part sum made of it
    weighted = loss_term_shares({m: v["loss_term"] for m, v in norms.items()}, {"a": 2.0, "b": 1.0})
    torch.testing.assert_close(weighted["a"], torch.full((n,), 2 / 3))


def test_shares_and_settings_validation():
    s = shares(torch.tensor([[1.0, -3.0], [0.0, 0.0]]))
    torch.testing.assert_close(s, torch.tensor([[0.25, -0.75], [0.0, 0.0]]))
    with pytest.raises(ValueError):
        AttributionSettings(modes=("gradient",))
    with pytest.raises(ValueError):
        AttributionSettings(deletion_fractions=(0.5, 0.1))


# --- future modality kinds work end to end ------------------------------------------------------------------
def test_sequence_and_token_modalities_end_to_end(monkeypatch, tmp_path):
    monkeypatch.setitem(MODALITY_KINDS, ForceLike.kind, ForceLike)
    monkeypatch.setitem(MODALITY_KINDS, TokenLike.kind, TokenLike)
    torch.manual_seed(0)
    cfg = ModelConfig(joint_dim=3, joint_feature_dim=6, fusion_hidden=[8], label_hidden=[8], num_classes=4, modalities={
        "force": {"kind": "test_force", "shape": [3, 12], "private_feature_dim": 4},
        "text": {"kind": "test_tokens", "shape": [5], "likelihood": "categorical", "private_feature_dim": 4},
        "img": {"kind": "image_mlp", "shape": [1, 4, 4], "hidden": [8], "private_feature_dim": 4},
    })
    model = FactorizedMultimodalVAE(cfg).eval()
    n = 5
    batch = {"x": {"force": torch.randn(n, 3, 12), "text": torch.randint(0, 7, (n, 5)),
                   "img": torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8)},
             "present": {m: torch.ones(n, dtype=torch.bool) for m in cfg.modalities}, "y": torch.arange(n) % 4}
    result = attribute(model, batch, AttributionSettings(ig_steps=16, deletion_repeats=2))
    assert result.maps["force"]["joint/jacobian"].shape == (n, 12)
    assert result.maps["text"]["joint/loss"].shape == (n, 5) and (result.maps["text"]["joint/jacobian"] > 0).all()
    assert (result.maps["text"]["ig/label"] == 0).all()  # integer tokens are not interpolated
    assert result.completeness["ig/label"].relative_error < 0.05
    assert set(result.deletion) == {"force", "img"}
    meta = {"model": {"run_dir": "none"}, "data": {"split": "test", "provenance": {}}, "indices": list(range(n))}
    paths = write_report(result, model, AttributionSettings(), meta, tmp_path, show=2, top_k=3)
    doc = json.loads(paths["json"].read_text())
    assert doc["samples"][0]["modalities"]["force"]["top_k"]["joint/loss"][0]["coords"][0] < 12
    assert paths["html"].read_text().count("data:image/png;base64,") > 5


# --- the command line, end to end ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from mmvae.train import train

    root = tmp_path_factory.mktemp("attr")
    run_dir = root / "run"
    train(tiny_config(root / "runs"), run_dir)
    return run_dir


def _toy_batch(run, n):
    from mmvae.data.registry import build_sources

    _, test = build_sources(run.config)
    return test.gather(torch.arange(n))


def test_attribute_command_writes_a_self_contained_deterministic_report(trained_run, tmp_path, capsys):
    from mmvae.cli import main

    # 32 steps (the default): on the seeded balanced sample, 16 Gauss-Legendre steps leave a 5.2 % completeness gap.
    args = ["attribute", str(trained_run), "--samples", "8", "--show", "3", "--seed", "5", "--ig-steps", "32"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    page = (tmp_path / "a" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert "://" not in page and "<script" not in page and "<link" not in page  # nothing to fetch
    for text in ("Mean maps per class", "deletion", "provenance", "toy (synthetic bars + waves)", "Sample 2"):
        assert text in page
    doc = json.loads((tmp_path / "a" / "attributions.json").read_text())
    assert doc["model"]["step"] > 0 and doc["model"]["config_name"] == "tiny"
    assert doc["data"]["provenance"]["dataset"].startswith("toy") and len(doc["data"]["indices"]) == 8
    assert len(doc["samples"]) == 8
    sample = doc["samples"][0]["modalities"]
    assert len(sample["bars"]["raw"]["joint/loss"]) == 256 and len(sample["wave"]["raw"]["joint/jacobian"]) == 32
    assert abs(sum(sample[m]["share"]["joint/loss"] for m in sample) - 1) < 1e-6
    # Shares: loss mode from the weighted whole loss terms; Jacobian mode has none, with a reason.
    summary = doc["summary"]
    assert "joint/jacobian" not in sample["bars"]["share"] and "joint/jacobian" in summary["no_modality_share"]
    weights = summary["loss_term_weights"]["weights"]
    assert weights == {"bars": pytest.approx(32 / 256), "wave": 1.0}  # recon_weight auto: smallest / size
    weighted = {m: weights[m] * sample[m]["loss_term_gradient"] for m in sample}
    assert sample["bars"]["share"]["joint/loss"] == pytest.approx(weighted["bars"] / sum(weighted.values()), rel=1e-5)
    # Deletion: every curve carries its interval, its counts and a verdict that needs the interval above 1.
    for curve in (c for curves in summary["deletion"].values() for c in curves):
        assert curve["samples"] == 8 and curve["random_repeats"] == AttributionSettings().deletion_repeats
        assert curve["verdict"] in ("pass", "fail", "n/a") and curve["faithful"] == (curve["verdict"] == "pass")
        if curve["verdict"] == "n/a":
            assert curve["ci"] is None and curve["area_random"] <= curve["area_floor"]
        else:
            low, high = (float("-inf") if curve["ci"][0] is None else curve["ci"][0],
                         float("inf") if curve["ci"][1] is None else curve["ci"][1])  # None: unbounded
            assert low <= curve["area_ratio"] <= high
            assert (curve["verdict"] == "pass") == (low > 1)
    # The console prints every verdict with its interval.
    lines = [line for line in out.splitlines() if line.startswith("deletion ")]
    assert len(lines) == sum(len(c) for c in summary["deletion"].values())
    assert all("% CI [" in line or ": n/a (" in line for line in lines)
    # The page: colour key before the maps (class means, samples), provenance folded away at the end.
    assert page.index("Colour key") < page.index("Mean maps per class") < page.index("Sample 0")
    assert page.index("<details>") < page.index("run_dir") and "</details>" in page
    assert all(c["ok"] for c in doc["summary"]["completeness"].values())
    assert {c["ranking"] for c in doc["summary"]["deletion"]["bars"]} == {"ig/label", "joint/loss", "joint/jacobian", "ig/joint"}
    # Same seed, same bytes.
    assert (tmp_path / "b" / "attributions.json").read_bytes() == (tmp_path / "a" / "attributions.json").read_bytes()
    assert (tmp_path / "b" / "report.html").read_text() == page
