r"""Consistency distillation and consistency training on any path.

A consistency function ``f(x_t, t)`` maps every point of a probability-flow ODE trajectory to
the trajectory's point at ``t_min``; it satisfies ``f(x, t_min) = x`` exactly by construction
(:class:`~flowgen.preconditioning.BoundaryConditioned`, the parameterization of Song et al.
2023, Sec. 3 / Appendix C, written in the path's variance-exploding frame ``σ̃ = σ/α``).

**Time discretisation.** ``N`` times ``t_max = τ_0 > τ_1 > … > τ_{N−1} = t_min`` from EDM's
ρ-schedule in ``σ̃`` (the samplers' :func:`~flowgen.samplers.karras_grid` with ``N − 1``
steps), or another spacing (``spacing="uniform"`` in ``t``, which suits rectified-flow paths;
:func:`consistency_grid`). A training pair is an adjacent interval ``(t, s) = (τ_j, τ_{j+1})``, ``t > s``
(the paper's ``(t_{n+1}, t_n)``).

**Consistency distillation** (Song et al. 2023, Sec. 4, Definition 1 and Algorithm 2)::

    x_t = α(t)·data + σ(t)·noise
    x̂_s = Φ(x_t, t → s)                 # one teacher ODE step (Euler, Heun, …)
    L   = λ_j · d(f_θ(x_t, t), f_θ⁻(x̂_s, s))

**Consistency training** (Song et al. 2023, Algorithm 3; Song & Dhariwal 2023) replaces the
teacher step by the same noise at the lower time, ``x_s = α(s)·data + σ(s)·noise``.

**Target network** ``f_θ⁻``: an exact EMA of the student, ``θ⁻ ← μ θ⁻ + (1 − μ) θ`` with the
decay ``μ`` given explicitly by a curriculum (:func:`ema_update_`), or the student itself under
stop-gradient (``μ = 0``, as improved consistency training prescribes).

**Curricula** (functions of the training step ``k`` out of ``K``):

* CM (Song et al. 2023, Appendix C, for CT):
  ``N(k) = ⌈√(k/K·((s_1 + 1)² − s_0²) + s_0²) − 1⌉ + 1`` and ``μ(k) = exp(s_0 log μ_0 / N(k))``
  (CIFAR-10: ``s_0 = 2, s_1 = 150, μ_0 = 0.9``);
* iCT (Song & Dhariwal 2023, Sec. 3.4): ``N(k) = min(s_0·2^{⌊k/K'⌋}, s_1) + 1`` with
  ``K' = ⌊K / (log₂⌊s_1/s_0⌋ + 1)⌋`` (``s_0 = 10, s_1 = 1280``), and ``μ = 0``;
* constant ``N`` and ``μ`` (CM's distillation: ``N = 18``, ``μ = 0.95`` on CIFAR-10).

**iCT's noise schedule and weighting** (Song & Dhariwal 2023, Sec. 3.1 and 3.5): interval ``j``
is drawn with probability ``∝ erf((ln σ̃_hi − P_mean)/(√2 P_std)) − erf((ln σ̃_lo − P_mean)/(√2 P_std))``
(``P_mean = −1.1, P_std = 2``), and weighted by ``λ_j = 1/(σ̃_hi − σ̃_lo)``. Metrics: squared L2 or
pseudo-Huber (:func:`~flowgen.objectives.pseudo_huber`, ``c = 0.00054·√D``).

**Dropout**: the target pass and the student pass see the same dropout masks: the target is
evaluated inside :func:`torch.random.fork_rng` (over the CPU and the CUDA devices of the input),
which restores the RNG state afterwards, so the student pass then draws the very same numbers
(:func:`paired_passes`).

**Sampling** (Algorithm 1): ``x ← f(σ(τ_0)·z, τ_0)``; then for each further time ``τ``:
re-noise ``x_τ = (α_τ/α_min)·x + √(σ_τ² − (α_τ σ_min/α_min)²)·z'`` with fresh ``z'``
(exactly the marginal at ``τ`` if ``x`` is a sample at ``t_min``; in the VE case this is the
paper's ``x + √(τ² − ε²) z``) and ``x ← f(x_τ, τ)`` (:func:`consistency_sample`).

References:
    Song et al. 2023, arXiv:2303.01469, Sec. 3–5, Definition 1, Algorithms 1–3, Appendix C;
    Song & Dhariwal 2023, arXiv:2310.14189, Sec. 3.1–3.5;
    Karras et al. 2022, arXiv:2206.00364, eq. (5) (ρ-schedule).
"""

from __future__ import annotations

import math

from .._choice import Choice
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .._validation import check_batch, check_finite, check_same_shape, check_time, checks_values
from ..objectives.metrics import get_metric
from ..objectives.objective import call_model
from ..parameterization import Prediction
from ..paths.base import Path
from ..preconditioning import BoundaryConditioned
from ..samplers import Grid, Method, karras_grid, make_grid, step
from ._common import (DistillOutput, check_data, check_int, check_loss, check_model, check_probability, noised, randint,
                      randn, resolve_teacher, time_dtype)

__all__ = [
    "consistency_function",
    "default_t_max",
    "consistency_grid",
    "default_spacing",
    "cm_num_scales",
    "cm_ema_decay",
    "ict_num_scales",
    "Curriculum",
    "ConstantCurriculum",
    "CMCurriculum",
    "ICTCurriculum",
    "curriculum_from_config",
    "IndexDistribution",
    "ConsistencyWeighting",
    "lognormal_index_probabilities",
    "ema_update_",
    "rng_devices",
    "paired_passes",
    "teacher_ode_step",
    "consistency_distillation_loss",
    "consistency_training_loss",
    "ConsistencyDistillation",
    "ConsistencyTraining",
    "consistency_sample",
]

