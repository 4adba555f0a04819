"""Self-checks of the exact oracles: score = ∇ log p_t, flow map solves the PF-ODE, posteriors vs Monte Carlo."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowgen.parameterization import Prediction, convert
from flowgen.paths import Cosine, DiscreteDDPM, RectifiedFlow
from flowgen.testing import GaussianData, GaussianMixture
from flowgen.testing import strategies as fst

F64 = torch.float64
# the heaviest property tests run half the profile's examples (each example makes dozens of oracle/loss calls)
HALF = settings(max_examples=max(5, settings().max_examples // 2))


def _gaussian(seed: int, event=(3,)) -> GaussianData:
    g = torch.Generator().manual_seed(seed)
    d = math.prod(event)
    base = GaussianData.random(d, generator=g)
    return GaussianData(base.mean.reshape(event), base.cov)


def _mixture(seed: int, k: int = 3, d: int = 2) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, d, d, generator=g, dtype=F64) / math.sqrt(d)
    covs = a @ a.transpose(1, 2) + 0.2 * torch.eye(d, dtype=F64)
    return GaussianMixture(torch.rand(k, generator=g, dtype=F64) + 0.2, 2 * torch.randn(k, d, generator=g, dtype=F64), covs)


def _oracles():
    return st.one_of(
        st.builds(_gaussian, fst.seeds(), st.sampled_from([(1,), (3,), (2, 2)])),
        st.builds(_mixture, fst.seeds(), st.integers(1, 3), st.integers(1, 3)),
    )


def _scalar_time(data, path, margin=1e-2) -> float:
    return float(data.draw(fst.times(path, 1, margin=margin, dtype=F64), label="t")[0])


@HALF
@given(fst.paths(), _oracles(), st.data())
def test_score_is_the_gradient_of_the_marginal_log_density(path, oracle, data):
    t = _scalar_time(data, path)
    x = data.draw(fst.tensors((4, *oracle.event_shape), scale=(0.5, 3.0)), label="x")
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(oracle.log_prob(xg, t=t, path=path).sum(), xg)
    score = oracle.score(x, torch.full((4,), t, dtype=F64), path)
    torch.testing.assert_close(score, grad, rtol=1e-7, atol=1e-7 * (1 + grad.abs().max()))


def test_marginal_at_t0_is_the_blurred_data_when_sigma_min_is_positive():
    path = RectifiedFlow(sigma_min=0.3)
    oracle = _gaussian(0)
    x = torch.randn(5, 3, dtype=F64)
    mean, cov = oracle.marginal(0.0, path)
    torch.testing.assert_close(cov, oracle.cov + 0.09 * torch.eye(3, dtype=F64))
    expected = torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    torch.testing.assert_close(oracle.log_prob(x, t=0.0, path=path), expected)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(oracle.log_prob(xg, t=0.0, path=path).sum(), xg)
    torch.testing.assert_close(oracle.score(x, torch.zeros(5, dtype=F64), path), grad)
    # without a path, t = 0 is the data itself
    torch.testing.assert_close(oracle.log_prob(x), torch.distributions.MultivariateNormal(oracle.mean, oracle.cov).log_prob(x))


@HALF
@given(fst.paths(), _oracles(), st.data())
def test_predictions_of_every_kind_are_one_posterior(path, oracle, data):
    t = data.draw(fst.times(path, 4, margin=1e-2, dtype=F64), label="t")
    x = data.draw(fst.tensors((4, *oracle.event_shape)), label="x")
    preds = {p: oracle.predict(x, t, path, p) for p in Prediction}
    d, n = oracle.posterior(x, t, path)
    torch.testing.assert_close(preds[Prediction.DATA], d)
    torch.testing.assert_close(preds[Prediction.NOISE], n)
    b = (-1, *([1] * (x.dim() - 1)))
    a, s = path.alpha(t).reshape(b), path.sigma(t).reshape(b)
    torch.testing.assert_close(a * d + s * n, x, rtol=1e-9, atol=1e-9)  # posterior means are consistent with x_t
    torch.testing.assert_close(preds[Prediction.VELOCITY], oracle.velocity(x, t, path))
    for src, dst in itertools.product(Prediction, Prediction):
        scale = 1 + preds[dst].abs().max() + preds[src].abs().max()
        got = convert(preds[src], src=src, dst=dst, x_t=x, t=t, path=path)
        assert ((got - preds[dst]).abs() <= 1e-7 * scale).all(), (src, dst)


def _smooth_time(path, t: torch.Tensor) -> torch.Tensor:
    """Move DDPM times to the middle of their segment, so a finite difference does not straddle a knot."""
    if isinstance(path, DiscreteDDPM):
        n = path.num_steps
        return ((torch.floor(t * n).clamp(max=n - 1) + 0.5) / n).clamp(path.t_min, 1 - 1e-3)
    return t


@given(fst.paths(), st.data())
def test_flow_map_solves_the_probability_flow_ode(path, data):
    oracle = _gaussian(data.draw(fst.seeds(), label="seed"), data.draw(st.sampled_from([(2,), (2, 2)]), label="event"))
    t = _smooth_time(path, data.draw(fst.times(path, 3, margin=2e-2, dtype=F64), label="t"))
    s = data.draw(fst.times(path, 3, margin=2e-2, dtype=F64), label="s")
    u = data.draw(fst.times(path, 3, margin=2e-2, dtype=F64), label="u")
    x = data.draw(fst.tensors((3, *oracle.event_shape)), label="x")
    # identity and the group law
    torch.testing.assert_close(oracle.flow_map(x, t=t, s=t, path=path), x)
    back = oracle.flow_map(oracle.flow_map(x, t=t, s=s, path=path), t=s, s=t, path=path)
    torch.testing.assert_close(back, x, rtol=1e-9, atol=1e-9)
    via = oracle.flow_map(oracle.flow_map(x, t=t, s=s, path=path), t=s, s=u, path=path)
    torch.testing.assert_close(via, oracle.flow_map(x, t=t, s=u, path=path), rtol=1e-9, atol=1e-9)
    # d/ds flow_map(x, t → s) at s = t is the probability-flow velocity
    h = 1e-6
    fd = (oracle.flow_map(x, t=t, s=t + h, path=path) - oracle.flow_map(x, t=t, s=t - h, path=path)) / (2 * h)
    v = oracle.velocity(x, t, path)
    torch.testing.assert_close(fd, v, rtol=1e-5, atol=1e-5 * (1 + v.abs().max()))


@given(fst.paths(), fst.seeds(), st.data())
def test_flow_map_transports_the_marginals(path, seed, data):
    oracle = _gaussian(seed)
    t0, t1 = (_scalar_time(data, path) for _ in range(2))
    mean_t, cov_t = oracle.marginal(t0, path)
    mean_s, cov_s = oracle.marginal(t1, path)
    tt, ss = torch.full((4,), t0, dtype=F64), torch.full((4,), t1, dtype=F64)
    origin = oracle.flow_map(mean_t.expand(4, 3), t=tt, s=ss, path=path)
    torch.testing.assert_close(origin[0], mean_s)
    basis = mean_t + torch.eye(3, dtype=F64)
    linear = (oracle.flow_map(torch.cat([basis, mean_t[None]]), t=torch.full((4,), t0, dtype=F64), s=ss, path=path) - mean_s)[:3].T
    torch.testing.assert_close(linear @ cov_t @ linear.T, cov_s, rtol=1e-9, atol=1e-9)


def test_mixture_with_one_component_is_the_gaussian():
    gauss = _gaussian(3, (2,))
    mix = GaussianMixture(torch.ones(1), gauss.mean[None], gauss.cov[None])
    x, t = torch.randn(6, 2, dtype=F64), torch.linspace(0.05, 0.95, 6, dtype=F64)
    for path in (RectifiedFlow(), Cosine(), DiscreteDDPM.linear()):
        for p in Prediction:
            torch.testing.assert_close(mix.predict(x, t, path, p), gauss.predict(x, t, path, p))
        torch.testing.assert_close(mix.log_prob(x, t=0.4, path=path), gauss.log_prob(x, t=0.4, path=path))


@pytest.mark.parametrize("oracle", [_mixture(0), _gaussian(1, (2,))], ids=["mixture", "gaussian"])
def test_posterior_matches_monte_carlo(oracle):
    """E[data | x_t] by self-normalised importance sampling from the prior, weights N(x_t; α·data, σ²I)."""
    path, t = Cosine(), 0.6
    g = torch.Generator().manual_seed(0)
    a, s = (float(v) for v in path.coefficients(torch.tensor([t], dtype=F64))[:2])
    x_t = a * oracle.sample(3, generator=g) + s * torch.randn(3, 2, generator=g, dtype=F64)
    prior = oracle.sample(20000, generator=g)
    post_data, post_noise = oracle.posterior(x_t, torch.full((3,), t, dtype=F64), path)
    for i in range(3):
        logw = -0.5 * ((x_t[i] - a * prior) ** 2).sum(1) / s**2
        w = torch.softmax(logw, 0)
        ess = 1 / (w**2).sum()
        mc = (w[:, None] * prior).sum(0)
        sd = torch.sqrt((w[:, None] * (prior - mc) ** 2).sum(0) / ess)
        assert ess > 500
        assert ((mc - post_data[i]).abs() <= 5 * sd + 1e-3).all(), (mc, post_data[i], sd)
        torch.testing.assert_close(post_noise[i], (x_t[i] - a * post_data[i]) / s)


def test_sample_moments():
    oracle = _gaussian(5, (2,))
    x = oracle.sample(2000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2000, 2) and x.dtype == F64
    torch.testing.assert_close(x.mean(0), oracle.mean, atol=0.15, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), oracle.cov, atol=0.2, rtol=0.1)
    mix = _mixture(1)
    y = mix.sample(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double().mean(0), (mix.weights[:, None] * mix.means).sum(0), atol=0.2, rtol=0)


def test_oracle_model_counts_calls_and_keeps_dtype():
    oracle = _gaussian(2, (3,))
    model = oracle.model(Cosine(), "v")
    x, t = torch.randn(4, 3), torch.full((4,), 0.5)
    out = model(x, t)
    assert out.dtype == torch.float32 and out.shape == x.shape and model.calls == 1
    model(x.double(), t.double(), None)
    assert model.calls == 2
    torch.testing.assert_close(out, oracle.predict(x, t, Cosine(), Prediction.V))


def test_oracle_bad_input_names_the_argument():
    oracle = _gaussian(0, (3,))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 3\), got \(4, 2\)"):
        oracle.predict(torch.zeros(4, 2), torch.full((4,), 0.5), Cosine(), "data")
    with pytest.raises(ValueError, match=r"t has batch size 3 but the data has batch size 4"):
        oracle.score(torch.zeros(4, 3), torch.full((3,), 0.5), Cosine())
    with pytest.raises(ValueError, match=r"t must lie in"):
        oracle.velocity(torch.zeros(4, 3), torch.full((4,), 1.5), Cosine())
    with pytest.raises(ValueError, match=r"s must lie in"):
        oracle.flow_map(torch.zeros(4, 3), t=torch.full((4,), 0.5), s=torch.full((4,), -0.5), path=Cosine())
    with pytest.raises(ValueError, match=r"unknown prediction"):
        oracle.predict(torch.zeros(4, 3), torch.full((4,), 0.5), Cosine(), "x1")
    with pytest.raises(ValueError, match=r"cov must have shape \(2, 2\)"):
        GaussianData(torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match=r"cov must be symmetric"):
        GaussianData(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"cov must be positive definite"):
        GaussianData(torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"weights must be a \(K,\) tensor of positive numbers"):
        GaussianMixture(torch.tensor([1.0, -1.0]), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"means must have shape \(K, d\) with K=2"):
        GaussianMixture(torch.ones(2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"covs must have shape \(2, 2, 2\)"):
        GaussianMixture(torch.ones(2), torch.zeros(2, 2), torch.ones(2, 3, 3))
