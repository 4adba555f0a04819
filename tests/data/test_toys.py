"""Toy samplers: determinism under a generator, shapes/dtypes/devices, known moments, oracles."""

import math

import pytest
import torch

from flowgen.data import TOY_DATASETS, Toy, sample_toy, toy_density
from flowgen.testing import GaussianMixture


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_deterministic_under_generator(name, device):
    a = sample_toy(name, 500, generator=torch.Generator(device).manual_seed(3), device=device)
    b = sample_toy(name, 500, generator=torch.Generator(device).manual_seed(3), device=device)
    c = sample_toy(name, 500, generator=torch.Generator(device).manual_seed(4), device=device)
    assert a.shape == (500, 2) and a.dtype == torch.float32 and a.device.type == device.type
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_dtype_and_empty(name):
    x = sample_toy(name, 7, dtype=torch.float64)
    assert x.dtype == torch.float64 and x.shape == (7, 2)
    assert sample_toy(name, 0).shape == (0, 2)


def test_names_and_errors():
    assert set(TOY_DATASETS) == {"moons", "8gaussians", "checkerboard", "gmm"}
    assert Toy.parse("eight_gaussians") is Toy.EIGHT_GAUSSIANS and Toy.parse("Moons") is Toy.MOONS
    with pytest.raises(ValueError, match="unknown toy dataset.*spiral"):
        sample_toy("spiral", 10)
    with pytest.raises(ValueError, match="n must"):
        sample_toy("moons", -1)
    with pytest.raises(TypeError, match="dtype"):
        sample_toy("moons", 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="no closed-form density"):
        toy_density("moons")


def test_eight_gaussians_moments():
    x = sample_toy("8gaussians", 40000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    n = x.shape[0]
    # mean 0; per-coordinate variance = radius²/2 + std² = 2 + 0.04 (angles k·π/4 make cos² average 1/2)
    assert x.mean(0).abs().max() < 4 * math.sqrt(2.04 / n)
    torch.testing.assert_close(x.var(0), torch.full((2,), 2.04, dtype=torch.float64), rtol=0.03, atol=0)
    # every point is near one of the 8 centres on the circle of radius 2
    r = x.norm(dim=1)
    assert (r - 2).abs().mean() < 0.2


@pytest.mark.parametrize("name", ["8gaussians", "gmm"])
def test_mixture_toys_match_their_oracle(name):
    oracle = toy_density(name)
    assert isinstance(oracle, GaussianMixture)
    x = sample_toy(name, 40000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mean = (oracle.weights[:, None] * oracle.means).sum(0)
    second = (oracle.weights[:, None, None] * (oracle.covs + oracle.means[:, :, None] * oracle.means[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None]
    torch.testing.assert_close(x.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.05, rtol=0.03)
    # the samples are typical under the oracle: mean log-density matches its Monte-Carlo entropy
    ref = oracle.sample(10000, generator=torch.Generator().manual_seed(2))
    assert abs(float(oracle.log_prob(x[:10000]).mean() - oracle.log_prob(ref).mean())) < 0.08


def test_checkerboard_support_and_uniformity():
    x = sample_toy("checkerboard", 16000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (x.abs() <= 2).all()
    cell = torch.floor(x + 2).long()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()  # only dark cells
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16)
    dark = counts[counts > 0]
    assert dark.numel() == 8 and (dark.double() / 2000 - 1).abs().max() < 0.1
    torch.testing.assert_close(x.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.05, rtol=0)


def test_moons_geometry():
    x = sample_toy("moons", 20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(x.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.03, rtol=0)
    m = x / 2 + torch.tensor([0.5, 0.25], dtype=torch.float64)  # undo centring/scaling
    d_upper = (m.norm(dim=1) - 1).abs()
    d_lower = ((m - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs()
    # radial noise of std 0.1 around one of the two unit half circles
    assert torch.minimum(d_upper, d_lower).median() < 0.1
    upper = d_upper < d_lower
    assert abs(float(upper.double().mean()) - 0.5) < 0.02
