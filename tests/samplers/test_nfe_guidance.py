"""NFE equals each solver's formula and the counted model calls; classifier-free guidance laws."""

from __future__ import annotations

import pytest
import torch

from flowgen.paths import VP, RectifiedFlow
from flowgen.samplers import as_velocity, count_nfe, integrate, sample

from _sampler_helpers import ConditionalOracle, exact_start, oracle

N = 6


def _formula(method: str, n: int, end_singular: bool) -> int:
    return {
        "euler": n,
        "ddim": n,
        "ddpm": n,
        "dpm_solver_pp_2m": n,
        "midpoint": 2 * n,
        "heun": 2 * n - 1 if end_singular else 2 * n,
        "edm_stochastic": 2 * n - 1 if end_singular else 2 * n,
        "rk4": 4 * n - 1 if end_singular else 4 * n,
    }[method]


@pytest.mark.parametrize("method", ["euler", "heun", "midpoint", "rk4", "ddim", "ddpm", "dpm_solver_pp_2m", "edm_stochastic"])
@pytest.mark.parametrize("case", ["rf_data_to_zero", "vp_to_t_min"])
def test_nfe_matches_formula_and_counted_calls(method, case):
    orc = oracle()
    if case == "rf_data_to_zero":  # a data model cannot be evaluated at t = 0 on rectified flow
        path, prediction, end_singular = RectifiedFlow(), "data", True
    else:
        path, prediction, end_singular = VP(), "noise", False
    model = count_nfe(orc.model(path, prediction))
    out = sample(model, path, torch.randn(3, 2, dtype=torch.float64), prediction=prediction, method=method, steps=N)
    assert out.nfe == _formula(method, N, end_singular) == model.calls


def test_adaptive_nfe_is_the_counted_calls_including_rejections():
    orc = oracle()
    path = VP()
    model = count_nfe(orc.model(path, "noise"))
    out = sample(model, path, torch.randn(3, 2, dtype=torch.float64), prediction="noise", method="bosh3", atol=1e-7, rtol=1e-7)
    assert out.nfe == model.calls > 10


def test_adaptive_to_singular_end_finishes_with_one_ddim_step():
    orc = oracle()
    path = RectifiedFlow()
    model = count_nfe(orc.model(path, "data"))
    x = exact_start(orc, path, 1.0, 4)
    out = integrate(model, path, x, prediction="data", method="dopri5", atol=1e-8, rtol=1e-8)
    exact = orc.flow_map(x, t=torch.ones(4, dtype=torch.float64), s=torch.zeros(4, dtype=torch.float64), path=path)
    assert out.nfe == model.calls
    torch.testing.assert_close(out.samples, exact, atol=1e-5, rtol=0)


def test_one_step_generator_costs_one_evaluation():
    orc = oracle()
    path = RectifiedFlow()
    model = count_nfe(orc.model(path, "velocity"))
    noise = torch.randn(5, 2, dtype=torch.float64)
    out = sample(model, path, noise, prediction="velocity", steps=1)
    assert out.nfe == model.calls == 1
    torch.testing.assert_close(out.samples, noise - orc.velocity(noise, torch.ones(5, dtype=torch.float64), path))


# --- guidance -------------------------------------------------------------------------------
def _two_class_model(path, prediction="velocity"):
    from flowgen.testing import GaussianData

    a = GaussianData(torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.3]))
    b = GaussianData(torch.tensor([-1.0, 1.0]), torch.tensor([1.0, 2.0]))
    return ConditionalOracle([a, b], path, prediction)  # class 0 = a (conditional), 1 = b (null)


@pytest.mark.parametrize("method", ["euler", "heun", "ddim"])
def test_guidance_scale_zero_is_unconditional_and_one_is_conditional(method):
    path = VP()
    noise = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cond = torch.zeros(4, dtype=torch.long)
    null = torch.ones(4, dtype=torch.long)
    kw = dict(prediction="noise", method=method, steps=5)
    model = _two_class_model(path, "noise")
    g0 = sample(model, path, noise, cond=cond, guidance_scale=0.0, null_cond=1, **kw)
    g1 = sample(model, path, noise, cond=cond, guidance_scale=1.0, null_cond=1, **kw)
    uncond = sample(model, path, noise, cond=null, **kw)
    conditional = sample(model, path, noise, cond=cond, **kw)
    torch.testing.assert_close(g0.samples, uncond.samples, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g1.samples, conditional.samples, rtol=1e-10, atol=1e-10)
    evals = conditional.nfe
    assert g0.nfe == g1.nfe == 2 * evals  # the guided pair counts two evaluations


def test_guidance_is_one_batched_call_and_interpolates_the_velocity():
    path = VP()
    model = _two_class_model(path, "data")
    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    cond = torch.zeros(3, dtype=torch.long)
    w = 2.5
    guided = as_velocity(model, path, "data", cond=cond, guidance_scale=w, null_cond=torch.ones(3, dtype=torch.long))
    v = guided(x, t)
    assert model.batches == [6] and guided.nfe == 2
    v_c = as_velocity(model, path, "data", cond=cond)(x, t)
    v_u = as_velocity(model, path, "data", cond=torch.ones(3, dtype=torch.long))(x, t)
    torch.testing.assert_close(v, v_u + w * (v_c - v_u), rtol=1e-10, atol=1e-10)


def test_guided_sampling_counts_one_call_per_evaluation():
    path = RectifiedFlow()
    model = _two_class_model(path)
    out = sample(model, path, torch.randn(4, 2, dtype=torch.float64), prediction="velocity", method="heun", steps=3,
                 cond=torch.zeros(4, dtype=torch.long), guidance_scale=3.0, null_cond=1)
    assert model.calls == 6 and out.nfe == 12 and set(model.batches) == {8}


def test_callback_sees_every_step_and_progress_bar_runs():
    orc = oracle()
    path = VP()
    seen = []
    out = sample(orc.model(path, "noise"), path, torch.randn(3, 2, dtype=torch.float64), prediction="noise", method="heun",
                 steps=5, progress=True, callback=lambda i, t, x: seen.append((i, t, x.clone())))
    assert [i for i, _, _ in seen] == list(range(5))
    assert [t for _, t, _ in seen] == out.grid[1:].tolist()
    torch.testing.assert_close(seen[-1][2], out.samples)
