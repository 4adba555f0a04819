"""Bad input to paths raises ValueError/TypeError whose message names the argument."""

from __future__ import annotations

import math

import pytest
import torch

from flowgen.paths import EDM, VP, AffinePath, Cosine, DiscreteDDPM, RectifiedFlow, path_from_config, path_to_config

PATHS = [RectifiedFlow(), RectifiedFlow(sigma_min=0.01), Cosine(), VP(), EDM(), DiscreteDDPM.linear(num_steps=10),
         AffinePath(alpha=lambda t: 1 - t**2, sigma=lambda t: t)]
IDS = [repr(p) if not isinstance(p, AffinePath) else "AffinePath" for p in PATHS]

BAD_TIMES = [
    (torch.tensor([0.5, 1.5]), ValueError, r"t must lie in \[0.0, 1.0\]"),
    (torch.tensor([-1e-3]), ValueError, r"t must lie in"),
    (torch.tensor([[0.5]]), ValueError, r"t must have shape \(B,\)"),
    (torch.tensor(0.5), ValueError, r"t must have shape \(B,\)"),
    (torch.tensor([0.5, float("nan")]), ValueError, r"t holds 1 non-finite"),
    (torch.tensor([float("inf")]), ValueError, r"t holds 1 non-finite"),
    (torch.tensor([1, 0]), TypeError, r"t must be a floating-point tensor"),
    ([0.5], TypeError, r"t must be a torch.Tensor"),
    (0.5, TypeError, r"t must be a torch.Tensor"),
]


@pytest.mark.parametrize("path", PATHS, ids=IDS)
@pytest.mark.parametrize("t, error, match", BAD_TIMES)
def test_bad_t(path, t, error, match):
    for fn in (path.alpha, path.sigma, path.d_alpha, path.d_sigma, path.log_snr, path.coefficients):
        with pytest.raises(error, match=match):
            fn(t)
    batch = t.shape[0] if isinstance(t, torch.Tensor) and t.dim() == 1 else 1
    with pytest.raises(error, match=match):
        path.sample(data=torch.zeros(batch, 2), noise=torch.zeros(batch, 2), t=t)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_bad_sample_arguments(path):
    t = torch.full((3,), 0.5)
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"data has shape \(3, 2\) but noise has shape \(3, 3\)"):
        path.sample(data=x, noise=torch.zeros(3, 3), t=t)
    with pytest.raises(ValueError, match=r"t has batch size 2 but the data has batch size 3"):
        path.sample(data=x, noise=x, t=t[:2])
    with pytest.raises(ValueError, match=r"data must have shape \(B, \*D\)"):
        path.sample(data=torch.tensor(1.0), noise=torch.tensor(1.0), t=t[:1])
    with pytest.raises(TypeError, match=r"noise must be a torch.Tensor"):
        path.sample(data=x, noise=[[0.0, 0.0]] * 3, t=t)
    with pytest.raises(TypeError, match=r"data must be a floating-point tensor"):
        path.sample(data=x.long(), noise=x, t=t)
    with pytest.raises(TypeError):  # keyword-only: data and noise cannot be swapped by position
        path.sample(x, x, t)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_bad_log_snr(path):
    with pytest.raises(ValueError, match="log_snr holds NaN"):
        path.t_from_log_snr(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="log_snr must be a floating tensor of shape"):
        path.t_from_log_snr(torch.tensor([[0.0]]))
    with pytest.raises(TypeError, match="log_snr"):
        path.t_from_log_snr(0.0)
    lo, hi = path.log_snr(torch.tensor([1.0, 0.0], dtype=torch.float64)).tolist()
    if math.isfinite(lo):
        with pytest.raises(ValueError, match=r"log_snr must lie in the path's range"):
            path.t_from_log_snr(torch.tensor([lo - 1.0], dtype=torch.float64))
    if math.isfinite(hi):
        with pytest.raises(ValueError, match=r"log_snr must lie in the path's range"):
            path.t_from_log_snr(torch.tensor([hi + 1.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: RectifiedFlow(sigma_min=-0.1), ValueError, "sigma_min"),
        (lambda: RectifiedFlow(sigma_min=1.0), ValueError, "sigma_min"),
        (lambda: RectifiedFlow(sigma_min=float("nan")), ValueError, "sigma_min"),
        (lambda: RectifiedFlow(sigma_min="0.1"), ValueError, "sigma_min"),
        (lambda: VP(beta_min=0.0), ValueError, "beta_min"),
        (lambda: VP(beta_min=-1.0), ValueError, "beta_min"),
        (lambda: VP(beta_max=float("inf")), ValueError, "beta_max"),
        (lambda: VP(beta_min=5.0, beta_max=1.0), ValueError, "beta_max must exceed beta_min"),
        (lambda: VP(beta_min=1.0, beta_max=1.0), ValueError, "beta_max must exceed beta_min"),
        (lambda: EDM(sigma_min=0.0), ValueError, "sigma_min"),
        (lambda: EDM(sigma_min=10.0, sigma_max=1.0), ValueError, "sigma_max must exceed sigma_min"),
        (lambda: EDM(sigma_max=float("nan")), ValueError, "sigma_max"),
        (lambda: EDM(sigma_data=-0.5), ValueError, "sigma_data"),
        (lambda: path_from_config({"name": "Spiral"}), ValueError, "unknown path name 'Spiral'"),
        (lambda: path_from_config(["RectifiedFlow"]), ValueError, "path config must be a dict"),
        (lambda: path_from_config({"name": "VP", "beta": 3}), ValueError, "bad arguments for path VP"),
        (lambda: path_to_config("Cosine"), TypeError, "path must be a flowgen Path"),
    ],
)
def test_bad_path_constructor_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


