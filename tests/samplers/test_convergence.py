"""Every fixed-step method converges to the exact probability-flow ODE solution at its order.

The oracle is Gaussian data, whose PF-ODE solution ``GaussianData.flow_map`` is exact; each run
starts from the exact marginal at ``t_max``. The observed order is ``log2(e_N / e_2N)``.
"""

from __future__ import annotations

import pytest
import torch

from flowgen.samplers import integrate
from flowgen.paths import RectifiedFlow

from _sampler_helpers import (
    NATURAL_GRID,
    PATH_FACTORIES,
    PREDICTIONS,
    exact_end,
    exact_start,
    observed_order,
    oracle,
    start_time,
)

ORDER = {"euler": 1, "ddim": 1, "heun": 2, "midpoint": 2, "dpm_solver_pp_2m": 2, "rk4": 4}
# Steps (N, 2N) in the asymptotic regime of each method.
STEPS = {"euler": 32, "ddim": 32, "heun": 16, "midpoint": 16, "dpm_solver_pp_2m": 32, "rk4": 8}


def _cases():
    cases = []
    k = 0
    for pname in PATH_FACTORIES:
        for method in ORDER:
            if pname == "ddpm" and method in ("midpoint", "rk4"):
                continue  # the discrete table is only piecewise smooth: high orders need N ≫ 1000 knots
            prediction = PREDICTIONS[k % len(PREDICTIONS)]
            k += 1
            cases.append(pytest.param(pname, method, prediction, id=f"{pname}-{method}-{prediction}"))
    return cases


def _setup(pname, method, prediction):
    path = PATH_FACTORIES[pname]()
    grid = NATURAL_GRID[pname]
    t_max, t_min = start_time(path, prediction), path.t_min
    if method == "dpm_solver_pp_2m":
        # DPM-Solver++ is second order in λ: give it a log-SNR grid with finite ends.
        grid = "log_snr"
        t_max, t_min = min(t_max, 0.999), max(t_min, 1e-3)
    return path, grid, t_max, t_min


@pytest.mark.parametrize("pname, method, prediction", _cases())
def test_fixed_step_order(pname, method, prediction):
    orc = oracle()
    path, grid, t_max, t_min = _setup(pname, method, prediction)
    model = orc.model(path, prediction)
    x = exact_start(orc, path, t_max, 8)
    exact = exact_end(orc, path, x, t_max, t_min)
    n = STEPS[method]
    errs = []
    for steps in (n, 2 * n):
        out = integrate(model, path, x, prediction=prediction, method=method, steps=steps, grid=grid, t_max=t_max, t_min=t_min)
        errs.append(float((out.samples - exact).norm(dim=1).max()))
    p = observed_order(*errs)
    order = ORDER[method]
    # At least the method's order; superconvergence (midpoint on rectified flow shows 3) is allowed up to +1.1.
    assert order - 0.3 <= p <= order + 1.1, f"{method} on {pname} ({prediction}): observed order {p:.2f}, errors {errs}"


@pytest.mark.parametrize("method, order", [("heun", 2), ("rk4", 4)])
def test_final_step_to_singular_end_keeps_the_order(method, order):
    """A data model on rectified flow cannot be evaluated at t = 0 (σ = 0): Heun's last corrector is
    skipped and RK4's last step is Ralston-3, and the global order is kept."""
    orc = oracle()
    path = RectifiedFlow()
    model = orc.model(path, "data")
    x = exact_start(orc, path, 1.0, 8)
    exact = exact_end(orc, path, x, 1.0, 0.0)
    n = 16 if method == "heun" else 8
    errs = [float((integrate(model, path, x, prediction="data", method=method, steps=s).samples - exact).norm(dim=1).max()) for s in (n, 2 * n)]
    assert order - 0.3 <= observed_order(*errs) <= order + 0.6, errs


def test_ddim_on_noise_model_and_heun_on_velocity_reach_the_same_endpoint():
    """DDIM on an ε-model and Heun/Euler on the same model's velocity converge to one endpoint."""
    orc = oracle()
    path = PATH_FACTORIES["vp"]()
    x = exact_start(orc, path, 1.0, 8)
    eps_model, vel_model = orc.model(path, "noise"), orc.model(path, "velocity")
    gaps = []
    for steps in (16, 64, 256):
        d = integrate(eps_model, path, x, prediction="noise", method="ddim", steps=steps).samples
        h = integrate(vel_model, path, x, prediction="velocity", method="heun", steps=steps).samples
        e = integrate(vel_model, path, x, prediction="velocity", method="euler", steps=steps).samples
        gaps.append((float((d - h).abs().max()), float((d - e).abs().max())))
    # Gaps shrink ~4x per 4x steps (DDIM and Euler are first order) and end small.
    assert gaps[1][0] < gaps[0][0] / 3 and gaps[2][0] < gaps[1][0] / 3, gaps
    assert gaps[1][1] < gaps[0][1] / 3 and gaps[2][1] < gaps[1][1] / 3, gaps
    assert gaps[2][0] < 0.02 and gaps[2][1] < 0.02, gaps


def test_all_predictions_give_the_same_trajectory():
    """The adapter makes the prediction kind irrelevant: the exact model of every kind gives the same samples."""
    orc = oracle()
    path = PATH_FACTORIES["vp"]()
    x = exact_start(orc, path, 1.0, 4)
    outs = [integrate(orc.model(path, p), path, x, prediction=p, method="heun", steps=8).samples for p in PREDICTIONS]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-9, atol=1e-9)
