r"""Time grids for samplers: pure functions returning strictly decreasing 1-D grids.

Every grid is a float64 CPU tensor of shape ``(N + 1,)`` with ``grid[0] = t_max`` and
``grid[-1] = t_min`` set *exactly* (never recomputed through a round trip), strictly
decreasing, inside ``[0, 1]``. Generation integrates from ``grid[0]`` down to ``grid[-1]``.

* :func:`uniform_grid` — uniform in ``t``.
* :func:`karras_grid` — uniform in ``σ̃^{1/ρ}`` with ``σ̃ = σ/α`` (EDM's ρ-schedule in the
  path's variance-exploding frame), mapped back to ``t`` through the path's log-SNR inverse
  ``λ = −2 log σ̃``.
* :func:`log_snr_grid` — uniform in ``λ = 2 log(α/σ)`` (DPM-Solver's recommendation).
* :func:`shifted_grid` — uniform grid passed through the SD3 shift
  ``t' = s·t / (1 + (s − 1)·t)``.

:func:`check_grid` validates a user grid. :data:`GRIDS` maps a name to its builder so that
``sample(..., grid="karras", steps=...)`` works.

References:
    Karras et al. 2022, arXiv:2206.00364, eq. (5) (ρ-schedule);
    Lu et al. 2022, arXiv:2206.00927, Sec. 3.3 (uniform log-SNR steps);
    Esser et al. 2024, arXiv:2403.03206, Sec. 5.3.2 (resolution-dependent timestep shift).
"""

from __future__ import annotations

import math

from .._choice import Choice
from typing import Sequence

import torch
from torch import Tensor

from ..paths.base import Path

__all__ = [
    "uniform_grid",
    "karras_grid",
    "log_snr_grid",
    "shifted_grid",
    "check_grid",
    "Grid",
    "GRIDS",
    "make_grid",
]


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


