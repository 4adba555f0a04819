"""Preconditioning: the consistency boundary condition holds exactly; EDM's Table 1 on the EDM path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from flowgen.paths import EDM, Cosine, RectifiedFlow
from flowgen.preconditioning import BoundaryConditioned, EDMPreconditioned, consistency_coefficients, edm_coefficients
from flowgen.testing import strategies as fst

F64 = torch.float64
FAMILIES = sorted(fst.PATH_FAMILIES)


class RandomNet(nn.Module):
    """A random, shape-agnostic network ``F(x, t)``: a seeded random mixing of the features, scaled by t."""

    def __init__(self, seed: int, scale: float = 3.0):
        super().__init__()
        self.seed, self.scale = seed, scale
        self.inputs = []

    def forward(self, x, t, cond=None):
        self.inputs.append((x, t, cond))
        g = torch.Generator().manual_seed(self.seed)
        flat = x.reshape(x.shape[0], -1)
        w = torch.randn(flat.shape[1], flat.shape[1], generator=g, dtype=torch.float64).to(x.device, x.dtype)
        b = torch.randn(flat.shape[1], generator=g, dtype=torch.float64).to(x.device, x.dtype)
        out = torch.tanh(flat @ w + b) * self.scale * (1 + t.to(x.dtype)[:, None])
        if cond is not None:
            out = out + cond.reshape(x.shape[0], -1).to(x.dtype).sum(1, keepdim=True)
        return out.reshape(x.shape)


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_consistency_boundary_condition_is_exact(family, data):
    path = data.draw(fst.PATH_FAMILIES[family](), label="path")
    shape = data.draw(fst.batch_shapes(), label="shape")
    dtype = data.draw(fst.dtypes(), label="dtype")
    x = data.draw(fst.tensors(shape, dtype=dtype, scale=(0.1, 100.0)), label="x")
    sigma_data = data.draw(st.floats(0.1, 2.0), label="sigma_data")
    net = RandomNet(data.draw(fst.seeds(), label="seed"))
    f = BoundaryConditioned(net, path, sigma_data=sigma_data)
    t_min = torch.full((shape[0],), path.t_min, dtype=dtype)
    out = f(x, t_min)
    assert out.dtype == dtype and out.shape == shape
    assert torch.equal(out, x), (out - x).abs().max()
    c_skip, c_out, _ = consistency_coefficients(path, t_min, t_min=path.t_min, sigma_data=sigma_data)
    assert (c_skip == 1).all() and (c_out == 0).all()
    # a boundary chosen by the user inside the interval
    lo, hi = path.t_min, path.t_max
    own = data.draw(st.floats(lo, lo + 0.5 * (hi - lo)), label="own_t_min")
    g = BoundaryConditioned(net, path, t_min=own, sigma_data=sigma_data)
    assert torch.equal(g(x, torch.full((shape[0],), own, dtype=dtype)), x)
    # away from the boundary the network matters, and everything is finite on [t_min, t_max], ends included
    t = data.draw(fst.times(path, shape[0], margin=0.0, dtype=dtype), label="t")
    for tt in (t, torch.full((shape[0],), path.t_max, dtype=dtype)):
        y = f(x, tt)
        assert torch.isfinite(y).all(), (tt, y)


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_edm_preconditioning_unit_variance_laws_on_every_path(family, data):
    """In the path's VE frame (σ̃ = σ/α): c_in²(σ̃² + σ_d²) = 1 and (1 − c_skip)²σ_d² + c_skip²σ̃² = c_out²."""
    path = data.draw(fst.PATH_FAMILIES[family](), label="path")
    t = data.draw(fst.times(path, 5, margin=1e-3, dtype=F64), label="t")
    sd = data.draw(st.floats(0.1, 2.0), label="sigma_data")
    c_skip, c_out, c_in = edm_coefficients(path, t, sigma_data=sd)
    s = path.sigma(t) / path.alpha(t)
    torch.testing.assert_close(c_in**2 * (s**2 + sd**2), torch.ones_like(t))
    torch.testing.assert_close((1 - c_skip) ** 2 * sd**2 + c_skip**2 * s**2, c_out**2)


