"""Laws every path keeps, checked over every path family (built-ins and user schedules).

The families come from :data:`flowgen.testing.strategies.PATH_FAMILIES`; ``test_every_path_class_is_covered``
fails the day a new :class:`~flowgen.paths.Path` subclass lands in :mod:`flowgen.paths` without a
strategy, so every law below runs on it from that day.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import flowgen.paths
from flowgen.paths import EDM, VP, AffinePath, Cosine, DiscreteDDPM, Path, RectifiedFlow, path_from_config, path_to_config
from flowgen.testing import strategies as fst

from _path_reference import fd_points, reference_alpha_sigma

FAMILIES = sorted(fst.PATH_FAMILIES)
F64 = torch.float64


def _path_classes() -> set[type]:
    found, stack = set(), [Path]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            stack.append(sub)
            if sub.__module__.startswith("flowgen.paths") and not inspect.isabstract(sub):
                found.add(sub)
    for name in flowgen.paths.__all__:
        obj = getattr(flowgen.paths, name)
        if inspect.isclass(obj) and issubclass(obj, Path) and not inspect.isabstract(obj):
            found.add(obj)
    return found


def test_every_path_class_is_covered():
    classes = {cls.__name__ for cls in _path_classes()}
    assert classes, "no Path subclasses found"
    missing = classes - set(fst.PATH_FAMILIES)
    assert not missing, f"path classes without a strategy in PATH_FAMILIES (so untested by the laws): {missing}"
    assert set(flowgen.paths.BUILTIN_PATHS) <= set(fst.PATH_FAMILIES)


def _draw_path(data, family: str) -> Path:
    return data.draw(fst.PATH_FAMILIES[family](), label="path")


def _grid(n: int, dtype, *, interior: bool = False) -> torch.Tensor:
    t = torch.linspace(0.0, 1.0, n, dtype=F64)
    t = t[1:-1] if interior else t
    return t.to(dtype)


# --- values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_alpha_sigma_finite_nonnegative(family, data):
    path = _draw_path(data, family)
    dtype = data.draw(fst.dtypes(), label="dtype")
    random_t = data.draw(fst.times(path, 8, margin=0.0, dtype=dtype), label="t")
    for t in (_grid(257, dtype), random_t, torch.tensor([0.0, 1.0], dtype=dtype)):
        a, s = path.alpha(t), path.sigma(t)
        assert torch.isfinite(a).all() and torch.isfinite(s).all()
        assert (a >= 0).all() and (s >= 0).all()
        assert (a + s > 0).all()


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_alpha_sigma_match_defining_formula(family, data):
    path = _draw_path(data, family)
    t = data.draw(fst.times(path, 8, margin=0.0, dtype=F64), label="t")
    ref_a, ref_s = reference_alpha_sigma(path, t.numpy())
    np.testing.assert_allclose(path.alpha(t).numpy(), ref_a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(path.sigma(t).numpy(), ref_s, rtol=1e-10, atol=1e-12)


def _expected_endpoints(path: Path) -> dict:
    """(α(0), σ(0), α(1), σ(1)) from each path's definition; None where not pinned down."""
    if isinstance(path, RectifiedFlow):
        return {"a0": 1.0, "s0": path.sigma_min, "a1": 0.0, "s1": 1.0}
    if isinstance(path, Cosine):
        return {"a0": 1.0, "s0": 0.0, "a1": 0.0, "s1": 1.0}
    if isinstance(path, VP):
        a1 = math.exp(-0.25 * (path.beta_max - path.beta_min) - 0.5 * path.beta_min)
        return {"a0": 1.0, "s0": 0.0, "a1": a1, "s1": math.sqrt(1.0 - a1 * a1)}
    if isinstance(path, DiscreteDDPM):
        abar_last = float(np.prod(1.0 - path.betas.numpy()))
        return {"a0": 1.0, "s0": 0.0, "a1": math.sqrt(abar_last), "s1": math.sqrt(1.0 - abar_last)}
    if isinstance(path, EDM):
        return {"a0": 1.0, "s0": 0.0, "a1": 1.0, "s1": path.sigma_max}
    if isinstance(path, AffinePath):
        ends = torch.tensor([0.0, 1.0], dtype=F64)
        a, s = path._alpha_fn(ends).double(), path._sigma_fn(ends).double()
        return {"a0": float(a[0]), "s0": float(s[0]), "a1": float(a[1]), "s1": float(s[1])}
    raise NotImplementedError(type(path).__name__)


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_endpoint_values(family, data):
    path = _draw_path(data, family)
    exp = _expected_endpoints(path)
    for dtype in (torch.float32, F64):
        ends = torch.tensor([0.0, 1.0], dtype=dtype)
        a, s = path.alpha(ends), path.sigma(ends)
        tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a, torch.tensor([exp["a0"], exp["a1"]], dtype=dtype), **tol)
        torch.testing.assert_close(s, torch.tensor([exp["s0"], exp["s1"]], dtype=dtype), **tol)
        if not isinstance(path, AffinePath):
            # exact: every built-in starts at the data, α(0) = 1
            assert a[0].item() == 1.0
        if exp["s0"] == 0.0:
            assert s[0].item() == 0.0
        if exp["a1"] == 0.0:
            assert a[1].item() == 0.0
    if isinstance(path, EDM):
        torch.testing.assert_close(path.sigma(torch.tensor([path.t_min], dtype=F64)), torch.tensor([path.sigma_min], dtype=F64))


