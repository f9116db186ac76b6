"""The zoo families with private latents: DMVAE (families/dmvae.py) and MMVAE+ (families/mmvae_plus.py).

Each trains, evaluates, samples, swaps and attributes through the command line on the toy data (as the seam
table does). Known answers: DMVAE with one modality present is twice that modality's factorized ELBO; its
reconstruction from modality n's shared posterior reads only n's expert; MMVAE+'s K = 1 bound is the ELBO
written out by hand, a K-sample bound is tighter, DReG changes the encoder's gradient and not the decoder's;
cross-modal generation draws the target's w from the auxiliary prior, never from its posterior; an absent
modality's encoder gets exactly zero gradient; family options are typed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal

from mmvae.cli import main as cli
from mmvae.config import ConfigError, load_config
from mmvae.data.toy import make_toy
from mmvae.families import FAMILIES, build_model
from mmvae.losses import compute_loss
from mmvae.train import train
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
FAMILY_ROWS = {
    "dmvae": ("model.family=dmvae",),
    "mmvae_plus": ("model.family=mmvae_plus", "model.family_options={K: 3}"),
    "mmvae_plus_iwae": ("model.family=mmvae_plus", "model.family_options={K: 2, estimator: iwae}"),
}


def config(tmp_path=None, *overrides):
    return tiny_config(tmp_path or "runs", ("model.num_classes=0", *overrides))


def toy_batch(n=16, seed=1, absent=()):
    batch = make_toy(n, seed=seed).gather(torch.arange(n))
    for m in absent:
        batch["present"][m][:] = False
    return batch


@pytest.mark.parametrize("row", list(FAMILY_ROWS))
def test_each_family_trains_evaluates_samples_swaps_and_attributes(tmp_path, row):
    cfg = config(tmp_path, "train.epochs=1", *FAMILY_ROWS[row])
    run = tmp_path / "run"
    summary = train(cfg, run)
    assert summary["finished"] and summary["steps"] == 8
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {k: v for r in records for k, v in r.items() if k.startswith("loss/")}
    assert losses and all(math.isfinite(v) for v in losses.values())
    assert any(k.startswith("loss/iwae/" if "mmvae" in row else "loss/recon/bars/from_wave") for k in losses)
    assert cli(["evaluate", str(run), "--iwae-samples", "8", "--iwae-limit", "8"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert math.isfinite(metrics["iwae_log_likelihood/K=8"])
    assert "coherence/bars->wave" in metrics
    assert cli(["sample", str(run), "--num", "8", "--nrow", "4"]) == 0
    assert cli(["swap", str(run), "--n", "3"]) == 0
    assert (run / "swaps" / "within_bars.png").is_file() and (run / "swaps" / "cross_wave_to_bars.png").is_file()
    assert cli(["attribute", str(run), "--samples", "4", "--show", "2"]) == 0
    assert (run / "attribution" / "report.html").is_file()


# --- DMVAE ------------------------------------------------------------------------------------------------
def test_dmvae_with_one_modality_present_is_twice_that_modalitys_elbo():
    cfg = config(None, "model.family=dmvae")
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    factorized = build_model(config(None).model).eval()
    factorized.load_state_dict(model.state_dict())  # the same networks: only the objective differs
    batch = toy_batch(absent=("wave",))
    with torch.no_grad():
        loss = compute_loss(model, model(batch, sample=False), batch, cfg.loss, step=0)
        elbo = compute_loss(factorized, factorized(batch, sample=False), batch, cfg.loss, step=0)
    t = loss.terms
    torch.testing.assert_close(t["recon/bars/from_bars"], t["recon/bars"])  # q(Z_y | bars) is the PoE of {bars}
    torch.testing.assert_close(t["kl/joint/from_bars"], t["kl/joint"])
    assert float(t["recon/bars/from_wave"]) == float(t["recon/wave"]) == float(t["kl/joint/from_wave"]) == 0.0
    torch.testing.assert_close(loss.total, 2 * elbo.total)
    # Negative control: with both present the unimodal ELBOs are terms of their own.
    both = toy_batch()
    with torch.no_grad():
        t2 = compute_loss(model, model(both, sample=False), both, cfg.loss, step=0).terms
    assert float(t2["recon/bars/from_wave"]) > 0 and float(t2["kl/joint/from_wave"]) > 0
    assert abs(float(t2["recon/wave/from_bars"]) - float(t2["recon/wave"])) > 1e-3


def test_dmvae_cross_reconstruction_reads_only_the_source_modalitys_expert():
    torch.manual_seed(0)
    model = build_model(config(None, "model.family=dmvae").model).eval()
    batch = toy_batch()
    with torch.no_grad():
        before = model(batch, sample=False)
        for p in model.fusion.experts["bars"].parameters():
            p.add_(0.5)
        after = model(batch, sample=False)
    torch.testing.assert_close(after.from_unimodal["bars", "wave"], before.from_unimodal["bars", "wave"])
    torch.testing.assert_close(after.from_unimodal["wave", "wave"], before.from_unimodal["wave", "wave"])
    assert not torch.allclose(after.params["bars"], before.params["bars"])  # negative control: the PoE moved
    assert not torch.allclose(after.from_unimodal["wave", "bars"], before.from_unimodal["wave", "bars"])


# --- MMVAE+ -----------------------------------------------------------------------------------------------
def mmvae_plus(*options):
    cfg = config(None, "model.family=mmvae_plus", *options)
    torch.manual_seed(0)
    return cfg, build_model(cfg.model)


def test_mmvae_plus_bound_with_one_sample_is_the_elbo_written_out():
    cfg, model = mmvae_plus("model.family_options={K: 1, estimator: iwae}")
    batch = toy_batch(n=8)
    torch.manual_seed(3)
    out = model(batch)
    terms = compute_loss(model, out, batch, cfg.loss, step=0).terms
    names, post, lam = model.names, out.posteriors, model.reconstruction_weights()
    x = out.inputs
    for i, m in enumerate(names):
        z, w = out.strata_z[i, 0], out.strata_w[m][0]  # (B, Dy), (B, Dm): the stratum's draws
        experts = [Normal(post.joint.mu[j], (0.5 * post.joint.logvar[j]).exp()) for j in range(len(names))]
        log_q_z = torch.logsumexp(torch.stack([e.log_prob(z).sum(-1) for e in experts]), 0) - math.log(2)
        q_w = Normal(post.private[m].mu, post.private[m].std)
        log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1) + Normal(0.0, 1.0).log_prob(w).sum(-1)
        recon = sum(lam[n] * model.modalities[n].log_prob(out.strata_params[n][i, 0], x[n]) for n in names)
        elbo = recon + log_prior - log_q_z - q_w.log_prob(w).sum(-1)  # (B,)
        torch.testing.assert_close(terms[f"iwae/{m}"], -(elbo / 2).mean(), rtol=1e-5, atol=1e-3)


def test_mmvae_plus_more_samples_give_a_tighter_bound_with_the_same_value_under_dreg():
    batch = toy_batch(n=128)
    values = {}
    for k, estimator in [(1, "iwae"), (16, "iwae"), (16, "dreg")]:
        cfg, model = mmvae_plus(f"model.family_options={{K: {k}, estimator: {estimator}}}")
        torch.manual_seed(5)
        loss = compute_loss(model.eval(), model(batch), batch, cfg.loss, step=0)
        values[k, estimator] = float(loss.total.detach())
    assert values[16, "iwae"] < values[1, "iwae"] - 1.0  # -bound: the K-sample bound is tighter
    assert values[16, "dreg"] == pytest.approx(values[16, "iwae"], rel=1e-6)  # DReG changes gradients only


def test_dreg_changes_the_encoders_gradient_and_not_the_decoders():
    batch = toy_batch(n=32)
    grads = {}
    for estimator in ("iwae", "dreg"):
        cfg, model = mmvae_plus(f"model.family_options={{K: 4, estimator: {estimator}}}")
        torch.manual_seed(7)
        compute_loss(model, model(batch), batch, cfg.loss, step=0).total.backward()
        grads[estimator] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    decoder = [k for k in grads["iwae"] if ".decoder." in k or k.startswith(("joint_features", "aux_logits"))]
    encoder = [k for k in grads["iwae"] if ".encoder." in k or k.startswith(("fusion.", "private_heads"))]
    assert decoder and encoder
    gap = {k: float((grads["dreg"][k] - grads["iwae"][k]).norm() / grads["iwae"][k].norm()) for k in grads["iwae"]}
    assert max(gap[k] for k in decoder) < 1e-4  # the same up to rounding (another summation order)
    assert min(gap[k] for k in encoder) > 1e-2  # squared weights on the path, no score-function term


def test_dreg_hooks_scale_only_the_strata_path_not_the_one_sample_outputs():
    """The gradient reaching the private heads through out.z_private (what a head or an MMD term reads) is the
    same whether or not the DReG terms registered their hooks on that forward's strata."""
    batch = toy_batch(n=16)
    cfg, model = mmvae_plus("model.family_options={K: 4, estimator: dreg}")
    params = [p for k, p in model.named_parameters() if k.startswith("private_heads")]
    grads = []
    for with_terms in (False, True):
        torch.manual_seed(3)
        out = model(batch)
        if with_terms:
            compute_loss(model, out, batch, cfg.loss, step=0)  # registers the DReG hooks on the strata
        probe = sum(z.square().sum() for z in out.z_private.values())
        grads.append(torch.autograd.grad(probe, params))
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    # Negative control: the strata's own draws do get the hook's factor.
    torch.manual_seed(3)
    out = model(batch)
    loss = compute_loss(model, out, batch, cfg.loss, step=0)
    hooked = torch.autograd.grad(sum(w.square().sum() for w in out.strata_w.values()), params, retain_graph=True)
    assert not all(torch.equal(a, b) for a, b in zip(hooked, grads[0]))
    del loss


