r"""Log-likelihood under the probability-flow ODE (instantaneous change of variables).

Along ``dx/dt = v(x, t)`` the density obeys ``d log p_t(x_t)/dt = −∇·v(x_t, t)``, so integrating
from ``t_min`` (data) up to ``t_max``:

.. math::
    \log p_{t_{min}}(x) = \log p_{t_{max}}(x_{t_{max}}) + \int_{t_{min}}^{t_{max}} ∇·v(x_t, t)\,dt.

The divergence is exact (``D`` backward passes per evaluation; for small ``D``) or Hutchinson's
unbiased estimate ``E_ε[εᵀ (∂v/∂x) ε]`` with Rademacher or Gaussian probes ``ε`` held fixed over
the integration (one vector-Jacobian product per probe). The prior is ``N(0, σ(t_max)² I)``
(exact where ``α(t_max) = 0``, e.g. rectified flow and cosine at ``t = 1``) or any callable,
e.g. the exact marginal of a known data distribution.

References:
    Chen et al. 2018, arXiv:1806.07366, Theorem 1 (instantaneous change of variables);
    Grathwohl et al. 2019, arXiv:1810.01367, Sec. 3.1 (Hutchinson's estimator, FFJORD);
    Song et al. 2021, arXiv:2011.13456, Appendix D.2 (likelihood of the probability-flow ODE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._choice import Choice
from .._random import randint, randn
from .._validation import check_batch, check_finite
from ..parameterization import Prediction
from ..paths.base import Path
from .adapters import _describe_singular, _Evaluator, conversion_coefficients, singular_for
from .grids import _check_interval
from .methods import METHODS, Method

__all__ = ["LikelihoodResult", "log_likelihood", "Divergence"]


class Divergence(Choice):
    """How the divergence ``∇·v`` is computed."""

    EXACT = "exact"
    HUTCHINSON = "hutchinson"

    __argname__ = "divergence"


@dataclass(frozen=True)
class LikelihoodResult:
    """Result of :func:`log_likelihood`.

    Attributes:
        log_prob: ``(B,)`` log-density of the data in nats (float64 if the data is float64).
        prior_log_prob: ``(B,)`` the prior's log-density at the latent.
        delta: ``(B,)`` the integrated divergence ``∫ ∇·v dt`` (so ``log_prob = prior_log_prob + delta``).
        latent: ``(B, *D)`` the state at ``t_max`` (in the data's dtype; float32 for float16/bfloat16 data).
        nfe: model evaluations (forward passes; backward passes are not counted).
    """

    log_prob: Tensor
    prior_log_prob: Tensor
    delta: Tensor
    latent: Tensor
    nfe: int


def _gaussian_log_prob(x: Tensor, std: float) -> Tensor:
    flat = x.reshape(x.shape[0], -1)
    d = flat.shape[1]
    return -0.5 * (flat * flat).sum(1) / (std * std) - d * math.log(std) - 0.5 * d * math.log(2.0 * math.pi)


def log_likelihood(model, path: Path, data: Tensor, *, prediction, method="dopri5", divergence="exact",
                   probe: str = "rademacher", num_probes: int = 1, prior="gaussian", atol: float = 1e-5,
                   rtol: float = 1e-5, steps: int | None = None, t_min: float | None = None, t_max: float | None = None,
                   cond=None, guidance_scale: float | None = None, null_cond=None,
                   generator: torch.Generator | None = None) -> LikelihoodResult:
    """Per-sample log-likelihood of ``data`` under the model's probability-flow ODE.

    Args:
        model: ``model(x_t, t[, cond])`` of kind ``prediction`` (must be differentiable in ``x_t``).
        path: the path.
        data: ``(B, *D)`` points, taken as states at ``t_min``.
        prediction: the model's prediction kind.
        method: a torchdiffeq method: adaptive (``"dopri5"``, ``"bosh3"``, …, with ``atol``/``rtol``)
            or fixed-grid (``"euler"``, ``"midpoint"``, ``"rk4"``, with ``steps``).
        divergence: ``"exact"`` (D backward passes per evaluation) or ``"hutchinson"``.
        probe: Hutchinson probe distribution, ``"rademacher"`` or ``"gaussian"``.
        num_probes: probes averaged per evaluation (Hutchinson).
        prior: ``"gaussian"`` for ``N(0, σ(t_max)² I)``, or a callable ``latent (B, *D) → (B,)`` log-density
            (e.g. ``lambda z: oracle.log_prob(z, t=t_max, path=path)`` for the exact prior).
        atol, rtol: tolerances (adaptive methods).
        steps: number of steps (fixed-grid methods).
        t_min, t_max: the interval (default the path's); the model must be evaluable at both ends.
        cond, guidance_scale, null_cond: as in :func:`~flowgen.samplers.sample`.
        generator: RNG for the Hutchinson probes.

    Returns:
        :class:`LikelihoodResult`; ``log_prob`` in nats.

    Raises:
        ValueError: a singular end point, unknown divergence/probe/method, bad shapes.
    """
    from torchdiffeq import odeint

    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    prediction = Prediction.parse(prediction)
    divergence = Divergence.parse(divergence)
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes must be an integer >= 1, got {num_probes!r}")
    if not (prior == "gaussian" or callable(prior)):
        raise ValueError(f"prior must be 'gaussian' or a callable latent -> (B,) log-density, got {prior!r}")
    fixed = ("euler", "midpoint", "rk4")
    if isinstance(method, str) and method in fixed:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"fixed-grid method {method!r} needs steps (an integer >= 1), got {steps!r}")
        mname = method
    else:
        m = Method.parse(method)
        if not METHODS[m].adaptive:
            raise ValueError(f"log_likelihood takes an adaptive method {[a.value for a in METHODS if METHODS[a].adaptive]} or one of {list(fixed)}, got {m.value!r}")
        if steps is not None:
            raise ValueError(f"adaptive method {m.value!r} chooses its own steps; drop steps")
        mname = m.value
    check_batch(data, "data")
    if data.dim() < 2:
        raise ValueError(f"data must have shape (B, *D), got {tuple(data.shape)}")
    check_finite(data, "data")
    t_hi, t_lo = _check_interval(path.t_max if t_max is None else t_max, path.t_min if t_min is None else t_min)
    ends = torch.tensor([t_lo, t_hi], dtype=torch.float64)
    bad = singular_for(path, ends, prediction, Prediction.VELOCITY)
    if bool(bad.any()):
        tb = float(ends[bad.nonzero()[0, 0]])
        raise ValueError(
            "log_likelihood evaluates the model at both ends, but " + _describe_singular(path, tb, prediction, Prediction.VELOCITY)
            + "; pass t_min > 0 / t_max < 1"
        )

    batch = data.shape[0]
    work = torch.float64 if data.dtype == torch.float64 else torch.float32
    ev = _Evaluator(model, cond=cond, guidance_scale=guidance_scale, null_cond=null_cond, batch=batch).bind(data.to(work))
    # likelihoods are not a hot loop (D backward passes per evaluation): check every model output, so a NaN is
    # reported with its evaluation and t instead of derailing the adaptive solver
    ev.check_each = True
    ev.x_name = "data"
    if batch == 0:
        empty = torch.zeros(0, dtype=work, device=data.device)
        return LikelihoodResult(log_prob=empty, prior_log_prob=empty, delta=empty, latent=data.clone(), nfe=0)
    if divergence is Divergence.HUTCHINSON:
        shape = (num_probes, *data.shape)
        if probe == "rademacher":
            eps = randint(2, shape, generator=generator, device=data.device).to(work) * 2.0 - 1.0
        else:
            eps = randn(shape, generator=generator, dtype=work, device=data.device)
    counter = [0]

    def velocity(t: Tensor, x: Tensor) -> Tensor:
        tf = min(max(float(t), t_lo), t_hi)  # only the initial step-size probe can leave the interval
        counter[0] += 1
        c_x, c_p = conversion_coefficients(path, torch.tensor([tf], dtype=torch.float64), src=prediction, dst=Prediction.VELOCITY)
        p = ev(x, torch.full((batch,), tf, dtype=work, device=x.device), f"{counter[0]} (likelihood evaluation)", tf)
        cx, cp = float(c_x[0]), float(c_p[0])
        return p * cp if cx == 0.0 else p * cp + cx * x

    def field(t: Tensor, state):
        x, _ = state
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            v = velocity(t, x)
            if not v.requires_grad:
                raise ValueError(
                    "log_likelihood needs the model output to be differentiable in x_t, but it carries no autograd graph "
                    "(is the model run under torch.no_grad, detached, or constant in x_t?)"
                )
            if divergence is Divergence.EXACT:
                flat = v.reshape(batch, -1)
                div = torch.zeros(batch, dtype=work, device=x.device)
                for j in range(flat.shape[1]):
                    (g,) = torch.autograd.grad(flat[:, j].sum(), x, retain_graph=True)
                    div = div + g.reshape(batch, -1)[:, j]
            else:
                div = torch.zeros(batch, dtype=work, device=x.device)
                for k in range(num_probes):
                    (g,) = torch.autograd.grad(v, x, grad_outputs=eps[k], retain_graph=k + 1 < num_probes)
                    div = div + (g * eps[k]).reshape(batch, -1).sum(1)
                div = div / num_probes
        return v.detach(), div.detach()

    x0 = data.to(work)
    state0 = (x0, torch.zeros(batch, dtype=work, device=data.device))
    try:
        if mname in fixed:
            times = torch.linspace(t_lo, t_hi, steps + 1, dtype=work, device=data.device)
            times[0], times[-1] = t_lo, t_hi
            xs, deltas = odeint(field, state0, times, method=mname)
        else:
            times = torch.tensor([t_lo, t_hi], dtype=work, device=data.device)
            xs, deltas = odeint(field, state0, times, method=mname, atol=atol, rtol=rtol,
                                options={"step_t": torch.tensor([t_hi], dtype=work)})
    except AssertionError as err:  # torchdiffeq: a non-finite state or an underflowing step
        raise ValueError(f"log_likelihood of data {tuple(data.shape)}: {mname} (torchdiffeq) failed: {err}; "
                         "check the scale of data and the model") from None
    latent, delta = xs[-1], deltas[-1]
    if prior == "gaussian":
        sig = float(path._sigma(torch.tensor([t_hi], dtype=torch.float64))[0])
        prior_lp = _gaussian_log_prob(latent, sig)
    else:
        prior_lp = prior(latent)
        if not isinstance(prior_lp, Tensor) or prior_lp.shape != (batch,):
            raise ValueError(f"prior(latent) must return a tensor of shape ({batch},), got {getattr(prior_lp, 'shape', type(prior_lp).__name__)}")
        prior_lp = prior_lp.to(work)
    log_prob = prior_lp + delta
    if not bool(torch.isfinite(log_prob).all()):
        raise ValueError(
            "log_likelihood produced non-finite values for data (the model outputs were finite: the ODE state or the "
            "integrated divergence overflowed); check the scale of data, the model and the interval [t_min, t_max]"
        )
    # the latent stays in the working dtype (float32 for half-precision data): a float16 cast can overflow
    return LikelihoodResult(log_prob=log_prob, prior_log_prob=prior_lp, delta=delta,
                            latent=latent if data.dtype in (torch.float16, torch.bfloat16) else latent.to(data.dtype), nfe=ev.nfe)
