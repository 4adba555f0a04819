"""DiscreteDDPM: the ᾱ tables value for value, the index mapping, and the path between knots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowgen.paths import DiscreteDDPM, path_from_config, path_to_config

F64 = torch.float64


def nichol_dhariwal_cosine_abar(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Improved DDPM (arXiv:2102.09672, eq. 17): ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2), β clipped."""
    steps = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos((steps + s) / (1.0 + s) * np.pi / 2.0) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], max_beta)
    return np.cumprod(1.0 - betas)


def test_linear_table_is_the_standard_one_exactly():
    path = DiscreteDDPM.linear()
    expected = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    assert path.alphas_cumprod.dtype == F64 and path.num_steps == 1000
    assert np.array_equal(path.alphas_cumprod.numpy(), expected)
    assert np.array_equal(path.betas.numpy(), np.linspace(1e-4, 0.02, 1000))


def test_scaled_linear_table():
    path = DiscreteDDPM.scaled_linear()
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    np.testing.assert_allclose(path.alphas_cumprod.numpy(), np.cumprod(1.0 - betas), rtol=1e-14, atol=0)


@pytest.mark.parametrize("num_steps", [1000, 4000, 50, 2])
def test_cosine_table_matches_nichol_dhariwal(num_steps):
    path = DiscreteDDPM.cosine(num_steps=num_steps)
    expected = nichol_dhariwal_cosine_abar(num_steps)
    np.testing.assert_allclose(path.alphas_cumprod.numpy(), expected, rtol=1e-13, atol=0)
    # telescoping: where no β was clipped, ᾱ_i = f((i + 1)/T) / f(0)
    f = lambda x: math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    unclipped = path.betas.numpy() < 0.999
    first_clip = int(np.argmin(unclipped)) if not unclipped.all() else num_steps
    telescoped = np.array([f((i + 1) / num_steps) / f(0.0) for i in range(first_clip)])
    np.testing.assert_allclose(path.alphas_cumprod.numpy()[:first_clip], telescoped, rtol=1e-9, atol=0)
    assert path.betas.max() <= 0.999


def test_tables_agree_with_the_float32_ones_the_ecosystem_ships():
    """diffusers / CompVis build these tables in float32 with torch; they must agree in float32 tolerance."""
    # linear: torch.linspace in float32, cumprod in float32
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    shipped = torch.cumprod(1.0 - betas, dim=0)
    torch.testing.assert_close(DiscreteDDPM.linear().alphas_cumprod.float(), shipped, rtol=2e-5, atol=1e-7)
    # scaled_linear (latent diffusion)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    shipped = torch.cumprod(1.0 - betas, dim=0)
    torch.testing.assert_close(DiscreteDDPM.scaled_linear().alphas_cumprod.float(), shipped, rtol=2e-5, atol=1e-7)
    # cosine ("squaredcos_cap_v2"): betas in Python floats, stored as float32, cumprod in float32
    f = lambda x: math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f((i + 1) / 1000) / f(i / 1000), 0.999) for i in range(1000)], dtype=torch.float32)
    shipped = torch.cumprod(1.0 - betas, dim=0)
    torch.testing.assert_close(DiscreteDDPM.cosine().alphas_cumprod.float(), shipped, rtol=2e-5, atol=1e-7)


def _paths():
    return st.builds(
        lambda schedule, n: getattr(DiscreteDDPM, schedule)(num_steps=n),
        st.sampled_from(["linear", "cosine", "scaled_linear"]),
        st.one_of(st.just(1000), st.integers(2, 1200)),
    )


@given(_paths(), st.sampled_from([torch.float32, F64]))
def test_path_is_exact_on_the_grid(path, dtype):
    i = torch.arange(path.num_steps)
    t = path.timestep_to_t(i.to(dtype))
    assert t.dtype == dtype
    abar = path.alpha(t).double() ** 2
    tol = 1e-12 if dtype == F64 else 2e-6
    np.testing.assert_allclose(abar.numpy(), path.alphas_cumprod.numpy(), rtol=tol, atol=0)
    np.testing.assert_allclose((1 - path.sigma(t).double() ** 2).numpy(), path.alphas_cumprod.numpy(), rtol=tol, atol=tol)
    # the grid is t = (i + 1)/T
    torch.testing.assert_close(t.double(), (i.double() + 1) / path.num_steps, rtol=0, atol=1e-7 if dtype != F64 else 0.0)
    # and t_from_log_snr finds the knots again
    torch.testing.assert_close(path.t_from_log_snr(path.log_snr(t.double())), t.double(), rtol=0, atol=1e-9)