def test_endpoints_named_cases():
    """The literal endpoint facts of the issue, spelled out once."""
    ends = torch.tensor([0.0, 1.0])
    for path in (RectifiedFlow(), Cosine()):
        assert path.alpha(ends).tolist() == [1.0, 0.0] and path.sigma(ends).tolist() == [0.0, 1.0]
    assert RectifiedFlow(sigma_min=0.01).sigma(ends.double()).tolist() == [0.01, 1.0]
    for path in (VP(), EDM(), DiscreteDDPM.linear(), DiscreteDDPM.cosine()):
        assert path.alpha(ends)[0].item() == 1.0 and path.sigma(ends)[0].item() == 0.0


# --- log-SNR ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_log_snr_strictly_decreasing(family, data):
    path = _draw_path(data, family)
    for dtype, n in ((F64, 2049), (torch.float32, 129)):
        lam = path.log_snr(_grid(n, dtype, interior=True))
        assert torch.isfinite(lam).all()
        assert (lam[1:] < lam[:-1]).all(), "log-SNR not strictly decreasing on the interior"
    t = data.draw(fst.times(path, 2, margin=1e-6, dtype=F64), label="t")
    lo, hi = t.min(), t.max()
    if hi - lo > 1e-6:
        pair = torch.stack([lo, hi])
        lam = path.log_snr(pair)
        assert lam[0] > lam[1]
    # λ = 2 log(α/σ) by definition
    t = data.draw(fst.times(path, 6, margin=1e-3, dtype=F64), label="t_def")
    torch.testing.assert_close(path.log_snr(t), 2.0 * torch.log(path.alpha(t) / path.sigma(t)), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_log_snr_inverse_round_trips(family, data):
    path = _draw_path(data, family)
    t = data.draw(fst.times(path, 6, margin=1e-3, dtype=F64), label="t")
    lam = path.log_snr(t)
    torch.testing.assert_close(path.t_from_log_snr(lam), t, rtol=0, atol=1e-9)
    # and the other way, for log-SNRs inside the path's range
    ends = path.log_snr(torch.tensor([1.0 - 1e-3, max(path.t_min, 1e-3)], dtype=F64))
    u = data.draw(st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4), label="u")
    lam2 = ends[0] + (ends[1] - ends[0]) * torch.tensor(u, dtype=F64)
    torch.testing.assert_close(path.log_snr(path.t_from_log_snr(lam2)), lam2, rtol=1e-7, atol=1e-7)
    # float32 in, float32 out and close
    t32 = t.float()
    back = path.t_from_log_snr(path.log_snr(t32))
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, t32, rtol=0, atol=2e-3)


# --- derivatives ---------------------------------------------------------------------------
def _autograd(fn, t: torch.Tensor) -> torch.Tensor:
    tt = t.clone().requires_grad_(True)
    y = fn(tt)
    if not y.requires_grad:  # a constant schedule (α = 1) has no graph: its derivative is 0
        return torch.zeros_like(t)
    (g,) = torch.autograd.grad(y.sum(), tt)
    return g


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_derivatives_equal_autograd_and_finite_differences(family, data):
    path = _draw_path(data, family)
    t = data.draw(fst.times(path, 6, margin=1e-2, dtype=F64), label="t")
    da, ds = path.d_alpha(t), path.d_sigma(t)
    scale = 1.0 + da.abs() + ds.abs()
    torch.testing.assert_close(da, _autograd(path.alpha, t), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ds, _autograd(path.sigma, t), rtol=1e-9, atol=1e-12)
    # an independent check of the same derivatives: finite differences of α, σ (one-sided at DDPM knots)
    h = 1e-6
    lo, hi = fd_points(path, t, h)
    fd_a = (path.alpha(hi) - path.alpha(lo)) / (hi - lo)
    fd_s = (path.sigma(hi) - path.sigma(lo)) / (hi - lo)
    assert ((fd_a - da).abs() <= 1e-5 * scale).all(), (fd_a, da)
    assert ((fd_s - ds).abs() <= 1e-5 * scale).all(), (fd_s, ds)


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_derivatives_finite_on_generation_interval(family, data):
    path = _draw_path(data, family)
    t = torch.linspace(path.t_min, path.t_max, 257, dtype=F64)
    for c in path.coefficients(t):
        assert torch.isfinite(c).all()
    assert path.prior_scale() > 0