def test_mmvae_plus_cross_generation_never_reads_the_targets_posterior():
    cfg, model = mmvae_plus("model.family_options={K: 2, aux_scale: 2.0}")
    model.eval()
    batch = toy_batch()
    other = toy_batch(seed=9)
    changed = {**batch, "x": {**batch["x"], "wave": other["x"]["wave"]}}  # same bars, other waves
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(batch)
        torch.manual_seed(1)
        b = model(changed)
    bars, wave = model.names.index("bars"), model.names.index("wave")
    # wave decoded from the bars stratum: z from q(z | bars), w from r_wave; the waves themselves play no part
    torch.testing.assert_close(a.strata_params["wave"][bars], b.strata_params["wave"][bars])
    assert not torch.allclose(a.strata_params["wave"][wave], b.strata_params["wave"][wave])  # negative control
    # The evaluation's draws (cross_private) ignore the posterior they are shaped like and follow r's scale.
    torch.manual_seed(2)
    one = model.cross_private({"wave": torch.zeros(20000, 2)})
    torch.manual_seed(2)
    two = model.cross_private({"wave": torch.full((20000, 2), 5.0)})
    torch.testing.assert_close(one["wave"], two["wave"])
    torch.testing.assert_close(one["wave"].std(0), torch.full((2,), 2.0), atol=0.05, rtol=0)
    # The factorized family draws N(0, I) (its earlier behaviour, the same random numbers).
    factorized = build_model(config(None).model)
    torch.manual_seed(2)
    drawn = factorized.cross_private({"wave": torch.zeros(3, 2)})["wave"]
    torch.manual_seed(2)
    assert torch.equal(drawn, torch.randn(3, 2))


