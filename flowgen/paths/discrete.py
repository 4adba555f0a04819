r"""DDPM's discrete ᾱ tables, made a continuous path.

A table of ``T`` cumulative products ``ᾱ_i`` (index ``i = 0 … T−1``) is placed on the
time axis at ``t_i = (i + 1) / T``, with ``ᾱ = 1`` at ``t = 0``. Between knots
``log ᾱ`` is linear in ``t``, so the path is continuous, strictly monotone, exact at
every grid point, and has closed-form (piecewise-constant-slope) derivatives:

.. math::
    α = \sqrt{ᾱ(t)},\quad σ = \sqrt{1 − ᾱ(t)},\quad
    α' = ½\,(\log ᾱ)'\,α,\quad σ' = −ᾱ\,(\log ᾱ)' / (2σ).

At a knot the derivative is the one-sided slope of the segment to its right (the left
one at ``t = 1``). Models trained on integer indices are called with
``t_to_timestep(t) = t·T − 1``, which is exactly ``i`` on the grid.

References:
    Ho et al. 2020, arXiv:2006.11239 (linear table); Nichol & Dhariwal 2021,
    arXiv:2102.09672, eq. (17) (cosine table with s = 0.008 and β clipped at 0.999).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .base import Path, _log_sigmoid

__all__ = ["DiscreteDDPM"]


class DiscreteDDPM(Path):
    """A DDPM noise table as a continuous path.

    Args:
        betas: ``(T,)`` per-step variances in ``(0, 1)``.
        name: label kept in the path's config (``"linear"``, ``"cosine"``, ``"custom"`` …).

    Attributes:
        betas: ``(T,)`` float64.
        alphas_cumprod: ``(T,)`` float64, ``∏_{j ≤ i} (1 − β_j)``.
        num_steps: ``T``.
    """

    def __init__(self, betas, *, name: str = "custom", _config: dict | None = None):
        b = torch.as_tensor(np.asarray(betas, dtype=np.float64)) if not isinstance(betas, Tensor) else betas.detach().cpu().double()
        if b.dim() != 1 or b.numel() < 2:
            raise ValueError(f"betas must be a 1-D table with at least 2 entries, got shape {tuple(b.shape)}")
        if not bool(torch.isfinite(b).all()) or bool((b <= 0).any()) or bool((b >= 1).any()):
            raise ValueError("betas must be finite and lie strictly inside (0, 1)")
        self.betas = b
        self.alphas_cumprod = torch.cumprod(1.0 - b, dim=0)
        self.num_steps = int(b.numel())
        self.name = name
        self._cfg = _config if _config is not None else {"betas": b.tolist()}
        self._knots = {}
        self.t_min = 1.0 / self.num_steps
        # log ᾱ at t = k / T for k = 0 … T
        self._log_knots64 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(self.alphas_cumprod)])

    # --- constructors -----------------------------------------------------------------
    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "DiscreteDDPM":
        """Ho et al.'s linear table: ``β = linspace(beta_start, beta_end, T)``."""
        _check_table_args(num_steps, beta_start, beta_end)
        betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
        return cls(betas, name="linear", _config={"schedule": "linear", "num_steps": num_steps, "beta_start": beta_start, "beta_end": beta_end})

    @classmethod
    def scaled_linear(cls, num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> "DiscreteDDPM":
        """Latent-diffusion's table: ``β = linspace(√beta_start, √beta_end, T)²``."""
        _check_table_args(num_steps, beta_start, beta_end)
        betas = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=np.float64) ** 2
        return cls(betas, name="scaled_linear", _config={"schedule": "scaled_linear", "num_steps": num_steps, "beta_start": beta_start, "beta_end": beta_end})

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "DiscreteDDPM":
        """Nichol & Dhariwal's cosine table: ``β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), max_beta)``."""
        if not (isinstance(num_steps, int) and num_steps >= 2):
            raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
        if not (0 < max_beta < 1):
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
        if not (isinstance(s, (int, float)) and math.isfinite(s) and s >= 0):
            raise ValueError(f"s (the cosine offset) must be a finite number >= 0, got {s!r}")

        def abar(x: float) -> float:
            return math.cos((x + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta) for i in range(num_steps)]
        return cls(np.asarray(betas), name="cosine", _config={"schedule": "cosine", "num_steps": num_steps, "s": s, "max_beta": max_beta})

    # --- index mapping ----------------------------------------------------------------
    def timestep_to_t(self, timestep: Tensor) -> Tensor:
        """Integer (or fractional) DDPM index ``i ∈ [0, T−1]`` to time ``(i + 1) / T``. Shape ``(B,)``."""
        timestep = torch.as_tensor(timestep)
        dtype = torch.float64 if timestep.dtype == torch.float64 else torch.float32
        return (timestep.to(dtype) + 1.0) / self.num_steps

    def t_to_timestep(self, t: Tensor) -> Tensor:
        """Time to the (fractional) DDPM index ``t·T − 1``; exact integers on the grid. Shape ``(B,)``.

        ``t·T`` within a few ulps of an integer is that integer, so
        ``t_to_timestep(timestep_to_t(i)) == i`` exactly (``fl(fl(n/T)·T)`` alone can miss ``n``).
        """
        return _snap_to_integers(t * self.num_steps) - 1.0

    # --- path -------------------------------------------------------------------------
    def _knots_for(self, t: Tensor) -> Tensor:
        key = (t.device, t.dtype)
        if key not in self._knots:
            self._knots[key] = self._log_knots64.to(device=t.device, dtype=t.dtype)
        return self._knots[key]

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor]:
        knots = self._knots_for(t)
        # snap t·T to a knot it is within a few ulps of, so that t = timestep_to_t(i) sits exactly on
        # the knot and gets the documented right-sided slope (value unchanged, gradient dt·T kept)
        u = _snap_to_integers(t * self.num_steps)
        k = torch.clamp(torch.floor(u), 0, self.num_steps - 1).long()
        left, right = knots[k], knots[k + 1]
        slope = right - left
        return left + (u - k.to(t.dtype)) * slope, slope * self.num_steps

    def _log_abar(self, t):
        return self._segment(t)[0]

    def _alpha(self, t):
        return torch.exp(0.5 * self._log_abar(t))

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(self._log_abar(t)))

    def _d_alpha(self, t):
        log_abar, slope = self._segment(t)
        return 0.5 * slope * torch.exp(0.5 * log_abar)

    def _d_sigma(self, t):
        log_abar, slope = self._segment(t)
        return -torch.exp(log_abar) * slope / (2.0 * torch.sqrt(-torch.expm1(log_abar)))

    def _log_snr(self, t):
        log_abar = self._log_abar(t)
        return log_abar - torch.log(-torch.expm1(log_abar))

    def _t_from_log_snr(self, lam):
        knots = self._knots_for(lam)
        target = _log_sigmoid(lam)  # log ᾱ
        # knots decrease; find k with knots[k] >= target > knots[k+1]
        k = torch.searchsorted(-knots, -target.contiguous(), right=False) - 1
        k = torch.clamp(k, 0, self.num_steps - 1)
        left, right = knots[k], knots[k + 1]
        frac = torch.where(right < left, (target - left) / (right - left), torch.zeros_like(target))
        return (k.to(lam.dtype) + frac.clamp(0.0, 1.0)) / self.num_steps

    def _config(self):
        return dict(self._cfg)


def _snap_to_integers(u: Tensor) -> Tensor:
    """``u`` with entries within 4 ulps of an integer replaced by that integer; the gradient passes unchanged."""
    r = torch.round(u)
    close = (u - r).abs() <= 4.0 * torch.finfo(u.dtype).eps * u.abs().clamp_min(1.0)
    return u + torch.where(close, r - u, torch.zeros_like(u)).detach()


def _check_table_args(num_steps, beta_start, beta_end):
    if not (isinstance(num_steps, int) and num_steps >= 2):
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    if not (0 < beta_start < 1 and 0 < beta_end < 1):
        raise ValueError(f"beta_start and beta_end must lie in (0, 1), got {beta_start!r}, {beta_end!r}")
