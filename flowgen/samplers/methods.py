r"""Fixed-grid integrators: one plain loop per method, all with the same signature.

Each loop is ``loop(run, x, options) -> x_end`` where ``run`` (:class:`_Run`) holds the
model evaluator, the grid and everything precomputed for it (time tensors, conversion
coefficients as Python floats), and ``x`` is the state at ``grid[0]``. Loops allocate nothing
per step beyond the tensors the update produces and never synchronise with the device.

Math (grid ``t_0 > … > t_N``, ``h_i = t_{i+1} − t_i``, ``v`` the probability-flow velocity,
``D`` the data prediction, ``ε̂`` the implied noise, ``λ = 2 log(α/σ)``):

* ``euler``: ``x ← x + h v(x, t_i)``. NFE ``N``.
* ``heun`` (EDM Alg. 1): Euler predictor, trapezoidal corrector at ``t_{i+1}``; the corrector is
  skipped on the last step when the model cannot be evaluated at ``t_N`` (a singular
  conversion, e.g. a data prediction at ``σ = 0``). NFE ``2N`` or ``2N − 1``.
* ``midpoint``: NFE ``2N``. ``rk4``: classic RK4, NFE ``4N``; when ``t_N`` is singular its last
  step is Ralston's third-order scheme (nodes 0, ½, ¾), which keeps the global order 4 and
  needs no evaluation at ``t_N``: NFE ``4N − 1``.
* ``ddim``: ``x ← α_s D + √(σ_s² − c²) ε̂ + c z`` with ``c = η σ_s √(1 − e^{λ_t − λ_s})``
  (η = 0 deterministic). ``ddpm``: the same with η = 1, which is ancestral sampling from
  DDPM's posterior ``q(x_s | x_t, D)`` for any path. NFE ``N``.
* ``dpm_solver_pp_2m``: DPM-Solver++(2M) in ``λ``, written with ``σ_s/σ_t`` and
  ``α_s(1 − e^{−h}) = α_s − α_t σ_s/σ_t`` so that infinite ``λ`` at the ends is handled
  exactly; first order on the first step and on a final step to ``σ = 0``. NFE ``N``.
* ``edm_stochastic`` (EDM Alg. 2): raise the noise from ``σ̃_i`` to ``σ̂ = σ̃_i(1 + γ_i)``
  (``σ̃ = σ/α``) by moving to the time ``t̂_i`` with that ``σ̃``, then a Heun step from ``t̂_i``
  to ``t_{i+1}``. ``S_churn = 0`` is exactly ``heun``. NFE as ``heun``.

References:
    Karras et al. 2022, arXiv:2206.00364, Algorithms 1 and 2;
    Song et al. 2021, arXiv:2010.02502, eq. (12) (DDIM with η);
    Ho et al. 2020, arXiv:2006.11239, eq. (6)–(7) (ancestral sampling);
    Lu et al. 2022, arXiv:2211.01095, Algorithm 2 (DPM-Solver++(2M));
    Ralston 1962, Math. Comp. 16 (third-order scheme).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .._choice import Choice
from .._random import randn
from ..parameterization import Prediction
from ..paths.base import Path
from .adapters import _describe_singular, _Evaluator, conversion_coefficients, singular_for

__all__ = ["Method", "METHODS", "MethodSpec", "ADAPTIVE_METHODS"]

V = Prediction.VELOCITY
DATA = Prediction.DATA
NOISE = Prediction.NOISE


class _Run:
    """Everything one fixed-grid integration needs, precomputed once.

    Attributes:
        ev: the model evaluator (counts NFE).
        grid: ``(N + 1,)`` float64 CPU tensor; ``ts`` the same as Python floats.
        batch, dtype, device: of the state.
    """

    def __init__(self, ev: _Evaluator, path: Path, prediction: Prediction, grid: Tensor, x: Tensor, *, method: str,
                 generator=None, progress: bool = False, callback: Callable | None = None):
        self.ev, self.path, self.prediction, self.method = ev, path, prediction, method
        self.grid = grid
        self.ts = grid.tolist()
        self.n = len(self.ts) - 1
        self.batch, self.dtype, self.device = x.shape[0], x.dtype, x.device
        self.generator, self.progress, self.callback = generator, progress, callback
        self._abl = None
        self._tvecs: dict = {}

    # --- precomputation -------------------------------------------------------------------
    def tvecs(self, times: list[float]) -> list[Tensor]:
        """``(B,)`` time tensors in the state's dtype, one per time, allocated in one block.

        Memoised per run, so a run object reused for a CUDA-graph capture makes no host-to-device
        copy while recording."""
        key = tuple(times)
        if key not in self._tvecs:
            tt = torch.tensor(times, dtype=self.dtype, device=self.device)
            self._tvecs[key] = tt[:, None].expand(len(times), self.batch).contiguous().unbind(0)
        return self._tvecs[key]

    def linear(self, times, target: Prediction) -> tuple[list[float], list[float]]:
        """``(c_x, c_p)`` lists with ``target = c_x·x + c_p·pred`` at each time."""
        if target is self.prediction:
            k = len(times)
            return [0.0] * k, [1.0] * k
        t = times if isinstance(times, Tensor) else torch.tensor(times, dtype=torch.float64)
        c_x, c_p = conversion_coefficients(self.path, t.to(torch.float64), src=self.prediction, dst=target)
        return c_x.tolist(), c_p.tolist()

    def alpha_sigma_lambda(self) -> tuple[list[float], list[float], list[float]]:
        """``α, σ, λ`` on the grid (float64, as lists)."""
        if self._abl is None:
            g = self.grid
            self._abl = (self.path._alpha(g).tolist(), self.path._sigma(g).tolist(), self.path._log_snr(g).tolist())
        return self._abl

    def singular(self, times, target: Prediction) -> Tensor:
        # no conversion, nothing singular -- except that a DATA target (DDIM-type steps) needs the noise too,
        # which a data prediction cannot give where sigma = 0 (e.g. t = 0 at the start of an inversion)
        if target is self.prediction and target is not DATA:
            return torch.zeros(len(times), dtype=torch.bool)
        t = times if isinstance(times, Tensor) else torch.tensor(times, dtype=torch.float64)
        return singular_for(self.path, t.to(torch.float64), self.prediction, target)

    def require(self, times, target: Prediction) -> None:
        """Raise ValueError if the model would be evaluated at a singular time."""
        if target is self.prediction and target is not DATA:
            return
        bad = self.singular(times, target)
        if bool(bad.any()):
            t = times if isinstance(times, Tensor) else torch.tensor(times, dtype=torch.float64)
            tb = float(t[bad.nonzero()[0, 0]])
            raise ValueError(
                f"{self.method} would evaluate the model at t={tb:.6g}, where " + _describe_singular(self.path, tb, self.prediction, target)
                + "; choose t_max/t_min or a grid that avoids this time"
            )

    def end_evaluable(self, target: Prediction) -> bool:
        """Whether the model may be evaluated at the last grid time."""
        return not bool(self.singular([self.ts[-1]], target)[0])

    # --- per run --------------------------------------------------------------------------
    def steps(self):
        if self.progress:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm ships with lightning
                return range(self.n)
            return tqdm(range(self.n), desc=self.method, leave=False)
        return range(self.n)

    def randn_like(self, x: Tensor) -> Tensor:
        return randn_like(x, self.generator)


def randn_like(x: Tensor, generator=None) -> Tensor:
    """Standard normal noise like ``x`` from ``generator``: ``None`` (global RNG), a
    ``torch.Generator``, or a sequence of one generator per sample (batch-invariant noise)."""
    if generator is None or isinstance(generator, torch.Generator):
        return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    rows = [torch.randn(x.shape[1:], generator=g, dtype=torch.float64, device=g.device) for g in generator]
    return torch.stack(rows).to(dtype=x.dtype, device=x.device)


def _lin(x: Tensor, p: Tensor, cx: float, cp: float) -> Tensor:
    """``cx·x + cp·p`` with the cheap cases (``cx = 0``, ``cp = 1``) short-cut."""
    if cx == 0.0:
        return p if cp == 1.0 else p * cp
    if cp == 1.0:
        return torch.add(p, x, alpha=cx)
    return torch.add(p * cp, x, alpha=cx)


def _affine(x: Tensor, a: float, p: Tensor, b: float) -> Tensor:
    """``a·x + b·p``."""
    if a == 1.0:
        return torch.add(x, p, alpha=b)
    return torch.add(x * a, p, alpha=b)


# --- ODE loops on the velocity ------------------------------------------------------------
def _euler(run: _Run, x: Tensor, opts: dict) -> Tensor:
    ts, grid = run.ts, run.grid
    run.require(grid[:-1], V)
    tv = run.tvecs(ts[:-1])
    cx, cp = run.linear(grid[:-1], V)
    ev, cb = run.ev, run.callback
    # x_{i+1} = x + h (cx x + cp p) = (1 + h cx) x + (h cp) p: one fused kernel when cx = 0.
    a = [1.0 + (ts[i + 1] - ts[i]) * cx[i] for i in range(run.n)]
    b = [(ts[i + 1] - ts[i]) * cp[i] for i in range(run.n)]
    add = torch.add
    for i in run.steps():
        p = ev(x, tv[i], i, ts[i])
        x = add(x, p, alpha=b[i]) if a[i] == 1.0 else add(x * a[i], p, alpha=b[i])
        if cb is not None:
            cb(i, ts[i + 1], x)
    return x


def _heun(run: _Run, x: Tensor, opts: dict) -> Tensor:
    ts, grid, n = run.ts, run.grid, run.n
    run.require(grid[:-1], V)
    end_ok = run.end_evaluable(V)
    tv = run.tvecs(ts)
    cx, cp = run.linear(grid, V)
    ev, cb = run.ev, run.callback
    for i in run.steps():
        h = ts[i + 1] - ts[i]
        d = _lin(x, ev(x, tv[i], i, ts[i]), cx[i], cp[i])
        x1 = torch.add(x, d, alpha=h)
        if i == n - 1 and not end_ok:
            x = x1
        else:
            d2 = _lin(x1, ev(x1, tv[i + 1], i, ts[i + 1]), cx[i + 1], cp[i + 1])
            x = torch.add(x, d + d2, alpha=0.5 * h)
        if cb is not None:
            cb(i, ts[i + 1], x)
    return x


def _midpoint(run: _Run, x: Tensor, opts: dict) -> Tensor:
    ts, grid, n = run.ts, run.grid, run.n
    mids = [0.5 * (ts[i] + ts[i + 1]) for i in range(n)]
    run.require(grid[:-1], V)
    run.require(mids, V)
    tv, tm = run.tvecs(ts[:-1]), run.tvecs(mids)
    cx, cp = run.linear(grid[:-1], V)
    mx, mp = run.linear(mids, V)
    ev, cb = run.ev, run.callback
    for i in run.steps():
        h = ts[i + 1] - ts[i]
        k1 = _lin(x, ev(x, tv[i], i, ts[i]), cx[i], cp[i])
        xm = torch.add(x, k1, alpha=0.5 * h)
        k2 = _lin(xm, ev(xm, tm[i], i, mids[i]), mx[i], mp[i])
        x = torch.add(x, k2, alpha=h)
        if cb is not None:
            cb(i, ts[i + 1], x)
    return x


def _rk4(run: _Run, x: Tensor, opts: dict) -> Tensor:
    ts, grid, n = run.ts, run.grid, run.n
    mids = [0.5 * (ts[i] + ts[i + 1]) for i in range(n)]
    run.require(grid[:-1], V)
    run.require(mids, V)
    end_ok = run.end_evaluable(V)
    t34 = ts[n - 1] + 0.75 * (ts[n] - ts[n - 1])
    if not end_ok:
        run.require([t34], V)
    tv, tm, t3 = run.tvecs(ts), run.tvecs(mids), run.tvecs([t34])[0]
    cx, cp = run.linear(grid, V)
    mx, mp = run.linear(mids, V)
    qx, qp = run.linear([t34], V)
    ev, cb = run.ev, run.callback
    for i in run.steps():
        h = ts[i + 1] - ts[i]
        k1 = _lin(x, ev(x, tv[i], i, ts[i]), cx[i], cp[i])
        x2 = torch.add(x, k1, alpha=0.5 * h)
        k2 = _lin(x2, ev(x2, tm[i], i, mids[i]), mx[i], mp[i])
        if i == n - 1 and not end_ok:
            # Ralston's third-order step (nodes 0, 1/2, 3/4): no evaluation at the singular end.
            x3 = torch.add(x, k2, alpha=0.75 * h)
            k3 = _lin(x3, ev(x3, t3, i, t34), qx[0], qp[0])
            x = x + h * (k1 * (2.0 / 9.0) + k2 * (1.0 / 3.0) + k3 * (4.0 / 9.0))
        else:
            x3 = torch.add(x, k2, alpha=0.5 * h)
            k3 = _lin(x3, ev(x3, tm[i], i, mids[i]), mx[i], mp[i])
            x4 = torch.add(x, k3, alpha=h)
            k4 = _lin(x4, ev(x4, tv[i + 1], i, ts[i + 1]), cx[i + 1], cp[i + 1])
            x = x + (h / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)
        if cb is not None:
            cb(i, ts[i + 1], x)
    return x


# --- loops on the data prediction ---------------------------------------------------------
def _ancestral_scale(eta: float, sigma_s: float, lam_t: float, lam_s: float) -> float:
    """``c = η σ_s √(1 − e^{λ_t − λ_s})``: the std of the fresh noise in a DDIM(η) step t → s."""
    if eta == 0.0 or sigma_s == 0.0:
        return 0.0
    return eta * sigma_s * math.sqrt(max(0.0, -math.expm1(lam_t - lam_s)))


def _ddim_like(run: _Run, x: Tensor, eta: float) -> Tensor:
    ts, grid, n = run.ts, run.grid, run.n
    run.require(grid[:-1], DATA)
    tv = run.tvecs(ts[:-1])
    dx, dp = run.linear(grid[:-1], DATA)
    nx, np_ = run.linear(grid[:-1], NOISE)
    a, s, lam = run.alpha_sigma_lambda()
    coef = []
    for i in range(n):
        c = _ancestral_scale(eta, s[i + 1], lam[i], lam[i + 1])
        sd = math.sqrt(max(s[i + 1] ** 2 - c * c, 0.0))
        # x_s = α_s D + sd ε̂ + c z,  D = dx x + dp p,  ε̂ = nx x + np p
        coef.append((a[i + 1] * dx[i] + sd * nx[i], a[i + 1] * dp[i] + sd * np_[i], c))
    ev, cb = run.ev, run.callback
    for i in run.steps():
        A, B, c = coef[i]
        x = _affine(x, A, ev(x, tv[i], i, ts[i]), B)
        if c > 0.0:
            x = torch.add(x, run.randn_like(x), alpha=c)
        if cb is not None:
            cb(i, ts[i + 1], x)
    return x


def _ddim(run: _Run, x: Tensor, opts: dict) -> Tensor:
    return _ddim_like(run, x, float(opts.get("eta", 0.0)))


def _ddpm(run: _Run, x: Tensor, opts: dict) -> Tensor:
    return _ddim_like(run, x, 1.0)


def _dpm_solver_pp_2m(run: _Run, x: Tensor, opts: dict) -> Tensor:
    ts, grid, n = run.ts, run.grid, run.n
    run.require(grid[:-1], DATA)
    a, s, lam = run.alpha_sigma_lambda()
    for i in range(n):
        if s[i] == 0.0:
            raise ValueError(
                f"method 'dpm_solver_pp_2m' cannot step from t={ts[i]:.6g} where sigma = 0 (its update scales x by "
                "sigma_s/sigma_t); start the grid where sigma > 0 (for invert: t_min > 0), or use another method"
            )
    tv = run.tvecs(ts[:-1])
    dx, dp = run.linear(grid[:-1], DATA)
    plan = []
    for i in range(n):
        A = s[i + 1] / s[i]
        B = a[i + 1] - a[i] * A  # = α_s (1 − e^{−h})
        k = 0.0
        if i > 0 and math.isfinite(lam[i + 1]) and math.isfinite(lam[i - 1]):
            r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
            k = 0.5 / r
        plan.append((A, B, k))
    ev, cb = run.ev, run.callback
    d_prev = None
    for i in run.steps():
        A, B, k = plan[i]
        d = _lin(x, ev(x, tv[i], i, ts[i]), dx[i], dp[i])
        if k == 0.0:
            x = _affine(x, A, d, B)
        else:
            x = _affine(x, A, torch.add(d * (1.0 + k), d_prev, alpha=-k), B)
        d_prev = d
        if cb is not None:
            cb(i, ts[i + 1], x)
    return x


def _edm_stochastic(run: _Run, x: Tensor, opts: dict) -> Tensor:
    ts, grid, n, path = run.ts, run.grid, run.n, run.path
    s_churn = float(opts.get("S_churn", 0.0))
    s_tmin = float(opts.get("S_tmin", 0.0))
    s_tmax = float(opts.get("S_tmax", float("inf")))
    s_noise = float(opts.get("S_noise", 1.0))
    for name, v in (("S_churn", s_churn), ("S_tmin", s_tmin), ("S_noise", s_noise)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if not s_tmax >= s_tmin:
        raise ValueError(f"S_tmax must be >= S_tmin, got S_tmin={s_tmin}, S_tmax={s_tmax}")
    a, s, _ = run.alpha_sigma_lambda()
    gamma_max = min(s_churn / n, math.sqrt(2.0) - 1.0)
    one = torch.tensor([1.0], dtype=torch.float64)
    sig_top = float(path._sigma(one)[0] / path._alpha(one)[0])  # σ̃ at t = 1 (inf when α(1) = 0)
    hats, inject = [], []
    for i in range(n):
        st = s[i] / a[i] if a[i] > 0 else math.inf
        gamma = gamma_max if (s_tmin <= st <= s_tmax and math.isfinite(st) and st > 0) else 0.0
        if gamma > 0.0:
            s_hat = min(st * (1.0 + gamma), sig_top)
            t_hat = float(path.t_from_log_snr(torch.tensor([-2.0 * math.log(s_hat)], dtype=torch.float64))[0])
            t_hat = min(max(t_hat, ts[i]), 1.0)
        else:
            t_hat = ts[i]
        if t_hat != ts[i]:
            th = torch.tensor([t_hat], dtype=torch.float64)
            a_hat, s_hat_path = float(path._alpha(th)[0]), float(path._sigma(th)[0])
            scale = a_hat / a[i]
            std = math.sqrt(max(s_hat_path**2 - (scale * s[i]) ** 2, 0.0)) * s_noise
            inject.append((scale, std))
        else:
            inject.append(None)
        hats.append(t_hat)
    run.require(hats, V)
    run.require(grid[1:-1], V)
    end_ok = run.end_evaluable(V)
    th_v, tv = run.tvecs(hats), run.tvecs(ts)
    hx, hp = run.linear(hats, V)
    cx, cp = run.linear(grid, V)
    ev, cb = run.ev, run.callback
    for i in run.steps():
        t_hat = hats[i]
        if inject[i] is not None:
            scale, std = inject[i]
            x = torch.add(x * scale, run.randn_like(x), alpha=std)
        h = ts[i + 1] - t_hat
        d = _lin(x, ev(x, th_v[i], i, t_hat), hx[i], hp[i])
        x1 = torch.add(x, d, alpha=h)
        if i == n - 1 and not end_ok:
            x = x1
        else:
            d2 = _lin(x1, ev(x1, tv[i + 1], i, ts[i + 1]), cx[i + 1], cp[i + 1])
            x = torch.add(x, d + d2, alpha=0.5 * h)
        if cb is not None:
            cb(i, ts[i + 1], x)
    return x


# --- registry -----------------------------------------------------------------------------
class Method(Choice):
    """Sampler methods; ``Method.parse`` accepts the value or a common alias."""

    EULER = "euler"
    HEUN = "heun"
    MIDPOINT = "midpoint"
    RK4 = "rk4"
    DDIM = "ddim"
    DDPM = "ddpm"
    DPM_SOLVER_PP_2M = "dpm_solver_pp_2m"
    EDM_STOCHASTIC = "edm_stochastic"
    DOPRI5 = "dopri5"
    DOPRI8 = "dopri8"
    BOSH3 = "bosh3"
    FEHLBERG2 = "fehlberg2"
    ADAPTIVE_HEUN = "adaptive_heun"

    __argname__ = "method"

    @classmethod
    def aliases(cls) -> dict:
        return _METHOD_ALIASES


_METHOD_ALIASES = {
    "dpm++2m": "dpm_solver_pp_2m",
    "dpmpp_2m": "dpm_solver_pp_2m",
    "dpm_solver++": "dpm_solver_pp_2m",
    "dpm_solver++_2m": "dpm_solver_pp_2m",
    "dpmsolver++": "dpm_solver_pp_2m",
    "edm": "edm_stochastic",
    "heun2": "heun",
    "ancestral": "ddpm",
    "rk45": "dopri5",
}


@dataclass(frozen=True)
class MethodSpec:
    """What the registry knows of a method.

    Attributes:
        loop: the fixed-grid loop ``(run, x, options) → x`` (``None`` for adaptive methods).
        options: the method options it accepts, with defaults.
        stochastic: draws fresh noise (needs a generator for reproducibility; cannot invert).
        adaptive: step size chosen by torchdiffeq from ``atol``/``rtol``.
        order: the global order of accuracy (ODE methods).
        evals_per_step: model evaluations per step (before guidance doubling).
    """

    loop: Callable | None
    options: dict = field(default_factory=dict)
    stochastic: bool = False
    adaptive: bool = False
    order: int | None = None
    evals_per_step: int | None = None


_ADAPTIVE_OPTIONS = {"atol": 1e-5, "rtol": 1e-5, "options": None, "end_gap": 1e-4}

#: Method → :class:`MethodSpec`.
METHODS: dict[Method, MethodSpec] = {
    Method.EULER: MethodSpec(_euler, order=1, evals_per_step=1),
    Method.HEUN: MethodSpec(_heun, order=2, evals_per_step=2),
    Method.MIDPOINT: MethodSpec(_midpoint, order=2, evals_per_step=2),
    Method.RK4: MethodSpec(_rk4, order=4, evals_per_step=4),
    Method.DDIM: MethodSpec(_ddim, options={"eta": 0.0}, order=1, evals_per_step=1),
    Method.DDPM: MethodSpec(_ddpm, stochastic=True, order=None, evals_per_step=1),
    Method.DPM_SOLVER_PP_2M: MethodSpec(_dpm_solver_pp_2m, order=2, evals_per_step=1),
    Method.EDM_STOCHASTIC: MethodSpec(
        _edm_stochastic, options={"S_churn": 0.0, "S_tmin": 0.0, "S_tmax": float("inf"), "S_noise": 1.0},
        stochastic=True, order=None, evals_per_step=2,
    ),
    Method.DOPRI5: MethodSpec(None, options=dict(_ADAPTIVE_OPTIONS), adaptive=True, order=5),
    Method.DOPRI8: MethodSpec(None, options=dict(_ADAPTIVE_OPTIONS), adaptive=True, order=8),
    Method.BOSH3: MethodSpec(None, options=dict(_ADAPTIVE_OPTIONS), adaptive=True, order=3),
    Method.FEHLBERG2: MethodSpec(None, options=dict(_ADAPTIVE_OPTIONS), adaptive=True, order=2),
    Method.ADAPTIVE_HEUN: MethodSpec(None, options=dict(_ADAPTIVE_OPTIONS), adaptive=True, order=2),
}

#: The adaptive (torchdiffeq) methods.
ADAPTIVE_METHODS = tuple(m for m, spec in METHODS.items() if spec.adaptive)


def is_stochastic(method: Method, options: dict) -> bool:
    """Whether this method with these options draws fresh noise."""
    if method is Method.DDIM:
        return float(options.get("eta", 0.0)) != 0.0
    if method is Method.EDM_STOCHASTIC:
        return float(options.get("S_churn", 0.0)) != 0.0
    return METHODS[method].stochastic
