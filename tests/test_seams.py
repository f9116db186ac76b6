"""The seams, proven by test-only examples (tests/seam_examples, the recipes of docs/architecture.md).

Each row of SEAMS is a config that uses one or more examples; every row trains a few steps end to end,
then evaluates, samples, swaps and attributes through the command line (in-process). Known answers for
the pieces follow: a mixture of one expert is that expert, masked elements add nothing and get no
gradient, a condition gets gradient but no latent and no reconstruction, weight patterns match by name.
"""

from __future__ import annotations

import json

import pytest
import torch

from mmvae.batch import collate, slice_rows, stack_samples, sample_at, take
from mmvae.cli import main as cli
from mmvae.config import ConfigError
from mmvae.families import build_model
from mmvae.latent import DiagonalGaussian, MixtureOfDiagonalGaussians
from mmvae.losses import compute_loss, configured_weight
from mmvae.train import train
from tests.conftest import tiny_config
from tests.seam_examples import registered

SKIP_AND_CONDITION = (
    "data.name=toy_with_action_example",
    "model.modalities.bars.kind=conv_skip_image",
    "model.modalities.action={kind: vector, role: condition, shape: [4], hidden: [8]}",
    "model.modalities.wave.conditioned_on=[action]",
    "model.heads={brightness: {kind: brightness_example, hidden: [8], conditioned_on: [action], "
    "options: {source: bars}}}",
    "loss.weights={ssl/brightness: 100.0}",
)
SEAMS = {
    "skip_features_head_and_condition": SKIP_AND_CONDITION,
    "mixture_fusion": ("model.fusion=moe",),
    "loss_term": ("loss.terms=[reconstruction, heads, prior, joint_l2]", "loss.weights={reg/*: 0.1}"),
    "model_family_without_private_factors": ("model.family=joint_only_example", "model.modalities.bars.private_dim=0",
                                             "model.modalities.wave.private_dim=0"),
    "no_private_factor_in_one_modality": ("model.modalities.wave.private_dim=0",),
    "unlabelled": ("model.num_classes=0",),
    # The remedies of issue 17 (built in; tests/test_remedies.py has their known answers).
    "private_adversary_head": ("model.heads={adversary: {kind: private_adversary, hidden: [8], "
                               "options: {num_classes: 10}}}", "loss.weights={adv/private/*: 2.0}"),
    "xcov_and_cycle_terms": ("loss.terms=[reconstruction, heads, prior, xcov, cycle]",
                             "loss.options={cycle: {content: false}}", "loss.weights={xcov/*: 10.0, cycle/*: 0.5}"),
    "few_labels": ("data.label_fraction=0.1", "model.heads={adversary: {kind: private_adversary, hidden: [8], "
                   "options: {num_classes: 10, objective: reverse}}}"),
}


@pytest.fixture(autouse=True)
def examples():
    with registered():
        yield