# --- user schedules ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(alpha=lambda t: 1 - t, sigma=lambda t: t - 0.5), ValueError, r"sigma\(t\) must be finite and >= 0"),
        (dict(alpha=lambda t: 0.5 - t, sigma=lambda t: t), ValueError, r"alpha\(t\) must be finite and >= 0"),
        (dict(alpha=lambda t: 1 / (t - 0.5).abs(), sigma=lambda t: t), ValueError, r"alpha\(t\) must be finite"),
        (dict(alpha=lambda t: 1 - t, sigma=lambda t: torch.where(t > 0.3, torch.nan, t)), ValueError, r"sigma\(t\) must be finite"),
        (dict(alpha=lambda t: t, sigma=lambda t: 1 - t), ValueError, r"log-SNR 2\*log\(alpha/sigma\) must be strictly decreasing"),
        (dict(alpha=lambda t: 1 + t, sigma=lambda t: 1 + t), ValueError, r"alpha/sigma\) must be strictly decreasing"),
        (dict(alpha=lambda t: 1 - t, sigma=lambda t: t * (1 - t)), ValueError, r"alpha\(t\) and sigma\(t\) are both 0 at t=1"),
        (dict(alpha=lambda t: 1 - t, sigma=lambda t: torch.zeros_like(t)), ValueError, r"both 0"),
        (dict(alpha=lambda t: (1 - t) ** 0.5, sigma=lambda t: t), ValueError, r"d_alpha\(t\) must be finite on \[t_min, t_max\]"),
        (dict(alpha=lambda t: 1 - t, sigma=lambda t: t, d_sigma=lambda t: 1 / (t - 0.5)), ValueError, r"d_sigma\(t\) must be finite"),
        (dict(alpha=1.0, sigma=lambda t: t), TypeError, r"alpha must be callable"),
        (dict(alpha=lambda t: 1 - t, sigma=lambda t: t, d_sigma="one"), TypeError, r"d_sigma must be callable"),
        (dict(alpha=lambda t: 1.0, sigma=lambda t: t), TypeError, r"alpha\(t\) must return a torch.Tensor"),
        (dict(alpha=lambda t: 1 - t, sigma=lambda t: t[:2]), ValueError, r"sigma\(t\) must return shape"),
        (dict(alpha=lambda t: 1 - t, sigma=lambda t: t, t_min=0.5, t_max=0.5), ValueError, r"t_min and t_max"),
        (dict(alpha=lambda t: 1 - t, sigma=lambda t: t, t_max=1.5), ValueError, r"t_min and t_max"),
    ],
)
def test_invalid_user_schedules(kwargs, error, match):
    with pytest.raises(error, match=match):
        AffinePath(**kwargs)


def test_user_schedule_derivatives_by_autograd_and_constants():
    t = torch.linspace(0.01, 0.99, 7, dtype=torch.float64)
    path = AffinePath(alpha=lambda t: torch.cos(t), sigma=lambda t: t**2)
    torch.testing.assert_close(path.d_alpha(t), -torch.sin(t))
    torch.testing.assert_close(path.d_sigma(t), 2 * t)
    # a VE-like schedule with α ≡ 1 written without a graph (ones_like) or as a Python constant tensor
    for alpha in (lambda t: torch.ones_like(t), lambda t: torch.tensor(1.0, dtype=t.dtype)):
        ve = AffinePath(alpha=alpha, sigma=lambda t: 3 * t, t_min=1e-3)
        assert torch.equal(ve.d_alpha(t), torch.zeros_like(t))
        assert torch.equal(ve.alpha(t), torch.ones_like(t))
        torch.testing.assert_close(ve.d_sigma(t), torch.full_like(t, 3.0))


def test_user_schedule_derivative_keeps_graph_for_higher_order():
    path = AffinePath(alpha=lambda t: 1 - t**3, sigma=lambda t: t)
    t = torch.tensor([0.3, 0.6], dtype=torch.float64, requires_grad=True)
    d = path.d_alpha(t)
    (dd,) = torch.autograd.grad(d.sum(), t)
    torch.testing.assert_close(dd, -6 * t.detach())
