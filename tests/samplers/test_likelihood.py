"""Log-likelihood under the probability-flow ODE equals the Gaussian closed form."""

from __future__ import annotations

import math

import pytest
import torch

from flowgen.paths import VP, Cosine, RectifiedFlow
from flowgen.samplers import log_likelihood

from _sampler_helpers import oracle


@pytest.mark.parametrize("path_cls, prediction", [(RectifiedFlow, "velocity"), (Cosine, "v")])
def test_exact_divergence_matches_closed_form(path_cls, prediction):
    """α(1) = 0 on these paths, so the Gaussian prior N(0, σ(1)²I) is exact."""
    orc = oracle(dim=3)
    path = path_cls()
    data = orc.sample(6, generator=torch.Generator().manual_seed(2))
    model = orc.model(path, prediction)
    res = log_likelihood(model, path, data, prediction=prediction, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(res.log_prob, orc.log_prob(data), atol=1e-5, rtol=0)
    assert res.nfe == model.calls
    torch.testing.assert_close(res.log_prob, res.prior_log_prob + res.delta)


def test_vp_with_exact_marginal_prior():
    """VP's α(t_max) ≠ 0: with the exact marginal as prior the likelihood of x at t_min is exact."""
    orc = oracle(dim=2)
    path = VP()
    t_min, t_max = path.t_min, path.t_max
    mean, cov = orc.marginal(t_min, path)
    x = mean + torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) @ torch.linalg.cholesky(cov).T
    model = orc.model(path, "noise")
    res = log_likelihood(model, path, x, prediction="noise", prior=lambda z: orc.log_prob(z, t=t_max, path=path), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(res.log_prob, orc.log_prob(x, t=t_min, path=path), atol=1e-5, rtol=0)


def test_hutchinson_agrees_in_expectation():
    orc = oracle(dim=3)
    path = RectifiedFlow()
    reps = 64
    point = orc.sample(2, generator=torch.Generator().manual_seed(1))
    data = point.repeat_interleave(reps, 0)  # each point with `reps` independent probes
    model = orc.model(path, "velocity")
    # A fixed grid keeps the probes' randomness out of the step-size control (RK4 error ~1e-6 here).
    res = log_likelihood(model, path, data, prediction="velocity", divergence="hutchinson", method="rk4", steps=16,
                         generator=torch.Generator().manual_seed(3))
    est = res.log_prob.reshape(2, reps)
    exact = orc.log_prob(point)
    se = est.std(1) / math.sqrt(reps)
    assert bool(((est.mean(1) - exact).abs() < 4 * se + 1e-4).all()), (est.mean(1), exact, se)
    assert bool((est.std(1) > 0).all())  # it is an estimate, not the exact divergence


def test_gaussian_probes_and_fixed_grid_method():
    orc = oracle(dim=2)
    path = RectifiedFlow()
    data = orc.sample(3, generator=torch.Generator().manual_seed(1))
    model = orc.model(path, "velocity")
    exact = log_likelihood(model, path, data, prediction="velocity", method="rk4", steps=40)
    torch.testing.assert_close(exact.log_prob, orc.log_prob(data), atol=1e-5, rtol=0)
    hutch = log_likelihood(model, path, data, prediction="velocity", method="rk4", steps=20, divergence="hutchinson",
                           probe="gaussian", num_probes=4, generator=torch.Generator().manual_seed(0))
    assert hutch.log_prob.shape == (3,) and bool(torch.isfinite(hutch.log_prob).all())


def test_likelihood_bad_input():
    orc = oracle(dim=2)
    path = RectifiedFlow()
    data = orc.sample(2)
    model = orc.model(path, "data")
    with pytest.raises(ValueError, match="evaluates the model at both ends"):
        log_likelihood(model, path, data, prediction="data")  # data model at t = 0, σ = 0
    with pytest.raises(ValueError, match="unknown divergence"):
        log_likelihood(model, path, data, prediction="data", divergence="trace", t_min=0.01)
    with pytest.raises(ValueError, match="probe must be"):
        log_likelihood(model, path, data, prediction="data", divergence="hutchinson", probe="uniform", t_min=0.01)
    with pytest.raises(ValueError, match="needs steps"):
        log_likelihood(model, path, data, prediction="data", method="euler", t_min=0.01)
    with pytest.raises(ValueError, match="prior must be"):
        log_likelihood(model, path, data, prediction="data", prior="laplace", t_min=0.01)


def test_likelihood_overflow_names_data():
    """A state that overflows between model calls is reported naming the caller's argument (data)."""

    class Huge(torch.nn.Module):
        def forward(self, x, t):
            return x * 0 + 3e38  # finite, but an RK4 update of it overflows float32

    with pytest.raises(ValueError, match=r"overflowed torch.float32 .*scale of data"):
        log_likelihood(Huge(), RectifiedFlow(), torch.zeros(2, 2), prediction="velocity", method="rk4", steps=4,
                       t_min=0.01, t_max=0.99)