@pytest.mark.parametrize("name", list(SEAMS))
def test_each_seam_trains_evaluates_samples_swaps_and_attributes(tmp_path, name):
    cfg = tiny_config(tmp_path, ("train.epochs=1", *SEAMS[name]))
    run = tmp_path / "run"
    summary = train(cfg, run)
    assert summary["finished"] and summary["steps"] == 8
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(v)) for r in records for k, v in r.items() if k.startswith("loss/"))
    assert cli(["evaluate", str(run), "--iwae-samples", "8", "--iwae-limit", "8"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert "iwae_log_likelihood/K=8" in metrics
    assert cli(["sample", str(run), "--num", "8", "--nrow", "4"]) == 0
    assert cli(["swap", str(run), "--n", "3"]) == 0
    assert cli(["attribute", str(run), "--samples", "4", "--show", "2"]) == 0
    assert (run / "attribution" / "report.html").is_file()


def test_skip_head_and_condition_are_wired_as_declared(tmp_path):
    cfg = tiny_config(tmp_path, SKIP_AND_CONDITION)
    model = build_model(cfg.model)
    from mmvae.data.registry import build_sources

    batch = build_sources(cfg)[0].gather(torch.arange(16))
    loss = compute_loss(model, model(batch), batch, cfg.loss, step=0)
    # The condition has no latent and no reconstruction; the head's term is there with its weight.
    assert set(loss.terms) == {"recon/bars", "recon/wave", "label", "ssl/brightness", "kl/joint", "kl/private/bars",
                               "kl/private/wave"}
    assert loss.weights["ssl/brightness"] == 100.0
    loss.total.backward()
    action_grads = [p.grad for p in model.modalities["action"].parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in action_grads)  # it conditions a decoder and the head
    assert model.modalities["bars"].stem[0].weight.grad.abs().sum() > 0
    # Negative control: decoding wave without its condition is refused with a clear message.
    with pytest.raises(ValueError, match="needs the condition"):
        model.decode(torch.zeros(2, cfg.model.joint_dim), {m: torch.zeros(2, 2) for m in ("bars", "wave")}, ["wave"])


def test_a_condition_that_is_not_declared_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a modality with role 'condition'"):
        tiny_config(tmp_path, ("model.modalities.wave.conditioned_on=[bars]",))


def test_a_mixture_of_one_expert_is_that_expert():
    torch.manual_seed(0)
    mu, logvar = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    weights = torch.tensor([[1.0] * 5, [0.0] * 5])  # only the first expert present
    mix = MixtureOfDiagonalGaussians(mu, logvar, weights)
    one = DiagonalGaussian(mu[0], logvar[0])
    z = torch.randn(7, 5, 3)
    torch.testing.assert_close(mix.log_prob(z), one.log_prob(z))
    torch.testing.assert_close(mix.mean, one.mu)
    assert mix.kl_to_prior() is None
    torch.manual_seed(1)
    draws = mix.rsample(4000)  # every draw comes from expert 0
    torch.testing.assert_close(draws.mean(0), one.mu, atol=0.15, rtol=0)


def test_the_monte_carlo_kl_of_a_mixture_fusion_matches_the_closed_form_for_one_expert(tmp_path):
    cfg = tiny_config(tmp_path, ("model.fusion=moe",))
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    from mmvae.data.toy import make_toy

    batch = make_toy(512, seed=1).gather(torch.arange(512))
    batch["present"]["wave"][:] = False  # one expert: the mixture is a Gaussian, whose KL has a closed form
    out = model(batch)
    mc = compute_loss(model, out, batch, cfg.loss, step=0).terms["kl/joint"]
    post = out.posteriors.joint
    closed = DiagonalGaussian(post.mu[0], post.logvar[0]).kl_to_standard_normal().mean()
    assert abs(float(mc) - float(closed)) < 0.1 * float(closed) + 0.05


def test_element_masks_exclude_padding_from_the_likelihood_and_its_gradient():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg.model)
    from mmvae.data.toy import make_toy

    batch = make_toy(8, seed=1).gather(torch.arange(8))
    mask = torch.ones(8, 32, dtype=torch.bool)
    mask[:, 20:] = False  # the last 12 samples of every wave are padding
    batch["mask"] = {"wave": mask}
    torch.manual_seed(1)
    out = model(batch)
    reference = compute_loss(model, out, batch, cfg.loss, step=0).terms["recon/wave"]
    garbage = {**batch, "x": {**batch["x"], "wave": batch["x"]["wave"].clone()}}
    garbage["x"]["wave"][:, 20:] = 1e4
    torch.manual_seed(1)
    out_g = model(garbage)
    torch.testing.assert_close(compute_loss(model, out_g, garbage, cfg.loss, step=0).terms["recon/wave"], reference)
    params = out_g.params["wave"]
    params.retain_grad()
    compute_loss(model, out_g, garbage, cfg.loss, step=0).terms["recon/wave"].backward()
    assert torch.all(params.grad[:, 20:] == 0) and params.grad[:, :20].abs().sum() > 0
    # Negative control: without the mask the padding counts.
    del garbage["mask"]
    torch.manual_seed(1)
    unmasked = compute_loss(model, model(garbage), garbage, cfg.loss, step=0).terms["recon/wave"]
    assert float(unmasked) > float(reference) + 1e3


def test_weight_patterns_match_by_name_and_the_most_specific_wins(tmp_path):
    cfg = tiny_config(tmp_path, ("loss.weights={kl/private/*: 0.5, kl/private/wave: {value: 2.0, warmup_steps: 10}, "
                                 "recon/*: 3.0}",)).loss
    assert configured_weight(cfg, "kl/private/bars", 0) == 0.5
    assert configured_weight(cfg, "kl/private/wave", 5) == 1.0  # 2.0 x 5/10
    assert configured_weight(cfg, "recon/bars", 0) == 3.0 and configured_weight(cfg, "label", 0) == 1.0
    assert cfg.schedules_end == 10


def test_a_weight_key_that_matches_no_term_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, ("loss.weights={kl/privte/*: 0.5}",))
    with pytest.raises(ConfigError, match=r"loss.weights.kl/privte/\*' matches no loss term"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("bad, message", [
    ("model.modalities.bars.kind=image_mpl", "did you mean 'image_mlp'"),
    ("model.fusion=poee", "did you mean 'poe'"),
    ("model.family=factorised", "did you mean 'factorized'"),
    ("data.name=toi", "did you mean 'toy'"),
    ("loss.terms=[reconstruction, prio]", "did you mean 'prior'"),
    ("model.heads={h: {kind: lable}}", "did you mean 'label'"),
])
def test_registry_names_are_checked_with_a_did_you_mean(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, (bad,))


def test_kind_options_are_typed(tmp_path):
    with pytest.raises(ConfigError, match="option 'channels'"):
        build_model(tiny_config(tmp_path, ("model.modalities.bars.kind=image_conv",
                                           "model.modalities.bars.options={channels: many}")).model)


def test_batch_helpers_move_slice_and_collate_every_key():
    from mmvae.data.toy import make_toy

    batch = make_toy(6, seed=0).gather(torch.arange(6))
    batch["mask"] = {"wave": torch.ones(6, 32, dtype=torch.bool)}
    batch["targets"] = {"t": torch.arange(6.0)}
    batch["meta"] = {"episode": torch.arange(6)}
    halves = [slice_rows(batch, 0, 3), slice_rows(batch, 3, 6)]
    again = collate(halves)
    picked = take(batch, torch.tensor([5, 0]))
    assert torch.equal(picked["targets"]["t"], torch.tensor([5.0, 0.0])) and torch.equal(picked["meta"]["episode"],
                                                                                       torch.tensor([5, 0]))
    stacked = stack_samples([sample_at(batch, i) for i in range(6)])
    for rebuilt in (again, stacked):
        for key in ("x", "present", "mask", "targets", "meta"):
            for name, t in batch[key].items():
                assert torch.equal(rebuilt[key][name], t)
        assert torch.equal(rebuilt["y"], batch["y"])
