"""Known answers for the latent-factor maths."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from mmvae.latent import DiagonalGaussian, mmd_to_standard_normal, product_of_experts, standard_normal_log_prob


def _random_gaussian(b=5, d=3, seed=0) -> DiagonalGaussian:
    g = torch.Generator().manual_seed(seed)
    return DiagonalGaussian(torch.randn(b, d, generator=g), torch.randn(b, d, generator=g))


def test_kl_matches_torch_distributions():
    q = _random_gaussian()
    expected = kl_divergence(Normal(q.mu, q.std), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(q.kl_to_standard_normal(), expected)


def test_kl_of_the_prior_itself_is_zero():
    q = DiagonalGaussian(torch.zeros(2, 4), torch.zeros(2, 4))
    assert torch.equal(q.kl_to_standard_normal(), torch.zeros(2))


def test_log_probs_match_torch_distributions():
    q = _random_gaussian()
    z = torch.randn(7, 5, 3)
    torch.testing.assert_close(q.log_prob(z), Normal(q.mu, q.std).log_prob(z).sum(-1))
    torch.testing.assert_close(standard_normal_log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_reparameterised_gradients_reach_mu_and_logvar():
    mu = torch.zeros(4, 2, requires_grad=True)
    logvar = torch.zeros(4, 2, requires_grad=True)
    z = DiagonalGaussian(mu, logvar).rsample()
    (z**2).sum().backward()
    assert mu.grad is not None and mu.grad.abs().sum() > 0
    assert logvar.grad is not None and logvar.grad.abs().sum() > 0
    # d/dmu of (mu + std eps)^2 = 2 z at mu = 0, std = 1
    torch.testing.assert_close(mu.grad, 2 * z.detach())


def test_product_of_one_expert_and_prior_has_textbook_moments():
    mu = torch.tensor([[2.0, -1.0, 0.5]])
    var = torch.tensor([[0.5, 2.0, 1.0]])
    joint = product_of_experts(mu[None], var.log()[None], torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(joint.mu, mu / (1 + var))
    torch.testing.assert_close(joint.var, var / (1 + var))


def test_product_of_experts_ignores_absent_experts_and_gives_them_no_gradient():
    mus = torch.randn(2, 3, 4, requires_grad=True)
    logvars = torch.randn(2, 3, 4, requires_grad=True)
    present = torch.tensor([[True, True, False], [True, False, False]])
    joint = product_of_experts(mus, logvars, present)
    # Sample 2 has no experts: exactly the prior.
    torch.testing.assert_close(joint.mu[2], torch.zeros(4))
    torch.testing.assert_close(joint.var[2], torch.ones(4))
    # Sample 1 has only expert 0: one expert with the prior.
    v = logvars[0, 1].exp()
    torch.testing.assert_close(joint.mu[1], mus[0, 1] / (1 + v))
    (joint.mu.sum() + joint.logvar.sum()).backward()
    assert torch.all(mus.grad[~present] == 0) and torch.all(logvars.grad[~present] == 0)
    assert torch.all(mus.grad[present] != 0)


def test_product_of_two_experts_matches_precision_weighting():
    mus = torch.tensor([[[1.0]], [[3.0]]])
    logvars = torch.log(torch.tensor([[[1.0]], [[0.5]]]))
    joint = product_of_experts(mus, logvars, torch.ones(2, 1, dtype=torch.bool))
    # precisions: prior 1, expert 1, expert 2 -> total 4; mean (0 + 1*1 + 2*3) / 4
    torch.testing.assert_close(joint.mu, torch.tensor([[7.0 / 4]]))
    torch.testing.assert_close(joint.var, torch.tensor([[1.0 / 4]]))


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_mmd_near_zero_for_matching_and_positive_for_shifted(kernel):
    torch.manual_seed(0)
    matched = [float(mmd_to_standard_normal(torch.randn(1000, 8), kernel)) for _ in range(3)]
    shifted = float(mmd_to_standard_normal(torch.randn(1000, 8) + 1.0, kernel))
    narrow = float(mmd_to_standard_normal(0.3 * torch.randn(1000, 8), kernel))
    assert max(abs(m) for m in matched) < 0.01
    assert shifted > 0.1 and narrow > 0.05
    assert shifted > 20 * max(abs(m) for m in matched)


def test_mmd_weights_leave_rows_out_exactly():
    torch.manual_seed(0)
    z, prior = torch.randn(64, 4), torch.randn(64, 4)
    keep = torch.rand(64) < 0.6
    garbage = torch.where(keep[:, None], z, torch.full_like(z, 1e3))
    reference = mmd_to_standard_normal(z, prior_samples=prior, weights=keep.float())
    torch.testing.assert_close(mmd_to_standard_normal(garbage, prior_samples=prior, weights=keep.float()), reference)
    torch.testing.assert_close(mmd_to_standard_normal(z, prior_samples=prior, weights=torch.ones(64)),
                               mmd_to_standard_normal(z, prior_samples=prior))
    one_row = torch.zeros(64)
    one_row[3] = 1
    assert mmd_to_standard_normal(z, weights=one_row) == 0  # fewer than two samples: no estimate


def test_mmd_rejects_unknown_kernel():
    with pytest.raises(ValueError, match="unknown MMD kernel 'gauss'"):
        mmd_to_standard_normal(torch.randn(10, 2), "gauss")
