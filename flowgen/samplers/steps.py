r"""Single steps with per-sample times, for teachers in distillation and custom loops.

``step(model, path, x, t=t, s=s, prediction=..., method=...)`` moves each sample ``x[i]`` from
its own time ``t[i]`` to ``s[i]`` (either direction) with one step of the method. These keep
the autograd graph through ``x`` (times are not differentiated), so they can sit inside a loss;
wrap them in ``torch.no_grad()`` for a frozen teacher.

Methods and model evaluations per call (×2 with guidance): ``euler`` 1, ``heun`` 2 (the
corrector falls back to Euler for samples whose ``s`` is singular for the prediction, and the
model is then evaluated at their ``t`` instead, never at ``s``), ``midpoint`` 2, ``rk4`` 4,
``ddim`` 1 (``eta`` > 0 adds ``c·z`` with ``c = η σ_s √(1 − e^{λ_t − λ_s})``).

References:
    Karras et al. 2022, arXiv:2206.00364, Algorithm 1 (Heun step);
    Song et al. 2021, arXiv:2010.02502, eq. (12) (DDIM step);
    Salimans & Ho 2022, arXiv:2202.00512, Algorithm 2 (two DDIM teacher steps).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_batch, check_finite, check_time, checks_values, expand_like
from ..parameterization import Prediction
from ..paths.base import Path
from .adapters import _describe_singular, _Evaluator, conversion_coefficients, singular_for
from .methods import Method, randn_like

__all__ = ["step", "euler_step", "heun_step", "midpoint_step", "rk4_step", "ddim_step"]

_STEP_METHODS = (Method.EULER, Method.HEUN, Method.MIDPOINT, Method.RK4, Method.DDIM)


def _as_times(v, name: str, batch: int, device) -> Tensor:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = torch.full((batch,), float(v), dtype=torch.float64, device=device)
    check_time(v, name, batch=batch, device=device)
    return v


class _FirstTime:
    """``t[0]`` for error messages, read from the device only when a message is formatted."""

    __slots__ = ("t",)

    def __init__(self, t: Tensor):
        self.t = t

    def __format__(self, spec: str) -> str:
        return format(float(self.t.detach().flatten()[0]), spec)


class _Field:
    """Per-sample conversions of the model's output, with singular times refused."""

    def __init__(self, ev: _Evaluator, path: Path, prediction: Prediction, x: Tensor):
        self.ev, self.path, self.prediction, self.x = ev, path, prediction, x

    def check(self, t: Tensor, target: Prediction, what: str, name: str = "t") -> None:
        if not checks_values():  # see flowgen._validation.value_checks: the caller checked its times
            return
        bad = singular_for(self.path, t.detach().to(torch.float64), self.prediction, target)
        if bool(bad.any()):
            tb = float(t[bad.nonzero()[0, 0]])
            raise ValueError(f"{what}: refusing to evaluate the model at {name}={tb:.6g}, where "
                             + _describe_singular(self.path, tb, self.prediction, target))

    def coef(self, t: Tensor, target: Prediction, like: Tensor) -> tuple[Tensor, Tensor]:
        c_x, c_p = conversion_coefficients(self.path, t.detach().to(torch.float64), src=self.prediction, dst=target)
        return expand_like(c_x, like).to(like.dtype), expand_like(c_p, like).to(like.dtype)

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        return self.ev(x, t.to(x.dtype), "-", _FirstTime(t))

    def get(self, x: Tensor, t: Tensor, target: Prediction) -> Tensor:
        p = self.raw(x, t)
        if target is self.prediction:
            return p
        c_x, c_p = self.coef(t, target, x)
        return c_x * x + c_p * p


def step(model, path: Path, x: Tensor, *, t, s, prediction, method="euler", cond=None, guidance_scale: float | None = None,
         null_cond=None, eta: float = 0.0, generator=None) -> Tensor:
    """One step of ``method`` from per-sample times ``t`` to ``s``.

    Args:
        model: ``model(x_t, t[, cond])`` of kind ``prediction``.
        path: the path.
        x: ``(B, *D)`` states at ``t``.
        t, s: ``(B,)`` times in ``[0, 1]`` (or Python floats for all samples).
        prediction: the model's prediction kind.
        method: ``"euler"``, ``"heun"``, ``"midpoint"``, ``"rk4"`` or ``"ddim"``.
        cond, guidance_scale, null_cond: as in :func:`~flowgen.samplers.sample`.
        eta: DDIM stochasticity (``ddim`` only; 0 deterministic).
        generator: RNG for ``eta > 0``.

    Returns:
        ``(B, *D)`` the states at ``s``.

    Raises:
        ValueError: a singular evaluation time, a bad shape, an unsupported method, NaN/Inf in ``x`` or a
            non-finite result (a model output holding NaN/Inf, or an overflow).
    """
    out = _step(model, path, x, t=t, s=s, prediction=prediction, method=method, cond=cond, guidance_scale=guidance_scale,
                null_cond=null_cond, eta=eta, generator=generator)
    # one reduction on the result; the diagnosis below runs only when it fails
    if out.numel() and checks_values() and not bool(torch.isfinite(out).all()):
        check_finite(x, "x")
        raise ValueError(
            f"{Method.parse(method).value} step produced non-finite values from a finite x: the model output "
            f"(model(x, t)) holds NaN/Inf or the update overflowed {out.dtype}"
        )
    return out