@given(fst.edms(), st.data())
def test_edm_preconditioning_matches_karras_table_1(path, data):
    shape = data.draw(fst.batch_shapes(), label="shape")
    t = data.draw(fst.times(path, shape[0], margin=0.0, dtype=F64), label="t")
    x = data.draw(fst.tensors(shape, scale=(0.1, 50.0)), label="x")
    sd = path.sigma_data
    sigma = path.sigma_max * t  # EDM's σ at flowgen time t
    c_skip, c_out, c_in = edm_coefficients(path, t, sigma_data=sd)
    torch.testing.assert_close(c_skip, sd**2 / (sigma**2 + sd**2), rtol=1e-14, atol=0)
    torch.testing.assert_close(c_out, sigma * sd / torch.sqrt(sigma**2 + sd**2), rtol=1e-14, atol=0)
    torch.testing.assert_close(c_in, 1 / torch.sqrt(sigma**2 + sd**2), rtol=1e-14, atol=0)
    net = RandomNet(data.draw(fst.seeds(), label="seed"))
    out = EDMPreconditioned(net, path, sigma_data=sd)(x, t)
    (seen_x, seen_t, _), = net.inputs
    b = (-1, *([1] * (x.dim() - 1)))
    torch.testing.assert_close(seen_x, c_in.reshape(b) * x, rtol=1e-13, atol=1e-15)
    assert torch.equal(seen_t, t)  # the network sees flowgen's t unchanged
    expected = c_skip.reshape(b) * x + c_out.reshape(b) * net(seen_x, t)
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_edm_preconditioned_is_a_data_prediction_in_the_ve_frame(family, data):
    """D(x_t, t) on any path equals EDM's formula applied to x̃ = x_t/α at σ̃ = σ/α; finite at the ends."""
    path = data.draw(fst.PATH_FAMILIES[family](), label="path")
    shape = data.draw(fst.batch_shapes(), label="shape")
    dtype = data.draw(fst.dtypes(), label="dtype")
    t = data.draw(fst.times(path, shape[0], margin=1e-3, dtype=dtype), label="t")
    x = data.draw(fst.tensors(shape, dtype=dtype), label="x")
    net = RandomNet(data.draw(fst.seeds(), label="seed"))
    model = EDMPreconditioned(net, path, sigma_data=0.5)
    out = model(x, t)
    assert out.dtype == dtype and out.shape == shape
    b = (-1, *([1] * (x.dim() - 1)))
    t64, x64 = t.double(), x.double()
    a, s = path.alpha(t64), path.sigma(t64)
    s_ve = (s / a).reshape(b)
    x_ve = x64 / a.reshape(b)
    c_skip, c_out, c_in = 0.25 / (s_ve**2 + 0.25), s_ve * 0.5 / torch.sqrt(s_ve**2 + 0.25), 1 / torch.sqrt(s_ve**2 + 0.25)
    ref = c_skip * x_ve + c_out * RandomNet(net.seed)(c_in * x_ve, t64)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * (1 + ref.abs().max()))
    ends = torch.tensor([path.t_min, path.t_max], dtype=dtype).repeat_interleave(shape[0])
    xx = x.repeat(2, *([1] * (x.dim() - 1)))
    assert torch.isfinite(model(xx, ends)).all()


@pytest.mark.parametrize("path", [RectifiedFlow(), Cosine()], ids=["RectifiedFlow", "Cosine"])
def test_preconditioning_is_finite_where_alpha_is_zero(path):
    """At t = 1 on rectified flow and cosine α = 0 and σ̃ = ∞: the limits are c_skip → 0, c_out → σ_d."""
    x, t = torch.randn(3, 4), torch.ones(3)
    net = RandomNet(0)
    d = EDMPreconditioned(net, path)(x, t)
    (seen_x, _, _), = net.inputs
    torch.testing.assert_close(seen_x, x)  # c_in·x̃ = x_t / √(σ² + σ_d²α²) = x_t
    torch.testing.assert_close(d, 0.5 * RandomNet(0)(x, t))
    f = BoundaryConditioned(RandomNet(0), path, t_min=0.0)
    torch.testing.assert_close(f(x, t), 0.5 * RandomNet(0)(x, t))
    for fn in (edm_coefficients(path, t), consistency_coefficients(path, t, t_min=0.0)):
        c_skip, c_out, c_in = fn
        assert torch.equal(c_skip, torch.zeros(3)) and torch.equal(c_in, torch.zeros(3))
        torch.testing.assert_close(c_out, torch.full((3,), 0.5))


def test_condition_is_passed_through():
    path, x, t = EDM(), torch.randn(2, 3), torch.full((2,), 0.3)
    cond = torch.tensor([[1.0], [2.0]])
    for wrapper in (EDMPreconditioned(RandomNet(1), path), BoundaryConditioned(RandomNet(1), path)):
        with_cond, without = wrapper(x, t, cond), wrapper(x, t)
        assert wrapper.net.inputs[0][2] is cond
        assert not torch.equal(with_cond, without)


def test_preconditioned_models_backpropagate_to_the_network():
    lin = nn.Linear(3, 3)
    net = lambda x, t: lin(x)  # noqa: E731
    for wrapper in (EDMPreconditioned(net, Cosine()), BoundaryConditioned(net, Cosine())):
        lin.zero_grad()
        wrapper(torch.randn(4, 3), torch.rand(4) * 0.9 + 0.05).pow(2).sum().backward()
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


@given(path=fst.paths(), seed=fst.seeds())
def test_boundary_condition_on_the_test_device(path, seed, device):
    net = RandomNet(seed)
    x = torch.randn(3, 2, 2, device=device)
    t_min = torch.full((3,), path.t_min, device=device)
    assert torch.equal(BoundaryConditioned(net, path)(x, t_min), x)
    out = EDMPreconditioned(net, path)(x, torch.full((3,), path.t_max, device=device))
    assert out.device == x.device and torch.isfinite(out).all()
