"""Every method on every path reproduces the data's mean and covariance (Gaussian oracle).

Each run starts from ``n`` exact draws of the marginal at ``t_max`` and integrates to ``t_min``.
The tolerance is 5 standard errors of a sample mean / sample covariance of ``n`` Gaussian draws,
so a sampler whose bias exceeds the sampling noise fails.
"""

from __future__ import annotations

import pytest
import torch

from flowgen.samplers import METHODS, Method, integrate

from _sampler_helpers import NATURAL_GRID, PATH_FACTORIES, PREDICTIONS, exact_start, oracle, sample_stats_tolerance, start_time

N = 2000

# method → (steps, options); stochastic samplers need more steps for a small bias.
RUNS = {
    "euler": (64, {}),
    "heun": (24, {}),
    "midpoint": (24, {}),
    "rk4": (8, {}),
    "ddim": (64, {}),
    "ddim_eta": (96, {"eta": 0.7}),
    "ddpm": (96, {}),
    "dpm_solver_pp_2m": (24, {}),
    "edm_stochastic": (48, {"S_churn": 20.0}),
    "dopri5": (None, {"atol": 1e-5, "rtol": 1e-5}),
}


def _cases():
    out, k = [], 0
    for pname in PATH_FACTORIES:
        for run in RUNS:
            out.append(pytest.param(pname, run, PREDICTIONS[k % len(PREDICTIONS)], id=f"{pname}-{run}"))
            k += 1
    return out


def test_every_method_is_covered():
    fixed_and_stochastic = {m.value for m, spec in METHODS.items() if not spec.adaptive}
    assert fixed_and_stochastic <= {r.split("_eta")[0] for r in RUNS}


@pytest.mark.parametrize("pname, run, prediction", _cases())
def test_mean_and_covariance(pname, run, prediction):
    orc = oracle(seed=4)
    path = PATH_FACTORIES[pname]()
    method = Method.parse(run.split("_eta")[0])
    steps, options = RUNS[run]
    t_max = start_time(path, prediction)
    x = exact_start(orc, path, t_max, N, seed=11)
    kwargs = dict(prediction=prediction, method=method, t_max=t_max, generator=torch.Generator().manual_seed(5), **options)
    if steps is not None:
        kwargs.update(steps=steps, grid=NATURAL_GRID[pname])
    if method is Method.DPM_SOLVER_PP_2M and pname != "edm":
        kwargs.update(grid="log_snr", t_max=min(t_max, 0.999), t_min=max(path.t_min, 1e-3))
    if METHODS[method].adaptive or not (method in (Method.DDPM, Method.EDM_STOCHASTIC) or options.get("eta")):
        kwargs.pop("generator")
    out = integrate(orc.model(path, prediction), path, x, **kwargs).samples
    mean_tol, cov_tol = sample_stats_tolerance(orc.cov, N)
    err_mean = (out.mean(0) - orc.mean).abs()
    err_cov = (torch.cov(out.T) - orc.cov).abs()
    assert bool((err_mean <= mean_tol).all()), f"mean error {err_mean.tolist()} > tolerance {mean_tol.tolist()}"
    assert bool((err_cov <= cov_tol).all()), f"covariance error {err_cov.tolist()} > tolerance {cov_tol.tolist()}"