#: EDM's σ_max: the default upper end ``σ̃ = σ/α`` where a path's own ``t_max`` has ``α = 0``.
DEFAULT_SIGMA_MAX = 80.0


def consistency_function(net: nn.Module, path: Path, *, t_min: float | None = None, sigma_data: float = 0.5) -> BoundaryConditioned:
    """Wrap a raw network ``F(x, t[, cond])`` as a consistency function with ``f(x, t_min) = x`` exactly.

    Thin alias of :class:`~flowgen.preconditioning.BoundaryConditioned` (Song et al. 2023, Sec. 3,
    Appendix C) so that every distiller builds the same parameterization.
    """
    return BoundaryConditioned(net, path, t_min=t_min, sigma_data=sigma_data)


def _ve_sigma(path: Path, t: Tensor) -> Tensor:
    t = t.to(torch.float64)
    return path._sigma(t) / path._alpha(t)


def default_t_max(path: Path, sigma_max: float = DEFAULT_SIGMA_MAX) -> float:
    """The upper end of a consistency model's time range on ``path``.

    ``path.t_max`` when ``σ̃ = σ/α`` is finite there (VP, DDPM, EDM …); otherwise (``α(t_max) = 0``,
    rectified flow and cosine at ``t = 1``) the time where ``σ̃ = sigma_max`` (EDM's 80), since a
    consistency function cannot be evaluated where ``σ̃`` is infinite.
    """
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    s = float(_ve_sigma(path, torch.tensor([path.t_max], dtype=torch.float64))[0])
    if math.isfinite(s):
        return float(path.t_max)
    return float(path.t_from_log_snr(torch.tensor([-2.0 * math.log(sigma_max)], dtype=torch.float64))[0])


def check_spacing(spacing) -> str:
    """The grid name of a consistency grid's ``spacing`` (:func:`consistency_grid`); refuses anything else."""
    try:
        return Grid.parse(spacing, "spacing").value
    except (ValueError, TypeError):
        raise ValueError(f"spacing must be one of {[g.value for g in Grid]}, got {spacing!r}") from None


def consistency_grid(num_scales: int, path: Path, *, t_min: float, t_max: float, rho: float = 7.0,
                     spacing="karras") -> Tensor:
    """``N = num_scales`` strictly decreasing times from ``t_max`` to ``t_min``. ``(N,)`` float64.

    ``spacing`` is a sampler grid name: ``"karras"`` (default, CM's ρ-schedule in ``σ̃``) or
    ``"uniform"`` (uniform in ``t``), ``"log_snr"``, ``"shifted"``. The ρ-schedule suits EDM/VP
    paths; on a rectified-flow path it spends most points at ``t ≈ 0`` (with ``N = 18``, 5 points
    below ``t = 0.003``), and the teacher's own Heun solve on it is far less accurate than on a
    uniform grid (quick digits teacher, 17 Heun steps: R 1.26 on ρ = 7, 1.04 uniform), which
    bounds what consistency distillation on that grid can reach.

    References:
        Song et al. 2023, arXiv:2303.01469, Sec. 5 / Appendix C (``N`` discretisation points);
        Karras et al. 2022, arXiv:2206.00364, eq. (5).
    """
    n = check_int(num_scales, "num_scales", low=2)
    if check_spacing(spacing) == Grid.KARRAS.value:
        return karras_grid(n - 1, path, rho, t_max=t_max, t_min=t_min)
    return make_grid(spacing, n - 1, path, t_max=t_max, t_min=t_min).to(torch.float64)


def default_spacing(path: Path) -> str:
    """Consistency distillation's default grid spacing for ``path``: ``"uniform"`` or ``"karras"``.

    ``"uniform"`` (in ``t``) on a linear-interpolant path (``α(t) = 1 − t``, ``σ(t) = t``: rectified
    flow, or a user schedule equal to it), ``"karras"`` (CM's ρ-schedule in ``σ̃``) on every other
    path. A distilled student learns its grid's discretised teacher ODE, and on a rectified-flow
    teacher the ρ-schedule is the poorer solver: the teachers' own 17 Heun steps scored R 1.26
    against 1.04 on the quick digits teacher, and 0.68 / 1.19 / 1.36 against 1.00 / 1.09 / 1.09 on
    the quick Gaussian-mixture teachers (docs/distillation.md). Consistency training keeps the
    ρ-schedule of improved CT.
    """
    t = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.83, 1.0], dtype=torch.float64)
    try:
        a, s = path.alpha(t), path.sigma(t)
    except (ValueError, RuntimeError, TypeError):  # a path that cannot be probed at its ends keeps CM's schedule
        return Grid.KARRAS.value
    linear = bool(torch.allclose(a, 1.0 - t, rtol=0.0, atol=1e-9) and torch.allclose(s, t, rtol=0.0, atol=1e-9))
    return Grid.UNIFORM.value if linear else Grid.KARRAS.value


# --- curricula ------------------------------------------------------------------------------------
def _check_step(step_, total_steps) -> tuple[int, int]:
    k = check_int(step_, "step", low=0)
    big_k = check_int(total_steps, "total_steps", low=1)
    return k, big_k


