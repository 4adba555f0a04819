"""Time grids: shape, exact endpoints, strict monotonicity, and each grid's defining property."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowgen.paths import RectifiedFlow
from flowgen.samplers import GRIDS, check_grid, karras_grid, log_snr_grid, make_grid, shifted_grid, uniform_grid

from _sampler_helpers import PATH_FACTORIES

F64 = torch.float64


def _interval(pname):
    path = PATH_FACTORIES[pname]()
    # α(1) = 0 on rectified flow and cosine: σ/α and λ are infinite there, so Karras/log-SNR grids need t_max < 1.
    t_max = 0.999 if pname in ("rectified_flow", "cosine") else path.t_max
    t_min = max(path.t_min, 1e-3)
    return path, t_max, t_min


def _check_basic(g, steps, t_max, t_min):
    assert g.dtype == F64 and g.shape == (steps + 1,)
    assert float(g[0]) == t_max and float(g[-1]) == t_min  # exact, not approximately
    assert bool((g[1:] < g[:-1]).all())
    assert bool(((g >= 0) & (g <= 1)).all())


@pytest.mark.parametrize("pname", list(PATH_FACTORIES))
@pytest.mark.parametrize("kind", list(GRIDS))
@given(steps=st.integers(1, 200))
def test_every_grid_on_every_path(pname, kind, steps):
    path, t_max, t_min = _interval(pname)
    g = GRIDS[kind](steps, path, t_max, t_min)
    _check_basic(g, steps, t_max, t_min)


@given(steps=st.integers(1, 300), t_max=st.floats(0.05, 1.0), frac=st.floats(0.0, 0.95))
def test_uniform_grid(steps, t_max, frac):
    t_min = frac * t_max
    g = uniform_grid(steps, t_max, t_min)
    _check_basic(g, steps, t_max, t_min)
    torch.testing.assert_close(g[:-1] - g[1:], torch.full((steps,), (t_max - t_min) / steps, dtype=F64), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("pname", ["vp", "edm", "ddpm", "cosine", "rectified_flow"])
@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_karras_grid_is_uniform_in_sigma_tilde_to_the_one_over_rho(pname, rho):
    path, t_max, t_min = _interval(pname)
    g = karras_grid(24, path, rho, t_max=t_max, t_min=t_min)
    s = (path.sigma(g) / path.alpha(g)) ** (1.0 / rho)
    d = s[:-1] - s[1:]
    torch.testing.assert_close(d, torch.full_like(d, float(d.mean())), rtol=1e-6, atol=1e-9)


def test_karras_grid_matches_edm_formula_on_the_edm_path():
    """On EDM's path t = σ/σ_max, so the grid is EDM's eq. (5) divided by σ_max."""
    path = PATH_FACTORIES["edm"]()
    n, rho = 18, 7.0
    i = torch.arange(n + 1, dtype=F64)
    lo, hi = path.sigma_min ** (1 / rho), path.sigma_max ** (1 / rho)
    sig = (hi + i / n * (lo - hi)) ** rho
    torch.testing.assert_close(karras_grid(n, path, rho), sig / path.sigma_max, rtol=1e-10, atol=0)


@pytest.mark.parametrize("pname", ["vp", "edm", "ddpm", "cosine"])
def test_log_snr_grid_is_uniform_in_lambda(pname):
    path, t_max, t_min = _interval(pname)
    g = log_snr_grid(16, path, t_max=t_max, t_min=t_min)
    lam = path.log_snr(g)
    d = lam[1:] - lam[:-1]
    torch.testing.assert_close(d, torch.full_like(d, float(d.mean())), rtol=1e-6, atol=1e-8)


@given(steps=st.integers(1, 100), shift=st.floats(0.2, 10.0))
def test_shifted_grid_is_the_sd3_shift_of_a_uniform_grid(steps, shift):
    g = shifted_grid(steps, shift)
    _check_basic(g, steps, 1.0, 0.0)
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=F64)
    torch.testing.assert_close(g, shift * u / (1 + (shift - 1) * u), rtol=1e-12, atol=1e-12)


def test_shift_one_is_uniform_and_shift_spends_steps_at_high_noise():
    torch.testing.assert_close(shifted_grid(10, 1.0), uniform_grid(10), rtol=0, atol=1e-15)
    assert bool((shifted_grid(10, 3.0)[1:-1] > uniform_grid(10)[1:-1]).all())
    g = shifted_grid(10, 3.0, t_max=0.9, t_min=0.1)
    _check_basic(g, 10, 0.9, 0.1)


def test_make_grid_names_and_aliases():
    path = PATH_FACTORIES["vp"]()
    torch.testing.assert_close(make_grid("edm", 5, path), karras_grid(5, path))
    torch.testing.assert_close(make_grid("logsnr", 5, path), log_snr_grid(5, path))
    with pytest.raises(ValueError, match="unknown grid 'cosine'"):
        make_grid("cosine", 5, path)


def test_grid_errors():
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        uniform_grid(0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        uniform_grid(2.0)
    with pytest.raises(ValueError, match="0 <= t_min < t_max <= 1"):
        uniform_grid(4, 0.5, 0.6)
    with pytest.raises(ValueError, match="finite sigma/alpha at t_max"):
        karras_grid(4, RectifiedFlow())
    with pytest.raises(ValueError, match="finite log-SNR at both ends"):
        log_snr_grid(4, RectifiedFlow())
    with pytest.raises(ValueError, match="rho must be"):
        karras_grid(4, PATH_FACTORIES["vp"](), rho=0.0)
    with pytest.raises(ValueError, match="shift must be"):
        shifted_grid(4, -1.0)


def test_check_grid():
    torch.testing.assert_close(check_grid([1.0, 0.5, 0.0]), torch.tensor([1.0, 0.5, 0.0], dtype=F64))
    with pytest.raises(ValueError, match=r"strictly decreasing .* between index 1 \(t=0.5\) and 2 \(t=0.7\)"):
        check_grid([1.0, 0.5, 0.7])
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_grid([1.0, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        check_grid([1.5, 0.5])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        check_grid([1.0, -0.1])
    with pytest.raises(ValueError, match="must be 1-D"):
        check_grid(torch.ones(2, 2))
    with pytest.raises(ValueError, match="at least 2 times"):
        check_grid([0.5])
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_grid([1.0, math.nan, 0.0])
    with pytest.raises(TypeError, match="sequence of numbers"):
        check_grid("1,0")
    with pytest.raises(ValueError, match="strictly increasing"):
        check_grid([0.0, 0.5, 0.4], increasing=True)
