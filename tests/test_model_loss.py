"""The factorized model and its composite loss: presence masks, weighted sums, what each factor feeds."""

import pytest
import torch

from mmvae.data.toy import make_toy
from mmvae.losses import compute_loss
from mmvae.model import FactorizedMultimodalVAE
from tests.conftest import tiny_config


def _model_and_batch(fusion: str, n: int = 16, overrides=()):
    cfg = tiny_config(overrides=(f"model.fusion={fusion}", *overrides))
    torch.manual_seed(0)
    model = FactorizedMultimodalVAE(cfg.model)
    batch = make_toy(n, seed=1).gather(torch.arange(n))
    return cfg, model, batch


@pytest.mark.parametrize("fusion", ["poe", "concat"])
def test_absent_modality_adds_no_loss_and_its_encoder_gets_zero_gradient(fusion):
    cfg, model, batch = _model_and_batch(fusion)
    batch["present"]["wave"][:] = False
    torch.manual_seed(1)
    loss = compute_loss(model, model(batch), batch, cfg.loss, step=0)
    assert loss.terms["recon/wave"] == 0 and loss.terms["kl/private/wave"] == 0
    loss.total.backward()
    encoder = model.modalities["wave"].encoder
    assert all(p.grad is None or torch.all(p.grad == 0) for p in encoder.parameters())
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.private_heads["wave"].parameters())
    # ...while the present modality's encoder does learn (negative control for the check above).
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.modalities["bars"].encoder.parameters())


@pytest.mark.parametrize("fusion", ["poe", "concat"])
def test_partly_absent_modality_gets_gradient_only_from_present_samples(fusion):
    cfg, model, batch = _model_and_batch(fusion)
    keep = torch.zeros(16, dtype=torch.bool)
    keep[:8] = True
    # Loss with half the wave samples absent must equal the loss where those rows are garbage: nothing leaks.
    batch["present"]["wave"] = keep
    torch.manual_seed(1)
    reference = compute_loss(model, model(batch), batch, cfg.loss, step=0).total
    garbage = {**batch, "x": {**batch["x"], "wave": batch["x"]["wave"].clone()}}
    garbage["x"]["wave"][~keep] = 1e3
    torch.manual_seed(1)
    perturbed = compute_loss(model, model(garbage), garbage, cfg.loss, step=0).total
    torch.testing.assert_close(reference, perturbed)


def test_total_is_the_weighted_sum_of_the_named_terms():
    cfg, model, batch = _model_and_batch("poe", overrides=("loss.label_weight=2.5", "loss.beta_private=0.3",
                                                           "loss.beta_joint_warmup_steps=10",
                                                           "loss.beta_private_warmup_steps=20"))
    loss = compute_loss(model, model(batch), batch, cfg.loss, step=4)
    assert set(loss.terms) == {"recon/bars", "recon/wave", "label", "kl/joint", "kl/private/bars", "kl/private/wave"}
    assert loss.weights["label"] == 2.5
    assert loss.weights["kl/private/bars"] == pytest.approx(0.3 * 0.2)  # beta * warm-up 4/20
    assert loss.weights["kl/joint"] == pytest.approx(0.4)  # warm-up 4/10
    expected = sum(loss.weights[k] * v for k, v in loss.terms.items())
    torch.testing.assert_close(loss.total, expected)


def test_a_modality_can_override_the_private_beta():
    cfg, model, batch = _model_and_batches_with("model.modalities.wave.private_beta=4.0", "loss.beta_private=0.5")
    loss = compute_loss(model, model(batch), batch, cfg.loss, step=0)
    assert loss.weights["kl/private/wave"] == 4.0 and loss.weights["kl/private/bars"] == 0.5


def _model_and_batches_with(*overrides):
    return _model_and_batch("poe", overrides=overrides)


def test_reconstruction_weights_correct_for_modality_size():
    _, model, _ = _model_and_batch("poe")
    # bars has 256 values, wave 32: the larger modality is scaled down to the smaller one's size.
    assert model.reconstruction_weights() == {"bars": pytest.approx(32 / 256), "wave": 1.0}


def test_mmd_prior_matching_names_its_terms():
    cfg, model, batch = _model_and_batch("poe", overrides=("loss.prior_match=mmd", "loss.mmd_kernel=imq"))
    loss = compute_loss(model, model(batch), batch, cfg.loss, step=0)
    assert {"mmd/joint", "mmd/private/bars", "mmd/private/wave"} <= set(loss.terms)
    assert not any(k.startswith("kl/") for k in loss.terms)


def test_label_head_reads_the_joint_factor_only():
    _, model, batch = _model_and_batch("poe")
    out = model(batch, sample=False)
    z_private = {m: torch.randn_like(z) for m, z in out.z_private.items()}
    assert torch.equal(model.classify(out.z_joint), out.logits)
    changed = model.decode(out.z_joint, z_private)
    assert not torch.allclose(changed["bars"], out.params["bars"])  # the private factor does reach decoders


def test_unknown_labels_are_ignored_by_the_label_term():
    cfg, model, batch = _model_and_batch("poe")
    batch["y"][:] = -1
    loss = compute_loss(model, model(batch), batch, cfg.loss, step=0)
    assert loss.terms["label"] == 0


def test_unknown_modality_kind_and_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown kind 'hologram'"):
        FactorizedMultimodalVAE(tiny_config(overrides=("model.modalities.bars.kind=hologram",)).model)
    with pytest.raises(ValueError, match="unknown option"):
        FactorizedMultimodalVAE(tiny_config(overrides=("model.modalities.bars.options={depth: 3}",)).model)
    with pytest.raises(ValueError, match="likelihood 'categorical' is not supported"):
        FactorizedMultimodalVAE(tiny_config(overrides=("model.modalities.wave.likelihood=categorical",)).model)