# --- sample() ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_sample_matches_definition(family, data):
    path = _draw_path(data, family)
    shape = data.draw(fst.batch_shapes(), label="shape")
    t = data.draw(fst.times(path, shape[0], margin=1e-2, dtype=F64), label="t")
    x0, eps = data.draw(fst.data_noise(shape), label="data_noise")
    out = path.sample(data=x0, noise=eps, t=t)
    ref_a, ref_s = (torch.from_numpy(v).reshape(shape[0], *([1] * (len(shape) - 1))) for v in reference_alpha_sigma(path, t.numpy()))
    torch.testing.assert_close(out.x_t, ref_a * x0 + ref_s * eps, rtol=1e-10, atol=1e-10)
    assert out.x_t.shape == shape and out.velocity.shape == shape and out.t.shape == (shape[0],)
    for name in ("alpha", "sigma", "d_alpha", "d_sigma"):
        assert getattr(out, name).shape == (shape[0],)
    # velocity = d x_t / dt, by finite differences of x_t in t with data and noise fixed
    h = 1e-6
    lo, hi = fd_points(path, t, h)
    x_hi = path.sample(data=x0, noise=eps, t=hi).x_t
    x_lo = path.sample(data=x0, noise=eps, t=lo).x_t
    width = (hi - lo).reshape(shape[0], *([1] * (len(shape) - 1)))
    fd = (x_hi - x_lo) / width
    scale = 1.0 + out.velocity.abs().max() + out.x_t.abs().max()
    assert ((fd - out.velocity).abs() <= 2e-5 * scale).all()


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_dtypes_in_equal_dtypes_out(family, data):
    path = _draw_path(data, family)
    for dtype in (torch.float32, F64):
        t = data.draw(fst.times(path, 3, margin=1e-3, dtype=dtype), label="t")
        for fn in (path.alpha, path.sigma, path.d_alpha, path.d_sigma, path.log_snr):
            assert fn(t).dtype == dtype
        assert path.t_from_log_snr(path.log_snr(t)).dtype == dtype
        x0 = torch.randn(3, 2, dtype=dtype)
        out = path.sample(data=x0, noise=torch.randn_like(x0), t=t)
        assert out.x_t.dtype == dtype and out.velocity.dtype == dtype
    # float32 and float64 agree to float32 precision
    t = data.draw(fst.times(path, 4, margin=1e-3, dtype=F64), label="t64")
    torch.testing.assert_close(path.alpha(t.float()).double(), path.alpha(t), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(path.sigma(t.float()).double(), path.sigma(t), rtol=1e-4, atol=1e-5 * (1 + path.prior_scale()))


@pytest.mark.parametrize("family", sorted(flowgen.paths.BUILTIN_PATHS))
@given(data=st.data())
def test_config_round_trip(family, data):
    path = _draw_path(data, family)
    config = path_to_config(path)
    assert config["name"] == family
    rebuilt = path_from_config(config)
    assert type(rebuilt) is type(path)
    t = torch.linspace(0, 1, 33, dtype=F64)
    assert torch.equal(rebuilt.alpha(t), path.alpha(t)) and torch.equal(rebuilt.sigma(t), path.sigma(t))
    assert rebuilt.t_min == path.t_min and rebuilt.t_max == path.t_max


def test_affine_path_config_is_refused_but_repr_works():
    path = AffinePath(alpha=lambda t: 1 - t, sigma=lambda t: t)
    with pytest.raises(TypeError, match="AffinePath"):
        path_to_config(path)
    assert repr(path).startswith("AffinePath(")


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_paths_on_the_test_device(family, data, device):
    """Every path evaluates on the --device device, in its dtype, and agrees with the CPU."""
    path = _draw_path(data, family)
    t = data.draw(fst.times(path, 5, margin=1e-3, dtype=F64), label="t")
    td = t.to(device)
    for name in ("alpha", "sigma", "d_alpha", "d_sigma", "log_snr"):
        out = getattr(path, name)(td)
        assert out.device == td.device and out.dtype == F64
        torch.testing.assert_close(out.cpu(), getattr(path, name)(t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(path.t_from_log_snr(path.log_snr(td)).cpu(), t, rtol=0, atol=1e-8)
    x0 = torch.randn(5, 3, dtype=torch.float32, device=device)
    out = path.sample(data=x0, noise=torch.randn_like(x0), t=td.float())
    assert out.x_t.device == x0.device and out.x_t.dtype == torch.float32