def _step(model, path: Path, x: Tensor, *, t, s, prediction, method="euler", cond=None, guidance_scale: float | None = None,
          null_cond=None, eta: float = 0.0, generator=None) -> Tensor:
    """:func:`step` without the final finiteness check (for losses, whose non-finite value the training loop handles)."""
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    prediction = Prediction.parse(prediction)
    method = Method.parse(method)
    if method not in _STEP_METHODS:
        raise ValueError(f"step supports methods {[m.value for m in _STEP_METHODS]}, got {method.value!r}")
    check_batch(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must have shape (B, *D), got {tuple(x.shape)}")
    batch = x.shape[0]
    t = _as_times(t, "t", batch, x.device)
    s = _as_times(s, "s", batch, x.device)
    if method is not Method.DDIM and eta != 0.0:
        raise ValueError(f"eta is a ddim option; method {method.value!r} does not take it")
    ev = _Evaluator(model, cond=cond, guidance_scale=guidance_scale, null_cond=null_cond, batch=batch).bind(x)
    if batch == 0:
        return x.clone()
    f = _Field(ev, path, prediction, x)
    V = Prediction.VELOCITY
    t64, s64 = t.detach().to(torch.float64), s.detach().to(torch.float64)
    h = expand_like(s64 - t64, x).to(x.dtype)

    if method is Method.DDIM:
        f.check(t, Prediction.DATA, "ddim_step")
        p = f.raw(x, t)
        dx, dp = f.coef(t, Prediction.DATA, x)
        nx, np_ = f.coef(t, Prediction.NOISE, x)
        data, noise = dx * x + dp * p, nx * x + np_ * p
        a_s, s_s = path._alpha(s64), path._sigma(s64)
        if eta != 0.0:
            if not (eta > 0):
                raise ValueError(f"eta must be >= 0, got {eta!r}")
            lam_t, lam_s = path._log_snr(t64), path._log_snr(s64)
            c = eta * s_s * torch.sqrt(torch.clamp(-torch.expm1(lam_t - lam_s), min=0.0))
            c = torch.where(s_s == 0, torch.zeros_like(c), c)
        else:
            c = torch.zeros_like(s_s)
        sd = torch.sqrt(torch.clamp(s_s * s_s - c * c, min=0.0))
        out = expand_like(a_s, x).to(x.dtype) * data + expand_like(sd, x).to(x.dtype) * noise
        if eta != 0.0:
            out = out + expand_like(c, x).to(x.dtype) * randn_like(x, generator)
        return out

    f.check(t, V, f"{method.value}_step")
    k1 = f.get(x, t, V)
    if method is Method.EULER:
        return x + h * k1
    if method is Method.MIDPOINT:
        tm = 0.5 * (t64 + s64)
        f.check(tm, V, "midpoint_step", "(t + s)/2")
        return x + h * f.get(x + 0.5 * h * k1, tm, V)
    if method is Method.HEUN:
        x1 = x + h * k1
        end_bad = singular_for(path, s64, prediction, V)
        s_eval = torch.where(end_bad, t64, s64)
        k2 = f.get(x1, s_eval, V)
        # where s is singular, the Euler step (no read of end_bad on the host: a device sync on a GPU)
        return torch.where(expand_like(end_bad, x), x1, x + 0.5 * h * (k1 + k2))
    # RK4
    tm = 0.5 * (t64 + s64)
    f.check(tm, V, "rk4_step", "(t + s)/2")
    f.check(s64, V, "rk4_step", "s")
    k2 = f.get(x + 0.5 * h * k1, tm, V)
    k3 = f.get(x + 0.5 * h * k2, tm, V)
    k4 = f.get(x + h * k3, s64, V)
    return x + (h / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)


def euler_step(model, path: Path, x: Tensor, *, t, s, prediction, **kwargs) -> Tensor:
    """One Euler step per sample; see :func:`step`."""
    return step(model, path, x, t=t, s=s, prediction=prediction, method=Method.EULER, **kwargs)


def heun_step(model, path: Path, x: Tensor, *, t, s, prediction, **kwargs) -> Tensor:
    """One Heun (EDM second-order) step per sample; see :func:`step`."""
    return step(model, path, x, t=t, s=s, prediction=prediction, method=Method.HEUN, **kwargs)


def midpoint_step(model, path: Path, x: Tensor, *, t, s, prediction, **kwargs) -> Tensor:
    """One explicit-midpoint step per sample; see :func:`step`."""
    return step(model, path, x, t=t, s=s, prediction=prediction, method=Method.MIDPOINT, **kwargs)


def rk4_step(model, path: Path, x: Tensor, *, t, s, prediction, **kwargs) -> Tensor:
    """One classic RK4 step per sample; see :func:`step`."""
    return step(model, path, x, t=t, s=s, prediction=prediction, method=Method.RK4, **kwargs)


def ddim_step(model, path: Path, x: Tensor, *, t, s, prediction, eta: float = 0.0, generator=None, **kwargs) -> Tensor:
    """One DDIM step per sample (``eta = 0`` deterministic); see :func:`step`."""
    return step(model, path, x, t=t, s=s, prediction=prediction, method=Method.DDIM, eta=eta, generator=generator, **kwargs)
