"""W2, MMD, Fréchet distance and log-likelihood against exact values and brute-force definitions."""

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from flowgen.data import sample_toy, toy_density
from flowgen.metrics import (
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    log_likelihood,
    mmd,
    sliced_w2_squared,
    w2_squared,
    wasserstein2,
)
from flowgen.testing import GaussianData

f64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- W2
def test_w2_permutation_is_zero_and_shift_is_norm(device):
    x = torch.randn(300, 3, generator=gen(0), dtype=f64).to(device)
    assert w2_squared(x, x[torch.randperm(300, generator=gen(1)).to(device)]) == 0.0
    c = torch.tensor([0.5, -2.0, 1.5], dtype=f64, device=device)
    # the identity matching is optimal for a translation (cyclical monotonicity), so W2² = |c|²
    assert w2_squared(x, x + c) == pytest.approx(float(c.pow(2).sum()), rel=1e-12)
    assert wasserstein2(x, x + c) == pytest.approx(float(c.norm()), rel=1e-12)


def test_w2_matches_brute_force_over_permutations():
    x = torch.randn(6, 2, generator=gen(2), dtype=f64)
    y = torch.randn(6, 2, generator=gen(3), dtype=f64) + 1
    best = min(float((x - y[list(p)]).pow(2).sum(1).mean()) for p in itertools.permutations(range(6)))
    assert w2_squared(x, y) == pytest.approx(best, rel=1e-12)
    # images (N, C, H, W) are flattened
    assert w2_squared(x.reshape(6, 1, 2, 1), y.reshape(6, 1, 2, 1)) == pytest.approx(best, rel=1e-12)


def test_w2_one_dimensional_gaussians_converge_to_closed_form():
    # in 1-D the optimal matching is the sorted one, and W2²(N(m1,s1²), N(m2,s2²)) = (m1-m2)² + (s1-s2)²
    n = 4000
    x = 1.0 + 0.5 * torch.randn(n, 1, generator=gen(4), dtype=f64)
    y = -1.0 + 2.0 * torch.randn(n, 1, generator=gen(5), dtype=f64)
    assert w2_squared(x, y) == pytest.approx(4.0 + 1.5**2, rel=0.05)
    # the 1-D shortcut (sorted matching) agrees with the assignment solver on the same points in 2-D
    xs, ys = x[:200], y[:200]
    pad = torch.zeros(200, 1, dtype=f64)
    assert w2_squared(xs, ys) == pytest.approx(w2_squared(torch.cat([xs, pad], 1), torch.cat([ys, pad], 1)), rel=1e-10)


@pytest.mark.parametrize("w2", [w2_squared, sliced_w2_squared])
def test_w2_errors(w2):
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="equal sizes"):
        w2(x, torch.randn(5, 2))
    with pytest.raises(ValueError, match="same point shape"):
        w2(x, torch.randn(4, 3))
    with pytest.raises(ValueError, match="y holds 1 NaN"):
        w2(x, torch.tensor([[0.0, float("nan")], [0, 0], [0, 0], [0, 0]]))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        w2(np.zeros((4, 2)), x)
    with pytest.raises(ValueError, match="at least 1"):
        w2(torch.zeros(0, 2), torch.zeros(0, 2))


# ----------------------------------------------------------------------------- sliced W2
def test_sliced_w2_one_dimensional_is_exact_w2_and_projection_is_brute_force(device):
    x = torch.randn(257, 1, generator=gen(0), dtype=f64).to(device)
    y = (2 * torch.randn(257, 1, generator=gen(1), dtype=f64) + 1).to(device)
    assert sliced_w2_squared(x, y) == pytest.approx(w2_squared(x, y), rel=1e-12)
    # in d dimensions: the mean over the same directions of the exact 1-D W2² (assignment solver) of the projections
    a, b = torch.randn(40, 3, generator=gen(2), dtype=f64), torch.randn(40, 3, generator=gen(3), dtype=f64) + 0.5
    theta = torch.randn(3, 5, generator=gen(4), dtype=f64)
    theta = theta / theta.norm(dim=0)
    brute = sum(w2_squared(torch.cat([a @ theta[:, [j]], torch.zeros(40, 1, dtype=f64)], 1),
                           torch.cat([b @ theta[:, [j]], torch.zeros(40, 1, dtype=f64)], 1)) for j in range(5)) / 5
    assert sliced_w2_squared(a, b, projections=5, generator=gen(4)) == pytest.approx(brute, rel=1e-10)


