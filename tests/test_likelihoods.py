"""Every likelihood equals its torch.distributions counterpart."""

import pytest
import torch
from torch import distributions as D

from mmvae.likelihoods import make_likelihood


def test_continuous_likelihoods_match_torch():
    torch.manual_seed(0)
    x, params = torch.rand(4, 6), torch.rand(4, 6)
    torch.testing.assert_close(make_likelihood("gaussian", 0.3).log_prob(params, x), D.Normal(params, 0.3).log_prob(x))
    torch.testing.assert_close(make_likelihood("laplace", 0.75).log_prob(params, x), D.Laplace(params, 0.75).log_prob(x))


def test_bernoulli_and_categorical_match_torch():
    torch.manual_seed(0)
    logits, x = torch.randn(4, 6), torch.randint(0, 2, (4, 6)).float()
    torch.testing.assert_close(make_likelihood("bernoulli").log_prob(logits, x), D.Bernoulli(logits=logits).log_prob(x))
    logits, tokens = torch.randn(3, 5, 11), torch.randint(0, 11, (3, 5))
    torch.testing.assert_close(make_likelihood("categorical").log_prob(logits, tokens), D.Categorical(logits=logits).log_prob(tokens))


def test_unknown_likelihood_and_bad_scale_are_errors():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        make_likelihood("poisson")
    with pytest.raises(ValueError, match="scale must be > 0"):
        make_likelihood("gaussian", 0.0)