def test_the_auxiliary_prior_learns_only_when_asked():
    cfg, model = mmvae_plus("model.family_options={K: 2}")
    batch = toy_batch()
    compute_loss(model, model(batch), batch, cfg.loss, step=0).total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.aux_logits.values())
    _, frozen = mmvae_plus("model.family_options={K: 2, learn_aux_prior: false}")
    assert not any(p.requires_grad for p in frozen.aux_logits.values())
    assert all(torch.equal(frozen.aux_std(m), torch.ones(2)) for m in frozen.aux_logits)


@pytest.mark.parametrize("row", ["dmvae", "mmvae_plus", "mmvae_plus_iwae"])
def test_an_absent_modality_gets_exactly_zero_gradient(row):
    cfg = config(None, *FAMILY_ROWS[row])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    wave_parts = [model.modalities["wave"].encoder, model.fusion.experts["wave"], model.private_heads["wave"]]
    for absent, expect_zero in [(("wave",), True), ((), False)]:  # negative control: present, it learns
        model.zero_grad(set_to_none=True)
        batch = toy_batch(absent=absent)
        compute_loss(model, model(batch), batch, cfg.loss, step=0).total.backward()
        grads = [p.grad for part in wave_parts for p in part.parameters()]
        if expect_zero:
            assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
        else:
            assert any(g is not None and torch.count_nonzero(g) > 0 for g in grads)
        assert all(p.grad.abs().sum() > 0 for p in model.modalities["bars"].encoder.parameters())


# --- options and configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (("model.family=mmvae_plus", "model.family_options={k: 3}"), r"unknown option 'k'.*allowed options: \['K'"),
    (("model.family=mmvae_plus", "model.family_options={K: 0}"), "option 'K'"),
    (("model.family=mmvae_plus", "model.family_options={estimator: reinforce}"), "option 'estimator'"),
    (("model.family_options={K: 3}",), r"family factorized\): unknown option 'K'"),
    (("model.family=dmvae", "model.fusion=concat"), "set model.fusion: poe"),
    (("model.family=mmvae_plus", "model.joint_subset_drop=0.5"), "joint_subset_drop: 0"),
])
def test_family_options_and_requirements_are_checked(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_model(config(tmp_path, *overrides).model)


def test_the_zoo_configs_use_the_quick_configs_nets_without_a_label_head():
    quick = load_config(REPO / "configs" / "mnist_svhn_quick.yaml")
    for family in ("dmvae", "mmvae_plus"):
        cfg = load_config(REPO / "configs" / "zoo" / f"{family}.yaml")
        assert cfg.model.family == family and family in FAMILIES
        assert cfg.model.modalities == quick.model.modalities
        assert cfg.model.num_classes == 0 and not cfg.model.heads
        for key in ("joint_dim", "joint_feature_dim", "fusion", "fusion_hidden"):
            assert getattr(cfg.model, key) == getattr(quick.model, key)
        for key in ("batch_size", "lr", "max_steps"):
            assert getattr(cfg.train, key) == getattr(quick.train, key)
        model, reference = build_model(cfg.model), build_model(quick.model.model_copy(update={"num_classes": 0}))
        nets = {k: v.shape for k, v in reference.state_dict().items()}
        assert {k: v.shape for k, v in model.state_dict().items() if k in nets} == nets  # the same networks