def test_sliced_w2_of_shifted_gaussians_is_norm_over_dimension():
    # between N(0, I) and N(m, I) the sliced W2² is E_θ[(θ·m)²] = ‖m‖²/d; a shifted copy removes the sampling noise
    # (each projection's sorted matching is the identity, so only the directions' noise is left)
    d = 4
    x = torch.randn(2000, d, generator=gen(5), dtype=f64)
    m = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=f64)
    assert sliced_w2_squared(x[:200], x[:200] + m, projections=20000, generator=gen(6)) == pytest.approx(float(m.pow(2).sum()) / d, rel=0.03)
    assert sliced_w2_squared(x, x[torch.randperm(2000, generator=gen(7))]) == 0.0
    # the same directions give the same value, and sliced W2² ≤ W2² (each projection is 1-Lipschitz)
    a, b = x[:500], x[500:1000] + m
    assert sliced_w2_squared(a, b, generator=gen(8)) == sliced_w2_squared(a, b, generator=gen(8))
    assert sliced_w2_squared(a, b, projections=512, generator=gen(8)) <= w2_squared(a, b)


def test_sliced_w2_refuses_a_bad_number_of_projections():
    x = torch.randn(4, 2)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="projections must be a positive int"):
            sliced_w2_squared(x, x, projections=bad)


# ----------------------------------------------------------------------------- MMD
def _mmd_brute(x, y, bws, kernel):
    def k(a, b):
        d2 = float(((a - b) ** 2).sum())
        return sum(math.exp(-d2 / (2 * h * h)) if kernel == "rbf" else h * h / (h * h + d2) for h in bws)

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    if n == m:
        kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    else:
        kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("m", [9, 7])
def test_mmd_matches_definition(kernel, m):
    x = torch.randn(9, 2, generator=gen(0), dtype=f64)
    y = torch.randn(m, 2, generator=gen(1), dtype=f64) + 0.5
    bws = [0.5, 1.0, 3.0]
    assert mmd(x, y, kernel, bws) == pytest.approx(_mmd_brute(x, y, bws, kernel), rel=1e-10, abs=1e-14)


def test_mmd_identical_zero_different_positive(device):
    x = sample_toy("moons", 300, generator=gen(0), dtype=f64, device=device)
    same = sample_toy("moons", 300, generator=gen(1), dtype=f64, device=device)
    other = sample_toy("8gaussians", 300, generator=gen(2), dtype=f64, device=device)
    assert mmd(x, x) == 0.0
    null = abs(mmd(x, same))
    assert mmd(x, other) > 10 * null and mmd(x, other) > 0.05
    # the median heuristic makes the default MMD invariant to a common rescaling
    assert mmd(3 * x, 3 * other) == pytest.approx(mmd(x, other), rel=1e-9)
    assert mmd(x, other, squared=False) == pytest.approx(math.sqrt(mmd(x, other)), rel=1e-12)


def test_mmd_errors():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="kernel"):
        mmd(x, x, kernel="linear")
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, x, bandwidths=[1.0, -1.0])
    with pytest.raises(ValueError, match="at least 2"):
        mmd(x[:1], x)


# ----------------------------------------------------------------------------- Fréchet
def test_frechet_identical_features_zero():
    f = torch.randn(500, 16, generator=gen(0), dtype=f64)
    assert abs(frechet_distance(f, f)) < 1e-9
    # rank-deficient covariances (N < d) stay real and non-negative
    g = torch.randn(10, 64, generator=gen(1), dtype=f64)
    assert abs(frechet_distance(g, g)) < 1e-8
    assert frechet_distance(g, g + 1) == pytest.approx(64.0, rel=1e-8)


def test_frechet_closed_form_from_stats():
    rng = torch.Generator().manual_seed(0)
    d = 5
    a = torch.randn(d, d, generator=rng, dtype=f64)
    b = torch.randn(d, d, generator=rng, dtype=f64)
    c1, c2 = a @ a.T + 0.1 * torch.eye(d, dtype=f64), b @ b.T
    m1, m2 = torch.randn(d, generator=rng, dtype=f64), torch.randn(d, generator=rng, dtype=f64)
    ref = float((m1 - m2).pow(2).sum() + torch.trace(c1 + c2)) - 2 * np.trace(scipy.linalg.sqrtm(c1.numpy() @ c2.numpy())).real
    assert frechet_distance_from_stats(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-8)
    # commuting (diagonal) covariances: |Δμ|² + Σ (√λ1 − √λ2)²
    l1, l2 = torch.rand(d, generator=rng, dtype=f64) + 0.1, torch.rand(d, generator=rng, dtype=f64)
    exact = float((m1 - m2).pow(2).sum() + (l1.sqrt() - l2.sqrt()).pow(2).sum())
    assert frechet_distance_from_stats(m1, torch.diag(l1), m2, torch.diag(l2)) == pytest.approx(exact, rel=1e-10)
    # symmetric
    assert frechet_distance_from_stats(m2, c2, m1, c1) == pytest.approx(ref, rel=1e-8)