@given(st.integers(2, 1200), st.sampled_from([torch.float32, F64]))
def test_timestep_round_trip_is_exact_on_integers(num_steps, dtype):
    path = DiscreteDDPM.linear(num_steps=num_steps)
    i = torch.arange(num_steps, dtype=dtype)
    back = path.t_to_timestep(path.timestep_to_t(i))
    assert back.dtype == dtype
    assert torch.equal(back, i), (back - i).abs().max()
    # integer tensors are accepted too
    assert torch.equal(path.t_to_timestep(path.timestep_to_t(i.long())), i.float())


def test_timestep_round_trip_named_cases():
    """T = 49: fl(fl(1/49)·49) ≠ 1 in float64, the classic trap."""
    path = DiscreteDDPM.linear(num_steps=49)
    i = torch.arange(49, dtype=F64)
    assert torch.equal(path.t_to_timestep(path.timestep_to_t(i)), i)


@given(_paths())
def test_derivative_at_a_knot_is_the_right_segment_slope(path):
    T = path.num_steps
    log_abar = torch.cat([torch.zeros(1, dtype=F64), torch.log(path.alphas_cumprod)])
    i = torch.arange(T - 1)  # knots t_i = (i + 1)/T strictly inside (0, 1)
    t = path.timestep_to_t(i.to(F64))
    slope_right = (log_abar[i + 2] - log_abar[i + 1]) * T  # d log ᾱ / dt on the segment right of the knot
    alpha = torch.exp(0.5 * log_abar[i + 1])
    torch.testing.assert_close(path.d_alpha(t), 0.5 * slope_right * alpha, rtol=1e-9, atol=0)
    sigma = torch.sqrt(1 - alpha**2)
    torch.testing.assert_close(path.d_sigma(t), -(alpha**2) * slope_right / (2 * sigma), rtol=1e-9, atol=0)
    # at t = 1 the left slope
    slope_left = (log_abar[T] - log_abar[T - 1]) * T
    one = torch.ones(1, dtype=F64)
    torch.testing.assert_close(path.d_alpha(one), 0.5 * slope_left * torch.exp(0.5 * log_abar[T:]), rtol=1e-9, atol=0)


@given(_paths())
def test_path_is_continuous_at_knots(path):
    i = torch.arange(path.num_steps - 1, dtype=F64)
    t = path.timestep_to_t(i)
    eps = 1e-10 / path.num_steps  # |α'| ≤ ½|log(1 − β_max)|·T, so the jump over 2·eps is below 1e-9
    for fn in (path.alpha, path.sigma):
        torch.testing.assert_close(fn(t - eps), fn(t), rtol=0, atol=1e-8)
        torch.testing.assert_close(fn(t + eps), fn(t), rtol=0, atol=1e-8)


def test_custom_betas_and_config():
    betas = torch.linspace(1e-3, 0.1, 20, dtype=F64)
    path = DiscreteDDPM(betas)
    np.testing.assert_array_equal(path.alphas_cumprod.numpy(), np.cumprod(1 - betas.numpy()))
    rebuilt = path_from_config(path_to_config(path))
    assert torch.equal(rebuilt.alphas_cumprod, path.alphas_cumprod)
    assert path.t_min == 1 / 20


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: DiscreteDDPM([0.1]), "betas"),
        (lambda: DiscreteDDPM([[0.1, 0.2]]), "betas"),
        (lambda: DiscreteDDPM([0.1, 0.0]), "betas"),
        (lambda: DiscreteDDPM([0.1, 1.0]), "betas"),
        (lambda: DiscreteDDPM([0.1, float("nan")]), "betas"),
        (lambda: DiscreteDDPM.linear(num_steps=1), "num_steps"),
        (lambda: DiscreteDDPM.linear(num_steps=10.5), "num_steps"),
        (lambda: DiscreteDDPM.linear(beta_start=0.0), "beta_start"),
        (lambda: DiscreteDDPM.linear(beta_end=1.5), "beta_end"),
        (lambda: DiscreteDDPM.scaled_linear(beta_start=-1.0), "beta_start"),
        (lambda: DiscreteDDPM.cosine(num_steps=0), "num_steps"),
        (lambda: DiscreteDDPM.cosine(max_beta=1.0), "max_beta"),
        (lambda: DiscreteDDPM.cosine(s=-1.0), "s "),
        (lambda: DiscreteDDPM.cosine(s=float("nan")), "s "),
        (lambda: path_from_config({"name": "DiscreteDDPM", "schedule": "quadratic", "num_steps": 10}), "schedule"),
    ],
)
def test_bad_table_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
