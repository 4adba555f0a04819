"""Per-sample single steps (distillation teachers) agree with the grid samplers, per sample."""

from __future__ import annotations

import pytest
import torch

from flowgen.paths import VP, RectifiedFlow
from flowgen.samplers import as_denoiser, as_velocity, ddim_step, heun_step, integrate, step

from _sampler_helpers import exact_start, oracle

F64 = torch.float64


@pytest.mark.parametrize("method", ["euler", "heun", "midpoint", "rk4", "ddim"])
@pytest.mark.parametrize("prediction", ["noise", "v", "data"])
def test_step_with_per_sample_times_equals_one_step_of_the_sampler(method, prediction):
    orc = oracle()
    path = VP()
    model = orc.model(path, prediction)
    t = torch.tensor([0.9, 0.5, 0.3], dtype=F64)
    s = torch.tensor([0.7, 0.45, 0.01], dtype=F64)
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = step(model, path, x, t=t, s=s, prediction=prediction, method=method)
    for i in range(3):
        one = integrate(model, path, x[i : i + 1], prediction=prediction, method=method, grid=[float(t[i]), float(s[i])])
        torch.testing.assert_close(out[i : i + 1], one.samples, rtol=1e-10, atol=1e-12)


def test_two_ddim_steps_are_exact_on_a_constant_denoiser():
    """DDIM is exact when the data prediction is constant: two half steps equal one full step."""
    path = VP()
    const = torch.tensor([0.7, -1.2], dtype=F64)
    model = lambda x, t: const.expand_as(x)  # noqa: E731 - a data model
    x = torch.randn(4, 2, dtype=F64)
    t, mid, s = (torch.full((4,), v, dtype=F64) for v in (0.9, 0.6, 0.2))
    two = ddim_step(model, path, ddim_step(model, path, x, t=t, s=mid, prediction="data"), t=mid, s=s, prediction="data")
    one = ddim_step(model, path, x, t=t, s=s, prediction="data")
    torch.testing.assert_close(two, one, rtol=1e-12, atol=1e-12)


def test_heun_step_falls_back_to_euler_where_the_end_is_singular():
    orc = oracle()
    path = RectifiedFlow()
    calls = []

    def model(x, t):
        calls.append(t.clone())
        return orc.predict(x, t, path, "data")

    x = torch.randn(2, 2, dtype=F64)
    t = torch.tensor([0.5, 0.5], dtype=F64)
    s = torch.tensor([0.0, 0.25], dtype=F64)  # sample 0 ends at σ = 0, where a data model is singular
    out = heun_step(model, path, x, t=t, s=s, prediction="data")
    assert all(bool((c > 0).all()) for c in calls)  # never evaluated at t = 0
    euler = step(model, path, x, t=t, s=s, prediction="data", method="euler")
    heun1 = integrate(model, path, x[1:], prediction="data", method="heun", grid=[0.5, 0.25]).samples
    torch.testing.assert_close(out[0], euler[0])
    torch.testing.assert_close(out[1:], heun1)


def test_steps_keep_the_graph_for_distillation():
    path = RectifiedFlow()
    net = torch.nn.Linear(3, 2).double()
    model = lambda x, t: net(torch.cat([x, t[:, None]], 1))  # noqa: E731
    x = torch.randn(4, 2, dtype=F64, requires_grad=True)
    out = heun_step(model, path, x, t=0.8, s=0.4, prediction="velocity")
    out.sum().backward()
    assert x.grad is not None and net.weight.grad is not None


def test_ddim_step_with_eta_uses_the_generator():
    orc = oracle()
    path = VP()
    model = orc.model(path, "noise")
    x = torch.randn(3, 2, dtype=F64)
    a = ddim_step(model, path, x, t=0.8, s=0.5, prediction="noise", eta=1.0, generator=torch.Generator().manual_seed(0))
    b = ddim_step(model, path, x, t=0.8, s=0.5, prediction="noise", eta=1.0, generator=torch.Generator().manual_seed(0))
    c = ddim_step(model, path, x, t=0.8, s=0.5, prediction="noise", eta=0.0)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_adapters_match_the_oracle():
    orc = oracle()
    path = VP()
    x = exact_start(orc, path, 0.5, 5)
    t = torch.linspace(0.1, 0.9, 5, dtype=F64)
    for prediction in ("noise", "data", "v", "score", "velocity"):
        model = orc.model(path, prediction)
        field = as_velocity(model, path, prediction)
        torch.testing.assert_close(field(x, t), orc.velocity(x, t, path), rtol=1e-9, atol=1e-9)
        den = as_denoiser(model, path, prediction)
        data, noise = den.data_noise(x, t)
        ref_data, ref_noise = orc.posterior(x, t, path)
        torch.testing.assert_close(den(x, t), ref_data, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close((data, noise), (ref_data, ref_noise), rtol=1e-9, atol=1e-9)
        assert field.nfe == 1 and den.nfe == 2


def test_step_bad_input():
    path = VP()
    x = torch.randn(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="step supports methods"):
        step(lambda x, t: x, path, x, t=0.5, s=0.4, prediction="velocity", method="ddpm")
    with pytest.raises(ValueError, match=r"s has batch size 2 but the data has batch size 3"):
        step(lambda x, t: x, path, x, t=0.5, s=torch.tensor([0.1, 0.2], dtype=F64), prediction="velocity")
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\]"):
        step(lambda x, t: x, path, x, t=1.5, s=0.1, prediction="velocity")
    with pytest.raises(ValueError, match="eta is a ddim option"):
        step(lambda x, t: x, path, x, t=0.5, s=0.1, prediction="velocity", eta=1.0)