def test_frechet_of_gaussian_samples_converges():
    p, q = GaussianData.random(4, generator=gen(0)), GaussianData.random(4, generator=gen(1))
    exact = frechet_distance_from_stats(p.mean, p.cov, q.mean, q.cov)
    fx, fy = p.sample(40000, generator=gen(2)), q.sample(40000, generator=gen(3))
    assert frechet_distance(fx, fy) == pytest.approx(exact, rel=0.05)
    mu, cov = gaussian_stats(fx)
    torch.testing.assert_close(cov, torch.cov(fx.T))


def test_frechet_errors():
    with pytest.raises(ValueError, match="same d"):
        frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"features_x must have shape \(N, d\)"):
        frechet_distance(torch.randn(5, 3, 1), torch.randn(5, 3, 1))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="cov_y"):
        frechet_distance_from_stats(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(2))


# ----------------------------------------------------------------------------- log-likelihood
@pytest.mark.parametrize("name", ["8gaussians", "gmm"])
def test_log_likelihood_equals_oracle(name):
    oracle = toy_density(name)
    x = sample_toy(name, 256, generator=gen(0))
    per = log_likelihood(x, oracle, reduction="none")
    torch.testing.assert_close(per, oracle.log_prob(x.double()))
    assert log_likelihood(x, oracle) == pytest.approx(float(per.mean()), rel=1e-12)
    assert log_likelihood(x, oracle, reduction="sum") == pytest.approx(float(per.sum()), rel=1e-12)


def test_log_likelihood_gaussian_and_torch_distribution():
    mvn = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=f64), torch.eye(2, dtype=f64))
    x = torch.randn(100, 2, generator=gen(0), dtype=f64)
    exact = float((-0.5 * x.pow(2).sum(1) - math.log(2 * math.pi)).mean())
    assert log_likelihood(x, mvn) == pytest.approx(exact, rel=1e-12)
    assert log_likelihood(x, GaussianData(torch.zeros(2))) == pytest.approx(exact, rel=1e-12)


def test_log_likelihood_errors():
    with pytest.raises(TypeError, match="log_prob"):
        log_likelihood(torch.randn(3, 2), object())
    with pytest.raises(ValueError, match="event shape"):
        log_likelihood(torch.randn(3, 3), toy_density("gmm"))
    with pytest.raises(ValueError, match="reduction"):
        log_likelihood(torch.randn(3, 2), toy_density("gmm"), reduction="max")


# ----------------------------------------------------------------------------- laws
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(n=st.integers(2, 7), d=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_w2_is_a_metric_on_point_clouds(n, d, seed):
    g = gen(seed)
    x, y, z = (torch.randn(n, d, generator=g, dtype=f64) for _ in range(3))
    wxy, wyx = wasserstein2(x, y), wasserstein2(y, x)
    assert wxy == pytest.approx(wyx, rel=1e-9, abs=1e-12)
    assert wasserstein2(x, z) <= wxy + wasserstein2(y, z) + 1e-9
    # W2² ≤ cost of the identity matching, and ≥ the squared distance of the means (Jensen)
    assert w2_squared(x, y) <= float((x - y).pow(2).sum(1).mean()) + 1e-12
    assert w2_squared(x, y) >= float((x.mean(0) - y.mean(0)).pow(2).sum()) - 1e-12


@given(n=st.integers(2, 8), m=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_mmd_symmetric(n, m, seed):
    g = gen(seed)
    x, y = torch.randn(n, 2, generator=g, dtype=f64), torch.randn(m, 2, generator=g, dtype=f64) + 1
    assert mmd(x, y, bandwidths=[0.5, 2.0]) == pytest.approx(mmd(y, x, bandwidths=[0.5, 2.0]), rel=1e-9, abs=1e-12)