def _check_interval(t_max, t_min) -> tuple[float, float]:
    for name, v in (("t_max", t_max), ("t_min", t_min)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number in [0, 1], got {v!r}")
    t_max, t_min = float(t_max), float(t_min)
    if not (0.0 <= t_min < t_max <= 1.0):
        raise ValueError(f"t_min and t_max must satisfy 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    return t_max, t_min


def _path_interval(path: Path, t_max, t_min) -> tuple[float, float]:
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    return _check_interval(path.t_max if t_max is None else t_max, path.t_min if t_min is None else t_min)


def _finish(grid: Tensor, t_max: float, t_min: float, what: str) -> Tensor:
    grid = grid.to(torch.float64).clone()
    grid[0], grid[-1] = t_max, t_min
    # NaN fails every comparison, and the ends are finite, so this also rules out NaN/Inf.
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(
            f"{what} is not strictly decreasing in float64 for this many steps ({grid.numel() - 1}); "
            "use fewer steps or a wider [t_min, t_max]"
        )
    return grid


def uniform_grid(steps: int, t_max: float = 1.0, t_min: float = 0.0) -> Tensor:
    """``steps + 1`` times uniform in ``t`` from ``t_max`` down to ``t_min``.

    Args:
        steps: number of steps ``N >= 1``.
        t_max: start time (noise end), in ``(t_min, 1]``.
        t_min: end time (data end), in ``[0, t_max)``.

    Returns:
        ``(N + 1,)`` float64, strictly decreasing, with exact endpoints.
    """
    steps = _check_steps(steps)
    t_max, t_min = _check_interval(t_max, t_min)
    h = (t_min - t_max) / steps
    grid = torch.tensor([t_max + i * h for i in range(steps)] + [t_min], dtype=torch.float64)
    if steps > 1 and not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"uniform_grid is not strictly decreasing in float64 for {steps} steps on [{t_min}, {t_max}]; use fewer steps")
    return grid


def _ve_sigma(path: Path, t: float) -> float:
    tt = torch.tensor([t], dtype=torch.float64)
    return float(path._sigma(tt)[0] / path._alpha(tt)[0])


def karras_grid(steps: int, path: Path, rho: float = 7.0, *, t_max: float | None = None, t_min: float | None = None) -> Tensor:
    r"""EDM's ρ-schedule in the path's variance-exploding frame.

    ``σ̃_i = (σ̃_max^{1/ρ} + i/N·(σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ`` with ``σ̃ = σ/α``, mapped to
    ``t_i = path.t_from_log_snr(−2 log σ̃_i)``. Endpoints are exactly ``t_max`` and ``t_min``.

    Args:
        steps: ``N >= 1``.
        path: the path (gives ``σ̃`` and the log-SNR inverse).
        rho: the exponent ρ > 0 (EDM uses 7).
        t_max, t_min: the interval, by default the path's ``[t_min, t_max]``.

    Returns:
        ``(N + 1,)`` float64, strictly decreasing.

    Raises:
        ValueError: if ``σ̃(t_max)`` is infinite (``α(t_max) = 0``, e.g. rectified flow at
            ``t = 1``): pass ``t_max < 1``.

    References:
        Karras et al. 2022, arXiv:2206.00364, eq. (5).
    """
    steps = _check_steps(steps)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
    t_max, t_min = _path_interval(path, t_max, t_min)
    s_max, s_min = _ve_sigma(path, t_max), _ve_sigma(path, t_min)
    if not math.isfinite(s_max):
        raise ValueError(
            f"karras_grid needs a finite sigma/alpha at t_max={t_max}, but alpha(t_max) = 0 on {type(path).__name__}; "
            "pass t_max < 1 (e.g. t_max=0.999)"
        )
    ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    lo, hi = s_min ** (1.0 / rho), s_max ** (1.0 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    grid = torch.empty(steps + 1, dtype=torch.float64)
    if steps > 1:
        grid[1:-1] = path.t_from_log_snr(-2.0 * torch.log(sig[1:-1]))
    return _finish(grid, t_max, t_min, "karras_grid")


def log_snr_grid(steps: int, path: Path, *, t_max: float | None = None, t_min: float | None = None) -> Tensor:
    r"""Times uniform in the log-SNR ``λ`` between ``λ(t_max)`` and ``λ(t_min)``.

    Args:
        steps: ``N >= 1``.
        path: the path.
        t_max, t_min: the interval (default the path's); ``λ`` must be finite at both ends.

    Returns:
        ``(N + 1,)`` float64, strictly decreasing.

    References:
        Lu et al. 2022, arXiv:2206.00927, Sec. 3.3.
    """
    steps = _check_steps(steps)
    t_max, t_min = _path_interval(path, t_max, t_min)
    ends = path._log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
    if not bool(torch.isfinite(ends).all()):
        raise ValueError(
            f"log_snr_grid needs a finite log-SNR at both ends, got lambda(t_max={t_max}) = {float(ends[0])} and "
            f"lambda(t_min={t_min}) = {float(ends[1])} on {type(path).__name__}; move t_max below 1 or t_min above 0"
        )
    lam = torch.linspace(float(ends[0]), float(ends[1]), steps + 1, dtype=torch.float64)
    grid = torch.empty(steps + 1, dtype=torch.float64)
    if steps > 1:
        grid[1:-1] = path.t_from_log_snr(lam[1:-1])
    return _finish(grid, t_max, t_min, "log_snr_grid")


def _shift(t: Tensor, s: float) -> Tensor:
    return s * t / (1.0 + (s - 1.0) * t)


def shifted_grid(steps: int, shift: float = 3.0, *, t_max: float = 1.0, t_min: float = 0.0) -> Tensor:
    r"""A uniform grid passed through the SD3 time shift ``t' = s·t / (1 + (s − 1)·t)``.

    ``shift > 1`` spends more steps at high noise. The uniform grid is laid out in the
    un-shifted variable between the pre-images of ``t_max`` and ``t_min``, so the shifted
    grid still ends exactly at ``t_max`` and ``t_min``. ``shift = 1`` is :func:`uniform_grid`.

    Args:
        steps: ``N >= 1``.
        shift: ``s > 0``.
        t_max, t_min: the interval.

    Returns:
        ``(N + 1,)`` float64, strictly decreasing.

    References:
        Esser et al. 2024, arXiv:2403.03206, Sec. 5.3.2.
    """
    steps = _check_steps(steps)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    t_max, t_min = _check_interval(t_max, t_min)
    s = float(shift)
    inv = lambda t: t / (s - (s - 1.0) * t)  # noqa: E731 - inverse of the shift
    u = torch.linspace(inv(t_max), inv(t_min), steps + 1, dtype=torch.float64)
    return _finish(_shift(u, s), t_max, t_min, "shifted_grid")


def check_grid(grid, name: str = "grid", *, increasing: bool = False) -> Tensor:
    """Validate a user time grid and return it as a float64 CPU tensor.

    Args:
        grid: a 1-D tensor or sequence of at least two times.
        name: the argument name used in error messages.
        increasing: require strictly increasing (inversion) instead of strictly decreasing.

    Returns:
        ``(N + 1,)`` float64 CPU tensor (a copy).

    Raises:
        TypeError: if ``grid`` is not a tensor or a sequence of numbers.
        ValueError: if it is not 1-D, has fewer than 2 points, holds NaN/Inf, is not strictly
            monotone in the required direction, or leaves ``[0, 1]``.
    """
    if isinstance(grid, Tensor):
        if grid.is_complex() or grid.dtype == torch.bool:
            raise TypeError(f"{name} must hold real times, got dtype {grid.dtype}")
        if grid.device.type == "meta":
            raise ValueError(f"{name} is a meta tensor (a shape without values); expected times")
        g = grid.detach().to(device="cpu", dtype=torch.float64).clone()
    elif isinstance(grid, Sequence) and not isinstance(grid, (str, bytes)):
        try:
            g = torch.tensor([float(v) for v in grid], dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a 1-D tensor or a sequence of numbers: {err}") from None
    else:
        raise TypeError(f"{name} must be a 1-D tensor or a sequence of numbers, got {type(grid).__name__}")
    if g.dim() != 1:
        raise ValueError(f"{name} must be 1-D of shape (N+1,), got shape {tuple(g.shape)}")
    if g.numel() < 2:
        raise ValueError(f"{name} must hold at least 2 times (1 step), got {g.numel()}")
    if not bool(torch.isfinite(g).all()):
        raise ValueError(f"{name} holds NaN or Inf; expected finite times in [0, 1]")
    if bool((g < 0).any()) or bool((g > 1).any()):
        raise ValueError(f"{name} must lie in [0, 1], got values in [{float(g.min()):.6g}, {float(g.max()):.6g}]")
    diffs = g[1:] - g[:-1]
    bad = (diffs <= 0) if increasing else (diffs >= 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        direction = "increasing" if increasing else "decreasing (from noise at t_max to data at t_min)"
        raise ValueError(
            f"{name} must be strictly {direction}; it is not between index {i} (t={float(g[i]):.6g}) "
            f"and {i + 1} (t={float(g[i + 1]):.6g})"
        )
    return g


class Grid(Choice):
    """Named grid builders for ``sample(..., grid=<name>, steps=N)``."""

    UNIFORM = "uniform"
    KARRAS = "karras"
    LOG_SNR = "log_snr"
    SHIFTED = "shifted"

    __argname__ = "grid"
    __hint__ = '; or a tensor or sequence of times'

    @classmethod
    def aliases(cls) -> dict:
        return {'logsnr': 'log_snr', 'edm': 'karras', 'sd3': 'shifted', 'linear': 'uniform'}


def make_grid(kind, steps: int, path: Path, *, t_max: float | None = None, t_min: float | None = None) -> Tensor:
    """Build a named grid (``"uniform"``, ``"karras"``, ``"log_snr"``, ``"shifted"``) on ``path``'s interval.

    ``"shifted"`` uses shift 3 (SD3's default); call :func:`shifted_grid` for another shift.
    """
    kind = Grid.parse(kind)
    if kind is Grid.UNIFORM:
        if not isinstance(path, Path):
            raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
        return uniform_grid(steps, path.t_max if t_max is None else t_max, path.t_min if t_min is None else t_min)
    t_max, t_min = _path_interval(path, t_max, t_min)
    if kind is Grid.KARRAS:
        return karras_grid(steps, path, t_max=t_max, t_min=t_min)
    if kind is Grid.LOG_SNR:
        return log_snr_grid(steps, path, t_max=t_max, t_min=t_min)
    return shifted_grid(steps, t_max=t_max, t_min=t_min)


#: name → builder ``(steps, path, t_max, t_min) → grid``.
GRIDS = {
    Grid.UNIFORM.value: lambda steps, path, t_max=None, t_min=None: make_grid(Grid.UNIFORM, steps, path, t_max=t_max, t_min=t_min),
    Grid.KARRAS.value: lambda steps, path, t_max=None, t_min=None: make_grid(Grid.KARRAS, steps, path, t_max=t_max, t_min=t_min),
    Grid.LOG_SNR.value: lambda steps, path, t_max=None, t_min=None: make_grid(Grid.LOG_SNR, steps, path, t_max=t_max, t_min=t_min),
    Grid.SHIFTED.value: lambda steps, path, t_max=None, t_min=None: make_grid(Grid.SHIFTED, steps, path, t_max=t_max, t_min=t_min),
}
