"""The zoo's shared-latent families (mvae, mmvae, mopoe) and their fusions (moe, mopoe), with known answers.

A mixture of one expert is that expert; MoPoE over one subset is PoE; with nothing present both are the prior;
IWAE with K = 1 is the ELBO; DReG is unbiased for the IWAE gradient (closed form for K = 1), has lower encoder
variance, is exactly zero at the true posterior and leaves the decoder gradient unchanged; absent modalities'
encoders get exactly zero gradient. Every family trains, evaluates, samples, swaps and attributes through the CLI.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmvae.cli import main as cli
from mmvae.config import ConfigError, ModelConfig, load_config
from mmvae.data.toy import make_toy
from mmvae.families import build_model
from mmvae.families.mmvae_moe import dreg_bound, iwae_bound
from mmvae.fusion import MixtureOfExpertsFusion, MixtureOfProductsFusion, ProductOfExpertsFusion
from mmvae.latent import DiagonalGaussian, MixtureOfDiagonalGaussians, standard_normal_log_prob
from mmvae.losses import all_term_names, compute_loss
from mmvae.train import train
from tests.conftest import REPO, tiny_config

SHARED = ("model.modalities.bars.private_dim=0", "model.modalities.wave.private_dim=0", "model.num_classes=0")
FAMILY_ROWS = {
    "mvae": ("model.family=mvae", "model.fusion=poe"),
    "mmvae_dreg": ("model.family=mmvae", "model.fusion=moe", "model.family_options={K: 3}"),
    "mmvae_iwae_tight": ("model.family=mmvae", "model.fusion=moe",
                         "model.family_options={K: 3, estimator: iwae, bound: tight}"),
    "mopoe": ("model.family=mopoe", "model.fusion=mopoe"),
}


def family_config(tmp_path, row: str, *more: str):
    return tiny_config(tmp_path, (*SHARED, *FAMILY_ROWS[row], *more))


def toy_batch(n=16, seed=1):
    return make_toy(n, seed=seed).gather(torch.arange(n))


def features(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(b, 5, generator=g), "b": torch.randn(b, 7, generator=g)}


def presence(a: bool, b: bool, n=6):
    return {"a": torch.full((n,), a), "b": torch.full((n,), b)}


# --- fusions --------------------------------------------------------------------------------------------------
def test_a_moe_of_one_present_expert_is_that_expert():
    torch.manual_seed(0)
    fusion = MixtureOfExpertsFusion({"a": 5, "b": 7}, 3, [8])
    feats = features()
    mix = fusion(feats, presence(True, False))
    expert = fusion.experts_of(feats)["a"]
    z = torch.randn(9, 6, 3)
    torch.testing.assert_close(mix.log_prob(z), expert.log_prob(z))
    torch.testing.assert_close(mix.mean, expert.mu)
    assert mix.kl_to_prior() is None
    torch.testing.assert_close(mix.mean_component_kl(), expert.kl_to_standard_normal())
    draws = mix.rsample(20000)  # (N, B, D): every draw from expert a
    torch.testing.assert_close(draws.mean(0), expert.mu, atol=0.05, rtol=0)
    torch.testing.assert_close(draws.std(0), expert.std, atol=0.05, rtol=0.05)


def test_stratified_draws_come_from_each_expert():
    torch.manual_seed(0)
    fusion = MixtureOfExpertsFusion({"a": 5, "b": 7}, 3, [8])
    feats = features()
    mix = fusion(feats, presence(True, True))
    experts = fusion.experts_of(feats)
    each = mix.rsample_each(20000)  # (K, M + 1, B, D)
    assert each.shape == (20000, 3, 6, 3)
    for c, m in enumerate("ab"):
        torch.testing.assert_close(each[:, c].mean(0), experts[m].mu, atol=0.05, rtol=0)
        torch.testing.assert_close(each[:, c].std(0), experts[m].std, atol=0.05, rtol=0.05)
    torch.testing.assert_close(mix.weights, torch.tensor([[0.5] * 6, [0.5] * 6, [0.0] * 6]))


def test_negative_control_a_mixture_of_two_experts_is_neither_expert_nor_their_product():
    torch.manual_seed(0)
    fusion = MixtureOfExpertsFusion({"a": 5, "b": 7}, 3, [8])
    feats = features()
    mix = fusion(feats, presence(True, True))
    experts = fusion.experts_of(feats)
    poe = ProductOfExpertsFusion({"a": 5, "b": 7}, 3, [8])
    poe.load_state_dict(fusion.state_dict())
    z = torch.randn(9, 6, 3)
    lp = mix.log_prob(z)
    for other in (experts["a"], experts["b"], poe(feats, presence(True, True))):
        assert (lp - other.log_prob(z)).abs().max() > 0.1
    # The known answer instead: log((q_a + q_b) / 2).
    expected = torch.logaddexp(experts["a"].log_prob(z), experts["b"].log_prob(z)) - math.log(2)
    torch.testing.assert_close(lp, expected)
    torch.testing.assert_close(mix.mean, (experts["a"].mu + experts["b"].mu) / 2)


def test_mixture_log_prob_is_stable_far_from_every_component():
    mix = MixtureOfDiagonalGaussians(torch.tensor([[[0.0]], [[1.0]]]), torch.full((2, 1, 1), -6.0),
                                     torch.tensor([[0.5], [0.5]]))
    z = torch.full((1, 1), 40.0)  # every component's density underflows to 0 in float32
    lp = mix.log_prob(z)
    assert torch.isfinite(lp).all()
    near = DiagonalGaussian(torch.tensor([[1.0]]), torch.tensor([[-6.0]])).log_prob(z)
    torch.testing.assert_close(lp, near + math.log(0.5))  # the nearer component dominates


@pytest.mark.parametrize("fusion_class", [MixtureOfExpertsFusion, MixtureOfProductsFusion])
def test_with_no_modality_present_a_mixture_fusion_is_the_prior(fusion_class):
    torch.manual_seed(0)
    fusion = fusion_class({"a": 5, "b": 7}, 3, [8])
    mix = fusion(features(), presence(False, False))
    z = torch.randn(4, 6, 3)
    torch.testing.assert_close(mix.log_prob(z), standard_normal_log_prob(z))
    assert torch.equal(mix.mean, torch.zeros(6, 3))
    assert torch.isfinite(mix.rsample(5)).all()
    assert torch.equal(mix.mean_component_kl(), torch.zeros(6))


def test_mopoe_over_one_subset_is_poe():
    torch.manual_seed(0)
    mopoe = MixtureOfProductsFusion({"a": 5, "b": 7}, 3, [8])
    poe = ProductOfExpertsFusion({"a": 5, "b": 7}, 3, [8])
    poe.load_state_dict(mopoe.state_dict())  # the same experts
    feats = features()
    z = torch.randn(9, 6, 3)
    for present in (presence(True, False), presence(False, True)):  # one modality: its one subset
        mix, ref = mopoe(feats, present), poe(feats, present)
        torch.testing.assert_close(mix.log_prob(z), ref.log_prob(z))
        torch.testing.assert_close(mix.mean, ref.mu)
        torch.testing.assert_close(mix.mean_component_kl(), ref.kl_to_standard_normal())
    # Both present: components {a}, {b}, {a, b} weigh 1/3 each, and {a, b} is the poe fusion's posterior.
    both = presence(True, True)
    mix = mopoe(feats, both)
    assert mopoe.subsets == [(), ("a",), ("b",), ("a", "b")]
    torch.testing.assert_close(mix.weights, torch.tensor([[0.0] * 6] + [[1 / 3] * 6] * 3))
    full = poe(feats, both)
    torch.testing.assert_close(mix.mu[3], full.mu)
    torch.testing.assert_close(mix.logvar[3], full.logvar)
    kls = [poe(feats, p).kl_to_standard_normal() for p in (presence(True, False), presence(False, True), both)]
    torch.testing.assert_close(mix.mean_component_kl(), sum(kls) / 3)
    # Negative control: with both present the mixture is not the full product.
    assert (mix.log_prob(z) - full.log_prob(z)).abs().max() > 0.1


@pytest.mark.parametrize("fusion_class", [MixtureOfExpertsFusion, MixtureOfProductsFusion])
def test_an_absent_modality_gets_exactly_zero_gradient_through_a_mixture_fusion(fusion_class):
    torch.manual_seed(0)
    fusion = fusion_class({"a": 5, "b": 7}, 3, [8])
    feats = {m: f.requires_grad_() for m, f in features().items()}
    present = {"a": torch.tensor([True, True, False, True, False, True]),
               "b": torch.tensor([False, True, False, False, False, True])}
    mix = fusion(feats, present)
    z = mix.rsample_each(3)  # (K, C, B, D): every component drawn, absent ones too
    (mix.log_prob(z).sum() + mix.mean.sum() + mix.mean_component_kl().sum() + mix.log_prob(z.flatten(0, 1)).sum()).backward()
    absent_b = ~present["b"]
    assert torch.all(feats["b"].grad[absent_b] == 0) and feats["b"].grad[~absent_b].abs().sum() > 0
    assert torch.all(feats["a"].grad[~present["a"]] == 0) and feats["a"].grad[present["a"]].abs().sum() > 0


# --- families: objectives --------------------------------------------------------------------------------------
def _loss(model, cfg, batch, seed=0):
    torch.manual_seed(seed)
    return compute_loss(model, model(batch), batch, cfg.loss, step=10**6)


def test_mmvae_iwae_with_one_sample_equals_the_stratified_elbo(tmp_path):
    iwae = family_config(tmp_path, "mmvae_dreg", "model.family_options={K: 1, estimator: iwae}")
    elbo = family_config(tmp_path, "mmvae_dreg", "model.family_options={K: 1, estimator: elbo}")
    torch.manual_seed(0)
    model = build_model(iwae.model)
    twin = build_model(elbo.model)
    twin.load_state_dict(model.state_dict())
    batch = toy_batch()
    batch["present"]["wave"][:5] = False  # some samples have one expert only
    a, b = _loss(model, iwae, batch), _loss(twin, elbo, batch)
    assert set(a.terms) == {"nll/iwae"} and set(b.terms) == {"recon/bars", "recon/wave", "kl/joint"}
    assert b.weights["recon/bars"] == pytest.approx(32 / 256)  # the size correction, inside log w for iwae
    torch.testing.assert_close(a.total, b.total, rtol=1e-6, atol=1e-4)
    # Negative control: with K = 64 the bound is tighter than the ELBO of as many draws (a smaller loss).
    k4 = family_config(tmp_path, "mmvae_dreg", "model.family_options={K: 64, estimator: iwae}")
    model4 = build_model(k4.model)
    model4.load_state_dict(model.state_dict())
    elbo64 = family_config(tmp_path, "mmvae_dreg", "model.family_options={K: 64, estimator: elbo}")
    with torch.no_grad():
        assert float(_loss(model4, k4, batch).total) < float(_loss(twin, elbo64, batch).total) - 1e-3


def test_mmvae_dreg_has_the_iwae_value_and_the_tight_bound_is_tighter(tmp_path):
    torch.manual_seed(0)
    batch = toy_batch()
    values = {}
    for name, opts in {"dreg": "{K: 5}", "iwae": "{K: 5, estimator: iwae}", "tight": "{K: 5, estimator: iwae, bound: tight}",
                       "tight_dreg": "{K: 5, bound: tight}"}.items():
        cfg = family_config(tmp_path, "mmvae_dreg", f"model.family_options={opts}")
        torch.manual_seed(0)
        model = build_model(cfg.model)  # the same weights in every row (same seed)
        values[name] = float(_loss(model, cfg, batch, seed=1).total)
    assert values["dreg"] == pytest.approx(values["iwae"], rel=1e-6)
    assert values["tight_dreg"] == pytest.approx(values["tight"], rel=1e-6)
    assert values["tight"] <= values["iwae"] + 1e-4  # log of the mean over experts >= mean of the logs (Jensen)


def test_iwae_bound_tight_with_one_expert_equals_looser_and_rows_without_experts_add_nothing():
    log_w = torch.randn(4, 2, 3)
    one = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # row 2 has no expert
    torch.testing.assert_close(iwae_bound(log_w, one, tight=True), iwae_bound(log_w, one, tight=False))
    assert iwae_bound(log_w, one, tight=True)[2] == 0
    expected = torch.logsumexp(log_w[:, 0, 0], 0) - math.log(4)
    torch.testing.assert_close(iwae_bound(log_w, one, tight=False)[0], expected)


# DReG on a 1-D linear-Gaussian model with a closed form: p(z) = N(0, 1), p(x | z) = N(theta z, 1), q = N(mu, s^2).
# R replicas in the batch dimension give R independent gradient estimates at once.
X = 1.5


def one_d_gradients(mu: float, logvar: float, theta: float, k: int, estimator: str, replicas=20000, seed=0):
    torch.manual_seed(seed)
    m = torch.full((replicas, 1), mu, requires_grad=True)
    lv = torch.full((replicas, 1), logvar, requires_grad=True)
    th = torch.full((replicas, 1), theta, requires_grad=True)
    q = MixtureOfDiagonalGaussians(m.unsqueeze(0), lv.unsqueeze(0), torch.ones(1, replicas))
    z = q.rsample_each(k)  # (K, 1, R, 1)
    scored = q.detach() if estimator == "dreg" else q
    log_lik = -0.5 * (math.log(2 * math.pi) + (X - th * z) ** 2).sum(-1)  # (K, 1, R)
    log_w = log_lik + standard_normal_log_prob(z) - scored.log_prob(z)
    bound = (dreg_bound(log_w, z, q.weights, tight=False) if estimator == "dreg"
             else iwae_bound(log_w, q.weights, tight=False))
    bound.sum().backward()
    return m.grad.squeeze(1), lv.grad.squeeze(1), th.grad.squeeze(1)


def elbo_gradient(mu, logvar, theta):
    """d ELBO / d (mu, logvar, theta) in closed form for the 1-D model."""
    var = math.exp(logvar)
    return (theta * (X - theta * mu) - mu, -0.5 * theta**2 * var - 0.5 * var + 0.5, (X - theta * mu) * mu - theta * var)


def _close(estimates: torch.Tensor, value: float, sigmas=5.0):
    se = float(estimates.std()) / math.sqrt(len(estimates))
    assert abs(float(estimates.mean()) - value) < sigmas * se + 1e-6, (float(estimates.mean()), value, se)


def test_dreg_with_one_sample_is_unbiased_for_the_closed_form_elbo_gradient():
    point = (0.3, -0.7, 0.8)
    expected = elbo_gradient(*point)
    for estimator in ("dreg", "iwae"):
        for grads, value in zip(one_d_gradients(*point, k=1, estimator=estimator), expected):
            _close(grads, value)


def test_dreg_is_unbiased_for_the_iwae_gradient_with_lower_encoder_variance():
    point = (0.3, -0.7, 0.8)
    dreg = one_d_gradients(*point, k=8, estimator="dreg", seed=1)
    iwae = one_d_gradients(*point, k=8, estimator="iwae", seed=2)
    for d, i in zip(dreg, iwae):
        se = math.sqrt(float(d.var()) / len(d) + float(i.var()) / len(i))
        assert abs(float(d.mean()) - float(i.mean())) < 5 * se
    for d, i in zip(dreg[:2], iwae[:2]):  # the encoder's mu and logvar
        assert float(d.var()) < 0.5 * float(i.var())


def test_dreg_leaves_the_decoder_gradient_of_iwae_unchanged():
    point = (0.3, -0.7, 0.8)
    dreg = one_d_gradients(*point, k=8, estimator="dreg", replicas=50, seed=3)
    iwae = one_d_gradients(*point, k=8, estimator="iwae", replicas=50, seed=3)  # the same draws
    torch.testing.assert_close(dreg[2], iwae[2])
    assert (dreg[0] - iwae[0]).abs().max() > 1e-4  # negative control: the encoder's differ


def test_dreg_encoder_gradient_is_exactly_zero_at_the_true_posterior():
    theta = 0.8
    post_var = 1 / (1 + theta**2)
    point = (theta * X * post_var, math.log(post_var), theta)  # q = p(z | x): every log w equals log p(x)
    dreg = one_d_gradients(*point, k=8, estimator="dreg", replicas=200)
    iwae = one_d_gradients(*point, k=8, estimator="iwae", replicas=200)
    assert dreg[0].abs().max() < 1e-5 and dreg[1].abs().max() < 1e-5
    assert iwae[0].abs().max() > 1e-2  # negative control: the plain reparameterised estimator is noisy there


@pytest.mark.parametrize("row", list(FAMILY_ROWS))
def test_an_absent_modality_gets_exactly_zero_encoder_gradient_in_every_family(tmp_path, row):
    cfg = family_config(tmp_path, row)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    batch = toy_batch()
    batch["present"]["wave"][:] = False
    _loss(model, cfg, batch).total.backward()
    wave = [p.grad for p in model.modalities["wave"].encoder.parameters()]
    assert all(g is None or torch.all(g == 0) for g in wave)
    expert = [p.grad for p in model.fusion.experts["wave"].parameters()]
    assert all(g is None or torch.all(g == 0) for g in expert)
    bars = [p.grad for p in model.modalities["bars"].encoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in bars)  # negative control: the present one learns


def test_mvae_sums_the_joint_and_unimodal_elbos(tmp_path):
    cfg = family_config(tmp_path, "mvae")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    batch = toy_batch()
    batch["present"]["wave"][:] = False  # then the joint posterior is bars' unimodal one
    loss = _loss(model, cfg, batch)
    assert set(loss.terms) == {"recon/bars", "recon/wave", "kl/joint", "recon/bars/from_bars", "kl/joint/from_bars",
                               "recon/wave/from_wave", "kl/joint/from_wave"}
    torch.testing.assert_close(loss.terms["kl/joint/from_bars"], loss.terms["kl/joint"])
    assert float(loss.terms["kl/joint/from_wave"]) == 0 and float(loss.terms["recon/wave/from_wave"]) == 0
    assert loss.weights["recon/bars/from_bars"] == loss.weights["recon/bars"] == 32 / 256  # the size correction
    torch.testing.assert_close(loss.total, sum(loss.weights[k] * v for k, v in loss.terms.items()))


def test_mvae_random_subsets_need_three_modalities_and_draw_middle_subsets(tmp_path):
    with pytest.raises(ConfigError, match="random_subsets: 1 needs at least 3"):
        build_model(family_config(tmp_path, "mvae", "model.family_options={random_subsets: 1}").model)
    mods = {m: {"kind": "vector", "shape": [4], "hidden": [8], "private_dim": 0, "likelihood": "gaussian"} for m in "abc"}
    config = ModelConfig.model_validate({"family": "mvae", "fusion": "poe", "joint_dim": 2, "joint_feature_dim": 8,
                                         "fusion_hidden": [8], "num_classes": 0, "modalities": mods,
                                         "family_options": {"random_subsets": 2}})
    torch.manual_seed(0)
    model = build_model(config)
    n = 5
    batch = {"x": {m: torch.randn(n, 4) for m in "abc"}, "present": {m: torch.ones(n, dtype=torch.bool) for m in "abc"}}
    out = model(batch)
    chosen = [names for key, (names, _, _) in out.extras["subsets"].items() if key.startswith("from_random")]
    assert len(chosen) == 2 and all(len(s) == 2 for s in chosen)
    from mmvae.config import LossConfig

    loss = compute_loss(model, out, batch, LossConfig(), step=0)
    assert {"recon/from_random1", "kl/joint/from_random2", "recon/c/from_c"} <= set(loss.terms)
    assert set(loss.terms) == set(all_term_names(model, LossConfig()))


def test_mopoe_terms_are_the_reconstructions_and_the_mean_subset_kl(tmp_path):
    cfg = family_config(tmp_path, "mopoe")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    batch = toy_batch()
    torch.manual_seed(0)
    out = model(batch)
    loss = compute_loss(model, out, batch, cfg.loss, step=0)
    assert set(loss.terms) == {"recon/bars", "recon/wave", "kl/joint"}
    q = out.posteriors.joint
    subset_kls = DiagonalGaussian(q.mu, q.logvar).kl_to_standard_normal()  # (4, B): {}, {bars}, {wave}, {both}
    torch.testing.assert_close(loss.terms["kl/joint"], subset_kls[1:].mean(0).mean())


# --- configuration ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("model.family_options={k: 3}", r"model.family_options \(family mmvae\): unknown option 'k'; allowed options"),
    ("model.family_options={estimator: reinforce}", r"option 'estimator'"),
    ("model.family_options={K: 0}", r"option 'K'"),
])
def test_family_options_are_typed(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_model(family_config(tmp_path, "mmvae_dreg", override).model)
    assert "\n" not in str(err.value)


def test_the_factorized_family_takes_no_options(tmp_path):
    with pytest.raises(ConfigError, match=r"model.family_options \(family factorized\): unknown option 'K'"):
        build_model(tiny_config(tmp_path, ("model.family_options={K: 3}",)).model)


@pytest.mark.parametrize("override, message", [
    ("model.modalities.bars.private_dim=2", "no private factors; set model.modalities.<m>.private_dim: 0 for \\['bars'\\]"),
    ("model.fusion=poe", "is defined with fusion 'moe'; set model.fusion: moe"),
    ("model.joint_subset_drop=0.5", "joint_subset_drop must be 0"),
])
def test_a_family_refuses_a_config_it_is_not_defined_for(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        build_model(family_config(tmp_path, "mmvae_dreg", override).model)


def test_zoo_configs_share_the_reference_nets_of_mnist_svhn_quick():
    quick = load_config(REPO / "configs" / "mnist_svhn_quick.yaml")
    for family in ("mvae", "mmvae", "mopoe"):
        cfg = load_config(REPO / "configs" / "zoo" / f"{family}.yaml")
        assert cfg.model.family == family and cfg.model.num_classes == 0
        for key in ("joint_dim", "joint_feature_dim", "fusion_hidden"):
            assert getattr(cfg.model, key) == getattr(quick.model, key)
        for m, mc in cfg.model.modalities.items():
            ref = quick.model.modalities[m]
            assert mc.private_dim == 0
            for key in ("kind", "shape", "hidden", "options", "likelihood", "likelihood_scale", "recon_weight"):
                assert getattr(mc, key) == getattr(ref, key), (family, m, key)
        for key in ("batch_size", "lr", "max_steps", "warmup_steps", "grad_clip"):
            assert getattr(cfg.train, key) == getattr(quick.train, key)
        model = build_model(cfg.model)
        assert model.private_names == [] and not model.has_label_head
    assert load_config(REPO / "configs" / "zoo" / "mmvae.yaml").model.family_options == {
        "estimator": "dreg", "K": 30, "bound": "looser"}


# --- end to end -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", list(FAMILY_ROWS))
def test_each_family_trains_evaluates_samples_swaps_and_attributes(tmp_path, row):
    cfg = family_config(tmp_path, row, "train.epochs=1")
    run = tmp_path / "run"
    summary = train(cfg, run)
    assert summary["finished"] and summary["steps"] == 8
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [v for r in records for k, v in r.items() if k.startswith("loss/")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert cli(["evaluate", str(run), "--iwae-samples", "8", "--iwae-limit", "8"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert math.isfinite(metrics["iwae_log_likelihood/K=8"])
    assert cli(["sample", str(run), "--num", "8", "--nrow", "4"]) == 0
    assert cli(["swap", str(run), "--n", "3"]) == 0
    swaps = sorted(p.name for p in (run / "swaps").glob("*.png"))
    assert not any(p.startswith(("within_", "cross_")) for p in swaps)  # no private factor: nothing to swap
    assert "prior_bars.png" in swaps and "traverse_wave.png" in swaps
    assert cli(["attribute", str(run), "--samples", "4", "--show", "2"]) == 0
    assert (run / "attribution" / "report.html").is_file()
