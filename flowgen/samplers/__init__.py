r"""Stateless ODE/SDE samplers for every path and prediction, with honest NFE counting.

A sampler is a time grid × an integrator. Any model — whatever its path and prediction kind —
is turned into a velocity field (or a data prediction) by one adapter
(:func:`as_velocity` / :func:`as_denoiser`), and every method runs on it:

=====================  =====================================================  ==============
method                 what                                                   NFE (N steps)
=====================  =====================================================  ==============
``euler``              first order in ``t``                                   ``N``
``heun``               EDM's second order; Euler on a final step to a         ``2N`` (``2N−1``)
                       singular ``t_min``
``midpoint``           explicit midpoint, second order                        ``2N``
``rk4``                classic RK4 (Ralston-3 last step if ``t_min`` is       ``4N`` (``4N−1``)
                       singular)
``ddim``               DDIM, ``eta=0`` deterministic, ``eta>0`` stochastic    ``N``
``ddpm``               ancestral sampling (DDIM with η = 1)                   ``N``
``dpm_solver_pp_2m``   DPM-Solver++(2M) in log-SNR, any path                  ``N``
``edm_stochastic``     EDM's churn sampler (``S_churn``, ``S_tmin``, …)        like ``heun``
``dopri5``, ``bosh3``  torchdiffeq adaptive (``atol``, ``rtol``)              counted
=====================  =====================================================  ==============

With classifier-free guidance each evaluation is one batched call on ``2B`` samples and counts 2.

Entry points: :func:`sample` (from noise), :func:`integrate` (from a given state), :func:`invert`
(data → noise), :func:`log_likelihood`, :func:`sample_stream` (bounded memory),
per-sample steps :func:`step` / :func:`heun_step` / :func:`ddim_step` (distillation teachers),
time grids (:func:`uniform_grid`, :func:`karras_grid`, :func:`log_snr_grid`, :func:`shifted_grid`),
:func:`seeded_noise`, and :class:`CapturedSampler` (CUDA graphs).

Convention: ``t = 0`` data, ``t = 1`` noise, ``x_t = α(t)·data + σ(t)·noise``; generation runs
from ``t_max`` down to ``t_min``.
"""

from .adapters import (
    CountingModel,
    PredictionAdapter,
    as_denoiser,
    as_prediction,
    as_velocity,
    conversion_coefficients,
    count_nfe,
)
from .api import (
    SampleResult,
    adaptive,
    ddim,
    ddpm,
    dpm_solver_pp_2m,
    edm_stochastic,
    euler,
    heun,
    integrate,
    invert,
    midpoint,
    rk4,
    sample,
    sample_stream,
)
from .capture import CapturedSampler
from .grids import GRIDS, Grid, check_grid, karras_grid, log_snr_grid, make_grid, shifted_grid, uniform_grid
from .likelihood import Divergence, LikelihoodResult, log_likelihood
from .methods import ADAPTIVE_METHODS, METHODS, Method, MethodSpec
from .noise import seeded_generators, seeded_noise
from .steps import ddim_step, euler_step, heun_step, midpoint_step, rk4_step, step

__all__ = [
    "sample",
    "integrate",
    "invert",
    "sample_stream",
    "SampleResult",
    "log_likelihood",
    "LikelihoodResult",
    "Divergence",
    "euler",
    "heun",
    "midpoint",
    "rk4",
    "ddim",
    "ddpm",
    "dpm_solver_pp_2m",
    "edm_stochastic",
    "adaptive",
    "step",
    "euler_step",
    "heun_step",
    "midpoint_step",
    "rk4_step",
    "ddim_step",
    "Method",
    "MethodSpec",
    "METHODS",
    "ADAPTIVE_METHODS",
    "uniform_grid",
    "karras_grid",
    "log_snr_grid",
    "shifted_grid",
    "check_grid",
    "make_grid",
    "Grid",
    "GRIDS",
    "as_velocity",
    "as_denoiser",
    "as_prediction",
    "PredictionAdapter",
    "conversion_coefficients",
    "CountingModel",
    "count_nfe",
    "seeded_noise",
    "seeded_generators",
    "CapturedSampler",
]