def cm_num_scales(step: int, *, total_steps: int, s0: int = 2, s1: int = 150) -> int:
    r"""CM's discretisation curriculum ``N(k) = ⌈√(k/K·((s_1 + 1)² − s_0²) + s_0²) − 1⌉ + 1``.

    Grows from ``N(0) = s_0`` to ``N(K) = s_1 + 1``; steps past ``K`` keep ``N(K)``.

    References:
        Song et al. 2023, arXiv:2303.01469, Appendix C (schedule functions for CT).
    """
    k, big_k = _check_step(step, total_steps)
    s0, s1 = check_int(s0, "s0"), check_int(s1, "s1")
    k = min(k, big_k)
    return int(math.ceil(math.sqrt(k / big_k * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1.0)) + 1


def cm_ema_decay(step: int, *, total_steps: int, s0: int = 2, s1: int = 150, mu0: float = 0.9) -> float:
    r"""CM's target-EMA decay ``μ(k) = exp(s_0 \log μ_0 / N(k))`` with ``N(k)`` from :func:`cm_num_scales`.

    References:
        Song et al. 2023, arXiv:2303.01469, Appendix C.
    """
    mu0 = check_probability(mu0, "mu0", allow_one=False)
    if mu0 == 0.0:
        return 0.0
    n = cm_num_scales(step, total_steps=total_steps, s0=s0, s1=s1)
    return math.exp(s0 * math.log(mu0) / n)


def ict_num_scales(step: int, *, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    r"""iCT's exponential curriculum ``N(k) = min(s_0·2^{⌊k/K'⌋}, s_1) + 1``, ``K' = ⌊K/(log₂⌊s_1/s_0⌋ + 1)⌋``.

    The number of discretisation intervals doubles every ``K'`` steps, from ``s_0`` to the cap ``s_1``
    (``K' ≥ 1`` is enforced for very short runs).

    References:
        Song & Dhariwal 2023, arXiv:2310.14189, Sec. 3.4.
    """
    k, big_k = _check_step(step, total_steps)
    s0, s1 = check_int(s0, "s0"), check_int(s1, "s1")
    if s1 < s0:
        raise ValueError(f"s1 must be >= s0, got s0={s0}, s1={s1}")
    k_prime = max(1, int(math.floor(big_k / (math.log2(math.floor(s1 / s0)) + 1.0))))
    return min(s0 * 2 ** (k // k_prime), s1) + 1


class Curriculum:
    """A schedule of the number of discretisation points ``N(k)`` and the target decay ``μ(k)``.

    Subclasses: :class:`ConstantCurriculum`, :class:`CMCurriculum`, :class:`ICTCurriculum`.
    ``to_config()`` gives plain data for checkpoints.
    """

    def num_scales(self, step: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def ema_decay(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        cfg = self.to_config()
        name = cfg.pop("name")
        return f"{name}({', '.join(f'{k}={v!r}' for k, v in cfg.items())})"


class ConstantCurriculum(Curriculum):
    """Fixed ``N`` points and a fixed decay ``μ`` (CM's consistency distillation: ``N = 18``, ``μ = 0.95``).

    Args:
        num_scales: ``N >= 2`` discretisation points.
        ema_decay: ``μ ∈ [0, 1)``; 0 means the target is the student under stop-gradient.
    """

    def __init__(self, num_scales: int = 18, ema_decay: float = 0.95):
        self._n = check_int(num_scales, "num_scales", low=2)
        self._mu = check_probability(ema_decay, "ema_decay", allow_one=False)

    def num_scales(self, step: int) -> int:
        return self._n

    def ema_decay(self, step: int) -> float:
        return self._mu

    def to_config(self) -> dict:
        return {"name": "ConstantCurriculum", "num_scales": self._n, "ema_decay": self._mu}


class CMCurriculum(Curriculum):
    """CM's CT curriculum: :func:`cm_num_scales` and :func:`cm_ema_decay` over ``total_steps``."""

    def __init__(self, total_steps: int, *, s0: int = 2, s1: int = 150, mu0: float = 0.9):
        self.total_steps = check_int(total_steps, "total_steps")
        self.s0, self.s1 = check_int(s0, "s0"), check_int(s1, "s1")
        self.mu0 = check_probability(mu0, "mu0", allow_one=False)

    def num_scales(self, step: int) -> int:
        return max(2, cm_num_scales(step, total_steps=self.total_steps, s0=self.s0, s1=self.s1))

    def ema_decay(self, step: int) -> float:
        return cm_ema_decay(step, total_steps=self.total_steps, s0=self.s0, s1=self.s1, mu0=self.mu0)

    def to_config(self) -> dict:
        return {"name": "CMCurriculum", "total_steps": self.total_steps, "s0": self.s0, "s1": self.s1, "mu0": self.mu0}


class ICTCurriculum(Curriculum):
    """iCT's curriculum: :func:`ict_num_scales` over ``total_steps`` and ``μ = 0`` (stop-gradient target)."""

    def __init__(self, total_steps: int, *, s0: int = 10, s1: int = 1280):
        self.total_steps = check_int(total_steps, "total_steps")
        self.s0, self.s1 = check_int(s0, "s0"), check_int(s1, "s1")
        if self.s1 < self.s0:
            raise ValueError(f"s1 must be >= s0, got s0={s0}, s1={s1}")

    def num_scales(self, step: int) -> int:
        return ict_num_scales(step, total_steps=self.total_steps, s0=self.s0, s1=self.s1)

    def ema_decay(self, step: int) -> float:
        return 0.0

    def to_config(self) -> dict:
        return {"name": "ICTCurriculum", "total_steps": self.total_steps, "s0": self.s0, "s1": self.s1}


_CURRICULA = {"ConstantCurriculum": ConstantCurriculum, "CMCurriculum": CMCurriculum, "ICTCurriculum": ICTCurriculum}


def curriculum_from_config(config: dict) -> Curriculum:
    """Rebuild a curriculum from ``to_config()``'s output."""
    if not isinstance(config, dict) or config.get("name") not in _CURRICULA:
        raise ValueError(f"curriculum config must be a dict with 'name' in {sorted(_CURRICULA)}, got {config!r}")
    cfg = dict(config)
    return _CURRICULA[cfg.pop("name")](**cfg)


class IndexDistribution(Choice):
    """How the interval index is drawn: uniformly (CM) or iCT's discretised lognormal in ``σ̃``."""

    UNIFORM = "uniform"
    LOGNORMAL = "lognormal"

    __argname__ = "index_distribution"


class ConsistencyWeighting(Choice):
    """Per-interval loss weight: 1 (CM) or iCT's ``1/(σ̃_hi − σ̃_lo)`` (``"inverse_gap"``, alias ``"ict"``)."""

    UNIFORM = "uniform"
    INVERSE_GAP = "inverse_gap"

    __argname__ = "weighting"
    __hint__ = " (or 'ict')"

    @classmethod
    def aliases(cls) -> dict:
        return {'ict': 'inverse_gap'}


def lognormal_index_probabilities(grid: Tensor, path: Path, *, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    r"""iCT's probabilities of the ``N − 1`` intervals of a decreasing grid ``(N,)``.

    ``p_j ∝ erf((ln σ̃(τ_j) − P_mean)/(√2 P_std)) − erf((ln σ̃(τ_{j+1}) − P_mean)/(√2 P_std))``,
    i.e. the mass a lognormal ``ln σ̃ ~ N(P_mean, P_std²)`` puts on the interval. Returns ``(N − 1,)`` float64.

    References:
        Song & Dhariwal 2023, arXiv:2310.14189, Sec. 3.5.
    """
    if not (math.isfinite(p_mean) and math.isfinite(p_std) and p_std > 0):
        raise ValueError(f"p_mean must be finite and p_std > 0, got p_mean={p_mean}, p_std={p_std}")
    sig = _ve_sigma(path, grid.to(torch.float64))
    cdf = torch.special.erf((torch.log(sig) - p_mean) / (math.sqrt(2.0) * p_std))
    p = cdf[:-1] - cdf[1:]
    total = p.sum()
    if not bool(total > 0):
        raise ValueError("the lognormal noise schedule puts no mass on this grid; check t_min/t_max and p_mean/p_std")
    return p / total


# --- the target network -------------------------------------------------------------------------
@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, decay: float) -> None:
    r"""Exact EMA update in place: ``θ⁻ ← decay·θ⁻ + (1 − decay)·θ`` for every parameter.

    ``decay`` is used exactly as given (no warm-up or bias correction, unlike evaluation EMAs such
    as ema-pytorch): the consistency-model target network needs the decay of its schedule,
    e.g. :func:`cm_ema_decay` or a constant ``μ``. ``decay = 0`` copies the online weights, ``decay = 1``
    leaves the target unchanged. Buffers (e.g. batch-norm statistics) are copied.

    Args:
        target: the target network ``θ⁻`` (updated in place).
        online: the student ``θ``, with the same parameter names and shapes.
        decay: ``μ ∈ [0, 1]``.

    References:
        Song et al. 2023, arXiv:2303.01469, Algorithm 2 (``θ⁻ ← stopgrad(μθ⁻ + (1 − μ)θ)``).
    """
    decay = check_probability(decay, "decay")
    tp, op = dict(target.named_parameters()), dict(online.named_parameters())
    if tp.keys() != op.keys():
        raise ValueError(
            f"target and online networks have different parameters: only in target {sorted(tp.keys() - op.keys())[:5]}, "
            f"only in online {sorted(op.keys() - tp.keys())[:5]}"
        )
    for name, p in tp.items():
        q = op[name]
        if p.shape != q.shape:
            raise ValueError(f"parameter {name!r} has shape {tuple(p.shape)} in target but {tuple(q.shape)} in online")
        if decay == 0.0:
            p.copy_(q)
        elif decay != 1.0:
            p.mul_(decay).add_(q.detach().to(p.dtype), alpha=1.0 - decay)
    tb, ob = dict(target.named_buffers()), dict(online.named_buffers())
    for name, b in tb.items():
        if name in ob and ob[name].shape == b.shape:
            b.copy_(ob[name])


# --- shared randomness between the student and the target pass ------------------------------------
def rng_devices(*tensors: Tensor) -> list[int]:
    """The CUDA device indices among ``tensors`` (for :func:`torch.random.fork_rng`); the CPU RNG is always forked."""
    out = []
    for x in tensors:
        if isinstance(x, Tensor) and x.device.type == "cuda":
            idx = x.device.index if x.device.index is not None else torch.cuda.current_device()
            if idx not in out:
                out.append(idx)
    return out


def paired_passes(student_pass: Callable[[], Tensor], target_pass: Callable[[], Tensor], *, devices: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
    """Run the target pass and the student pass from the SAME RNG state (shared dropout masks).

    The target pass runs first, without gradient, inside :func:`torch.random.fork_rng` over the
    CPU and the CUDA ``devices``; on leaving it the RNG state is restored, so the student pass
    draws exactly the same random numbers (hence the same dropout masks, if both networks make
    the same sequence of random calls). The global RNG advances by the student pass only.

    Args:
        student_pass: ``() → Tensor``, the differentiable pass.
        target_pass: ``() → Tensor``, the target pass (its result is detached).
        devices: CUDA device indices whose RNG must be shared too (see :func:`rng_devices`).

    Returns:
        ``(student_out, target_out)``.

    References:
        Song & Dhariwal 2023, arXiv:2310.14189, Sec. 3.1 (synchronised dropout RNG).
    """
    with torch.random.fork_rng(devices=list(devices)):
        with torch.no_grad():
            target_out = target_pass()
    student_out = student_pass()
    return student_out, target_out.detach()


# --- teacher steps -------------------------------------------------------------------------------
def teacher_ode_step(teacher, path: Path, prediction, *, solver="heun") -> Callable:
    """One teacher ODE step per sample, ``(x, t, s[, cond]) → x_s``, through the samplers' per-sample steps.

    Args:
        teacher: ``teacher(x_t, t[, cond])`` predicting ``prediction``.
        path: its path.
        prediction: its prediction kind (any: converted to the velocity by the samplers' adapter).
        solver: ``"euler"`` or ``"heun"`` (CM's choices), also ``"midpoint"``, ``"rk4"`` or ``"ddim"``.

    Returns:
        A callable evaluated under ``torch.no_grad()``.

    References:
        Song et al. 2023, arXiv:2303.01469, Algorithm 2 (the ODE solver Φ).
    """
    check_model(teacher, "teacher")
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    prediction = Prediction.parse(prediction)
    method = Method.parse(solver, "solver")
    if method not in (Method.EULER, Method.HEUN, Method.MIDPOINT, Method.RK4, Method.DDIM):
        raise ValueError(f"solver must be one of 'euler', 'heun', 'midpoint', 'rk4', 'ddim', got {solver!r}")

    def teacher_step(x: Tensor, t: Tensor, s: Tensor, cond=None) -> Tensor:
        with torch.no_grad():
            return step(teacher, path, x, t=t, s=s, prediction=prediction, method=method, cond=cond)

    teacher_step.solver = method  # type: ignore[attr-defined]
    return teacher_step


# --- the losses -----------------------------------------------------------------------------------
def _check_pair_times(data: Tensor, t: Tensor, s: Tensor) -> None:
    check_time(t, "t", batch=data.shape[0], device=data.device)
    check_time(s, "s", batch=data.shape[0], device=data.device)
    if checks_values() and not bool((t > s).all()):
        raise ValueError("times must satisfy t > s for every sample (t is the noisier end of the interval)")


def _consistency(student, target_net, *, x_t: Tensor, t: Tensor, x_s: Tensor, s: Tensor, metric, weight, cond,
                 path: Path | None = None, inputs: tuple = ()) -> DistillOutput:
    check_model(student, "student")
    if target_net is not None:
        check_model(target_net, "target_net")
    target_net = student if target_net is None else target_net
    pred, target = paired_passes(lambda: call_model(student, x_t, t, cond), lambda: call_model(target_net, x_s.detach(), s, cond),
                                 devices=rng_devices(x_t))
    diff = pred - target
    if diff.dtype not in (torch.float32, torch.float64):
        diff = diff.float()
    per_sample = get_metric(metric)(diff)
    if weight is not None:
        if not isinstance(weight, Tensor) or weight.shape != per_sample.shape:
            raise ValueError(f"weight must be a tensor of shape {tuple(per_sample.shape)}, got {getattr(weight, 'shape', weight)!r}")
        per_sample = weight.to(per_sample.dtype) * per_sample
    if path is not None:
        check_loss(per_sample, (pred, target), inputs, t, path, "the consistency loss")
    return DistillOutput(loss=per_sample.mean(), per_sample=per_sample, t=t, x_t=x_t, pred=pred, target=target)


def _check_loss_inputs(data, noise, t, s, path):
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    check_data(data)
    check_batch(noise, "noise")
    check_same_shape(data, noise, "data", "noise")
    check_finite(noise, "noise")
    _check_pair_times(data, t, s)


def consistency_distillation_loss(student, *, teacher_step: Callable, data: Tensor, noise: Tensor, t: Tensor, s: Tensor, path: Path,
                                  target_net=None, metric="l2", weight: Tensor | None = None, cond=None) -> Tensor:
    r"""Per-sample consistency-distillation loss with all randomness given.

    ``λ · d(f_θ(x_t, t), f_θ⁻(Φ(x_t, t → s), s))`` with ``x_t = α(t)·data + σ(t)·noise``.

    Args:
        student: the consistency function ``f_θ(x_t, t[, cond])`` (e.g. :func:`consistency_function`).
        teacher_step: ``(x, t, s[, cond]) → x_s``, e.g. :func:`teacher_ode_step` or an exact flow map.
        data: ``(B, *D)``; noise: ``(B, *D)`` standard normal.
        t: ``(B,)`` the noisier times; s: ``(B,)`` the adjacent lower times, ``t > s``.
        path: the path.
        target_net: ``f_θ⁻``; ``None`` uses the student itself under stop-gradient (``μ = 0``).
        metric: ``"l2"``, ``"pseudo_huber"`` or a callable ``(B, *D) → (B,)``.
        weight: optional ``(B,)`` weights ``λ``.
        cond: optional condition for all networks.

    Returns:
        ``(B,)`` per-sample losses (differentiable w.r.t. the student only).

    References:
        Song et al. 2023, arXiv:2303.01469, Sec. 4 (Definition 1), Algorithm 2.
    """
    return _cd(student, teacher_step=teacher_step, data=data, noise=noise, t=t, s=s, path=path, target_net=target_net,
               metric=metric, weight=weight, cond=cond).per_sample


def _cd(student, *, teacher_step, data, noise, t, s, path, target_net, metric, weight, cond) -> DistillOutput:
    _check_loss_inputs(data, noise, t, s, path)
    if not callable(teacher_step):
        raise TypeError(f"teacher_step must be callable (x, t, s[, cond]) -> x_s, got {type(teacher_step).__name__}")
    x_t = noised(data, noise, t, path)
    with torch.no_grad():
        x_s = teacher_step(x_t, t, s) if cond is None else teacher_step(x_t, t, s, cond)
    if not isinstance(x_s, Tensor) or x_s.shape != x_t.shape:
        raise ValueError(f"teacher_step must return a tensor of shape {tuple(x_t.shape)}, got {getattr(x_s, 'shape', type(x_s))}")
    return _consistency(student, target_net, x_t=x_t, t=t, x_s=x_s, s=s, metric=metric, weight=weight, cond=cond, path=path,
                        inputs=(("data", data), ("noise", noise)))


def consistency_training_loss(student, *, data: Tensor, noise: Tensor, t: Tensor, s: Tensor, path: Path, target_net=None,
                              metric="pseudo_huber", weight: Tensor | None = None, cond=None) -> Tensor:
    r"""Per-sample consistency-training loss (no teacher): ``x_s = α(s)·data + σ(s)·noise`` with the same noise.

    Arguments as in :func:`consistency_distillation_loss` without ``teacher_step``; the metric
    defaults to pseudo-Huber as in iCT.

    Returns:
        ``(B,)`` per-sample losses.

    References:
        Song et al. 2023, arXiv:2303.01469, Algorithm 3; Song & Dhariwal 2023, arXiv:2310.14189.
    """
    return _ct(student, data=data, noise=noise, t=t, s=s, path=path, target_net=target_net, metric=metric, weight=weight,
               cond=cond).per_sample


def _ct(student, *, data, noise, t, s, path, target_net, metric, weight, cond) -> DistillOutput:
    _check_loss_inputs(data, noise, t, s, path)
    x_t = noised(data, noise, t, path)
    x_s = noised(data, noise, s, path)
    return _consistency(student, target_net, x_t=x_t, t=t, x_s=x_s, s=s, metric=metric, weight=weight, cond=cond, path=path,
                        inputs=(("data", data), ("noise", noise)))


# --- loss objects ------------------------------------------------------------------------------------
class _ConsistencyBase:
    def __init__(self, path: Path, *, curriculum: Curriculum, t_min, t_max, rho, metric, weighting, index_distribution,
                 p_mean, p_std, sigma_data, event_shape, spacing="karras"):
        if not isinstance(curriculum, Curriculum):
            raise TypeError(f"curriculum must be a Curriculum (ConstantCurriculum, CMCurriculum, ICTCurriculum), got {type(curriculum).__name__}")
        self.path = path
        self.curriculum = curriculum
        self.t_min = float(path.t_min if t_min is None else t_min)
        self.t_max = float(default_t_max(path) if t_max is None else t_max)
        if not (0.0 <= self.t_min < self.t_max <= 1.0):
            raise ValueError(f"t_min and t_max must satisfy 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")
        if not math.isfinite(float(_ve_sigma(path, torch.tensor([self.t_max], dtype=torch.float64))[0])):
            raise ValueError(f"sigma/alpha is infinite at t_max={self.t_max} on {type(path).__name__}; pass t_max < 1 (default_t_max(path))")
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
        self.rho = float(rho)
        self.spacing = check_spacing(spacing)
        self.metric = get_metric(metric)
        self.metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")
        self.weighting = ConsistencyWeighting.parse(weighting)
        self.index_distribution = IndexDistribution.parse(index_distribution)
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.sigma_data = float(sigma_data)
        self.event_shape = None if event_shape is None else tuple(event_shape)
        self._cache: dict[int, tuple[Tensor, Tensor | None, Tensor]] = {}

    # --- discretisation ----------------------------------------------------------------------------
    def num_scales(self, step: int) -> int:
        """``N(k)``: the number of discretisation points at training step ``k``."""
        return self.curriculum.num_scales(step)

    def ema_decay(self, step: int) -> float:
        """``μ(k)``: the target network's decay at training step ``k`` (0 = stop-gradient student)."""
        return self.curriculum.ema_decay(step)

    def grid(self, step: int) -> Tensor:
        """``(N(k),)`` float64 decreasing times from ``t_max`` to ``t_min``."""
        return self._tables(self.num_scales(step))[0]

    def _tables(self, n: int):
        if n not in self._cache:
            g = consistency_grid(n, self.path, t_min=self.t_min, t_max=self.t_max, rho=self.rho, spacing=self.spacing)
            probs = None
            if self.index_distribution is IndexDistribution.LOGNORMAL:
                probs = lognormal_index_probabilities(g, self.path, p_mean=self.p_mean, p_std=self.p_std)
            sig = _ve_sigma(self.path, g)
            weights = 1.0 / (sig[:-1] - sig[1:]) if self.weighting is ConsistencyWeighting.INVERSE_GAP else torch.ones(n - 1, dtype=torch.float64)
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[n] = (g, probs, weights)
        return self._cache[n]

    def draw(self, data: Tensor, step: int = 0, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Draw ``(t, s, noise, weight)`` for a data batch at training step ``step``.

        ``t``/``s`` ``(B,)`` are adjacent grid times (``t > s``) in float32 (float64 for float64 data),
        ``noise`` ``(B, *D)``, ``weight`` ``(B,)`` the per-interval weight ``λ``.
        """
        check_data(data, event_shape=self.event_shape)
        g, probs, weights = self._tables(self.num_scales(step))
        b = data.shape[0]
        if probs is None:
            j = randint(g.numel() - 1, b, device=torch.device("cpu"), generator=generator)
        else:
            gen_dev = generator.device if generator is not None else torch.device("cpu")
            j = torch.multinomial(probs.to(gen_dev), b, replacement=True, generator=generator).cpu()
        dt = time_dtype(data)
        t = g[j].to(device=data.device, dtype=dt)
        s = g[j + 1].to(device=data.device, dtype=dt)
        w = weights[j].to(device=data.device, dtype=dt)
        noise = randn(data.shape, like=data, generator=generator)
        return t, s, noise, w

    def update_target(self, target_net: nn.Module, student: nn.Module, step: int) -> float:
        """``ema_update_(target_net, student, μ(step))``; returns the decay used."""
        mu = self.ema_decay(step)
        ema_update_(target_net, student, mu)
        return mu

    def consistency_function(self, net: nn.Module) -> BoundaryConditioned:
        """Wrap a raw network as this distiller's consistency function (boundary at :attr:`t_min`)."""
        return BoundaryConditioned(net, self.path, t_min=self.t_min, sigma_data=self.sigma_data)

    def student_generator(self, f, **kwargs):
        """The trained consistency function as a :class:`~flowgen.distill.ConsistencyGenerator`."""
        from .generators import ConsistencyGenerator

        return ConsistencyGenerator(f, self.path, t_min=self.t_min, t_max=self.t_max, rho=self.rho, spacing=self.spacing,
                                    sigma_data=self.sigma_data, **kwargs)

    def config(self) -> dict:
        """Plain-data configuration (for checkpoints and logs)."""
        from ..paths import path_to_config

        return {
            "path": path_to_config(self.path), "curriculum": self.curriculum.to_config(), "t_min": self.t_min,
            "t_max": self.t_max, "rho": self.rho, "spacing": self.spacing, "metric": self.metric_name, "weighting": self.weighting.value,
            "index_distribution": self.index_distribution.value, "p_mean": self.p_mean, "p_std": self.p_std,
            "sigma_data": self.sigma_data,
        }


class ConsistencyDistillation(_ConsistencyBase):
    """Consistency distillation from any teacher (any path, any prediction) as a loss object.

    Args:
        teacher: frozen ``teacher(x_t, t[, cond])``; ``.path``/``.prediction`` used when not given.
        path, teacher_prediction: the teacher's path and prediction kind.
        solver: the teacher ODE step, ``"heun"`` (default) or ``"euler"`` (also ``"midpoint"``,
            ``"rk4"``), or a callable ``(x, t, s[, cond]) → x_s`` (e.g. an exact flow map).
        curriculum: ``N(k)`` and ``μ(k)``; default ``ConstantCurriculum(18, ema_decay=0.95)`` (CM's CD).
        t_min, t_max: the time range (default ``path.t_min`` and :func:`default_t_max`).
        rho: the ρ of the grid.
        spacing: the grid's spacing: ``None`` (default, :func:`default_spacing`: ``"uniform"`` in ``t``
            on a rectified-flow path, ``"karras"``, the ρ-schedule, on any other), or ``"karras"``,
            ``"uniform"``, ``"log_snr"``, ``"shifted"`` (:func:`consistency_grid`).
        metric: ``"l2"`` (default) or ``"pseudo_huber"`` or a callable.
        weighting: ``"uniform"`` (default) or ``"inverse_gap"`` (iCT's ``1/(σ̃_hi − σ̃_lo)``).
        index_distribution: ``"uniform"`` (default) or ``"lognormal"`` (iCT).
        p_mean, p_std: the lognormal's parameters.
        sigma_data: σ_d of the boundary-condition preconditioning (:meth:`consistency_function`).
        event_shape: if given, data must have shape ``(B, *event_shape)``.

    References:
        Song et al. 2023, arXiv:2303.01469, Algorithm 2.
    """

    def __init__(self, teacher, *, path: Path | None = None, teacher_prediction=None, solver="heun",
                 curriculum: Curriculum | None = None, t_min: float | None = None, t_max: float | None = None,
                 rho: float = 7.0, metric="l2", weighting="uniform", index_distribution="uniform",
                 p_mean: float = -1.1, p_std: float = 2.0, sigma_data: float = 0.5, event_shape: tuple | None = None,
                 spacing=None):
        path, self.teacher_prediction = resolve_teacher(teacher, path, teacher_prediction)
        if spacing is None:
            spacing = default_spacing(path)
        super().__init__(path, curriculum=ConstantCurriculum() if curriculum is None else curriculum, t_min=t_min,
                         t_max=t_max, rho=rho, metric=metric, weighting=weighting, index_distribution=index_distribution,
                         p_mean=p_mean, p_std=p_std, sigma_data=sigma_data, event_shape=event_shape, spacing=spacing)
        self.teacher = teacher
        if callable(solver) and not isinstance(solver, (str, Method)):
            self.teacher_step = solver
            self.solver = "custom"
        else:
            self.teacher_step = teacher_ode_step(teacher, path, self.teacher_prediction, solver=solver)
            self.solver = Method.parse(solver, "solver").value

    def loss(self, student, data: Tensor, cond=None, *, target_net=None, step: int = 0,
             generator: torch.Generator | None = None) -> DistillOutput:
        """Evaluate the loss at training step ``step``.

        Args:
            student: the consistency function ``f_θ``.
            data: ``(B, *D)``.
            cond: optional condition.
            target_net: the EMA target ``f_θ⁻``; ``None`` = the student under stop-gradient.
            step: the training step ``k`` (selects ``N(k)``).
            generator: RNG for the interval index and the noise.

        Returns:
            :class:`~flowgen.distill.DistillOutput`.
        """
        t, s, noise, w = self.draw(data, step, generator)
        weight = None if self.weighting is ConsistencyWeighting.UNIFORM else w
        return _cd(student, teacher_step=self.teacher_step, data=data, noise=noise, t=t, s=s, path=self.path,
                   target_net=target_net, metric=self.metric, weight=weight, cond=cond)

    def __call__(self, student, data: Tensor, cond=None, **kwargs) -> Tensor:
        """Scalar loss (see :meth:`loss`)."""
        return self.loss(student, data, cond, **kwargs).loss

    def config(self) -> dict:
        cfg = super().config()
        cfg.update(kind="consistency_distillation", solver=self.solver, teacher_prediction=self.teacher_prediction.value)
        return cfg


class ConsistencyTraining(_ConsistencyBase):
    """Consistency training without a teacher, with improved-CT defaults.

    Args:
        path: the path.
        total_steps: ``K`` for the default :class:`ICTCurriculum` (needed unless ``curriculum`` is given).
        curriculum: ``N(k)`` and ``μ(k)``; default ``ICTCurriculum(total_steps)`` (``μ = 0``).
        metric: ``"pseudo_huber"`` (default, iCT) or ``"l2"`` or a callable.
        weighting: ``"inverse_gap"`` (default, iCT) or ``"uniform"``.
        index_distribution: ``"lognormal"`` (default, iCT) or ``"uniform"``.
        spacing: ``"karras"`` (default, the ρ-schedule of CM and iCT on every path) or another grid name.
        Other arguments as in :class:`ConsistencyDistillation`.

    References:
        Song & Dhariwal 2023, arXiv:2310.14189; Song et al. 2023, arXiv:2303.01469, Algorithm 3.
    """

    def __init__(self, path: Path, *, total_steps: int | None = None, curriculum: Curriculum | None = None,
                 t_min: float | None = None, t_max: float | None = None, rho: float = 7.0, metric="pseudo_huber",
                 weighting="inverse_gap", index_distribution="lognormal", p_mean: float = -1.1, p_std: float = 2.0,
                 sigma_data: float = 0.5, event_shape: tuple | None = None, spacing="karras"):
        if not isinstance(path, Path):
            raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
        if curriculum is None:
            if total_steps is None:
                raise ValueError("ConsistencyTraining needs total_steps (for iCT's curriculum) or an explicit curriculum")
            curriculum = ICTCurriculum(total_steps)
        super().__init__(path, curriculum=curriculum, t_min=t_min, t_max=t_max, rho=rho, metric=metric, weighting=weighting,
                         index_distribution=index_distribution, p_mean=p_mean, p_std=p_std, sigma_data=sigma_data,
                         event_shape=event_shape, spacing=spacing)

    def loss(self, student, data: Tensor, cond=None, *, target_net=None, step: int = 0,
             generator: torch.Generator | None = None) -> DistillOutput:
        """Evaluate the loss at training step ``step`` (arguments as :meth:`ConsistencyDistillation.loss`)."""
        t, s, noise, w = self.draw(data, step, generator)
        weight = None if self.weighting is ConsistencyWeighting.UNIFORM else w
        return _ct(student, data=data, noise=noise, t=t, s=s, path=self.path, target_net=target_net, metric=self.metric,
                   weight=weight, cond=cond)

    def __call__(self, student, data: Tensor, cond=None, **kwargs) -> Tensor:
        """Scalar loss (see :meth:`loss`)."""
        return self.loss(student, data, cond, **kwargs).loss

    def config(self) -> dict:
        cfg = super().config()
        cfg.update(kind="consistency_training")
        return cfg


# --- sampling ------------------------------------------------------------------------------------------
def _check_step_times(times, path: Path, t_min: float) -> list[float]:
    if isinstance(times, Tensor):
        times = times.detach().cpu().to(torch.float64).tolist()
    if isinstance(times, (int, float)):
        times = [times]
    if not isinstance(times, Sequence) or isinstance(times, (str, bytes)) or len(times) == 0:
        raise ValueError(f"times must be a non-empty sequence of times (the first is the start, e.g. t_max), got {times!r}")
    out = []
    for i, v in enumerate(times):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"times[{i}] must be a finite number, got {v!r}")
        if not (t_min < v <= 1.0):
            raise ValueError(f"times[{i}]={v} must lie in (t_min={t_min}, 1]")
        if i and not v < out[-1]:
            raise ValueError(f"times must be strictly decreasing; times[{i}]={v} >= times[{i - 1}]={out[-1]}")
        out.append(float(v))
    if not math.isfinite(float(_ve_sigma(path, torch.tensor([out[0]], dtype=torch.float64))[0])):
        raise ValueError(f"sigma/alpha is infinite at times[0]={out[0]} on {type(path).__name__}; start below t = 1")
    return out


def consistency_sample(f, path: Path, noise: Tensor, *, times, t_min: float | None = None, cond=None,
                       generator: torch.Generator | None = None) -> Tensor:
    r"""Multistep consistency sampling (Song et al. 2023, Algorithm 1) on any path.

    ``x ← f(σ(τ_0)·noise, τ_0)``; for each further ``τ``: ``x_τ = (α_τ/α_min)·x + √(σ_τ² − (α_τ σ_min/α_min)²)·z``
    with fresh ``z ~ N(0, I)`` from ``generator`` and ``x ← f(x_τ, τ)``. One evaluation of ``f`` per time.

    Args:
        f: the consistency function ``f(x_t, t[, cond])``.
        path: the path.
        noise: ``(B, *D)`` standard normal noise.
        times: strictly decreasing times ``(τ_0, …, τ_{k−1})``, all ``> t_min``; ``k`` = number of steps.
        t_min: the boundary time of ``f`` (default ``f.t_min`` if it has one, else ``path.t_min``).
        cond: optional condition.
        generator: RNG for the re-noising (CPU or ``noise``'s device).

    Returns:
        ``(B, *D)`` samples.

    References:
        Song et al. 2023, arXiv:2303.01469, Algorithm 1.
    """
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    check_data(noise, "noise")
    t_min = float(getattr(f, "t_min", path.t_min) if t_min is None else t_min)
    ts = _check_step_times(times, path, t_min)
    b, dt = noise.shape[0], time_dtype(noise)
    tm = torch.tensor([t_min], dtype=torch.float64)
    a_min, s_min = float(path._alpha(tm)[0]), float(path._sigma(tm)[0])
    coefs = path._alpha(torch.tensor(ts, dtype=torch.float64)).tolist(), path._sigma(torch.tensor(ts, dtype=torch.float64)).tolist()
    with torch.no_grad():
        x = coefs[1][0] * noise
        x = call_model(f, x, torch.full((b,), ts[0], dtype=dt, device=noise.device), cond)
        for i in range(1, len(ts)):
            a_t, s_t = coefs[0][i], coefs[1][i]
            scale = a_t / a_min
            std = math.sqrt(max(s_t * s_t - (scale * s_min) ** 2, 0.0))
            z = randn(noise.shape, like=noise, generator=generator)
            x_t = scale * x + std * z
            x = call_model(f, x_t, torch.full((b,), ts[i], dtype=dt, device=noise.device), cond)
    return x
