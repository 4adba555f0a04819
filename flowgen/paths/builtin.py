r"""Closed-form paths: rectified flow, cosine, the continuous VP-SDE and EDM's VE path.

Each class gives α, σ and their exact derivatives in closed form, and a closed-form
inverse of the log-SNR.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Path, _log_sigmoid

__all__ = ["RectifiedFlow", "Cosine", "VP", "EDM"]


def _positive(value: float, name: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class RectifiedFlow(Path):
    r"""Linear interpolation path ``α = 1 − t``, ``σ = σ_min + (1 − σ_min)·t``.

    With ``sigma_min = 0`` (default) this is rectified flow / the OT path of flow
    matching, ``x_t = (1 − t)·data + t·noise``, velocity ``noise − data``. With
    ``sigma_min > 0`` it is the conditional OT path of Lipman et al. (their eq. 20–22
    with time reversed), whose ``t = 0`` marginal is data blurred by ``σ_min``.

    λ is ``+inf`` at ``t = 0`` when ``sigma_min = 0`` and ``-inf`` at ``t = 1``.

    References:
        Liu et al. 2022, arXiv:2209.03003, eq. (1); Lipman et al. 2022, arXiv:2210.02747, eq. (20)–(22).
    """

    def __init__(self, sigma_min: float = 0.0):
        if not (isinstance(sigma_min, (int, float)) and 0.0 <= sigma_min < 1.0):
            raise ValueError(f"sigma_min must be a number in [0, 1), got {sigma_min!r}")
        self.sigma_min = float(sigma_min)

    def _alpha(self, t):
        return 1.0 - t

    def _sigma(self, t):
        if self.sigma_min == 0.0:
            return t
        return self.sigma_min + (1.0 - self.sigma_min) * t

    def _d_alpha(self, t):
        return torch.full_like(t, -1.0)

    def _d_sigma(self, t):
        return torch.full_like(t, 1.0 - self.sigma_min)

    def _t_from_log_snr(self, lam):
        # (1 − t) / (σ_min + (1 − σ_min) t) = r  with  r = exp(λ/2)
        r = torch.exp(0.5 * lam)
        return (1.0 - r * self.sigma_min) / (1.0 + r * (1.0 - self.sigma_min))

    def _config(self):
        return {"sigma_min": self.sigma_min}


class Cosine(Path):
    r"""Trigonometric path ``α = cos(πt/2)``, ``σ = sin(πt/2)`` (variance preserving).

    α is computed as ``sin(π(1 − t)/2)`` so that both ends are exact: ``α(1) = 0``.

    References:
        Nichol & Dhariwal 2021, arXiv:2102.09672 (cosine schedule, with s = 0);
        Albergo & Vanden-Eijnden 2022, arXiv:2209.15571 (trigonometric interpolant).
    """

    def _alpha(self, t):
        return torch.sin(0.5 * math.pi * (1.0 - t))

    def _sigma(self, t):
        return torch.sin(0.5 * math.pi * t)

    def _d_alpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def _d_sigma(self, t):
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - t))

    def _t_from_log_snr(self, lam):
        # tan(πt/2) = σ/α = exp(−λ/2)
        return (2.0 / math.pi) * torch.atan(torch.exp(-0.5 * lam))


class VP(Path):
    r"""The continuous variance-preserving SDE path of Song et al.

    ``log α(t) = −¼ t² (β_max − β_min) − ½ t β_min``, ``σ = √(1 − α²)``.
    ``σ'(0)`` is infinite, so generation stops at ``t_min = 1e-3`` (Song et al.'s ε).

    References:
        Song et al. 2021, arXiv:2011.13456, eq. (33) and Appendix C.
    """

    t_min = 1e-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = _positive(beta_min, "beta_min")
        self.beta_max = _positive(beta_max, "beta_max")
        if self.beta_max <= self.beta_min:
            raise ValueError(f"beta_max must exceed beta_min, got beta_min={beta_min}, beta_max={beta_max}")

    def _log_alpha(self, t):
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _alpha(self, t):
        return torch.exp(self._log_alpha(t))

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self._log_alpha(t)))

    def _d_alpha(self, t):
        return -0.5 * self._beta(t) * self._alpha(t)

    def _d_sigma(self, t):
        a2 = torch.exp(2.0 * self._log_alpha(t))
        return 0.5 * self._beta(t) * a2 / self._sigma(t)

    def _log_snr(self, t):
        la2 = 2.0 * self._log_alpha(t)
        return la2 - torch.log(-torch.expm1(la2))

    def _t_from_log_snr(self, lam):
        # log α² = logsigmoid(λ) = −½ Δβ t² − β_min t  → positive root of the quadratic
        db = self.beta_max - self.beta_min
        c = _log_sigmoid(lam)
        return (-self.beta_min + torch.sqrt(self.beta_min**2 - 2.0 * db * c)) / db

    def _config(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}


class EDM(Path):
    r"""EDM's variance-exploding path: ``α = 1``, ``σ(t) = σ_max · t``.

    EDM's own time is ``σ`` itself (its eq. 4 with ``σ(t) = t``); flowgen rescales it
    to ``t = σ / σ_max`` so that ``t ∈ [0, 1]``. Generation runs from ``t = 1``
    (σ = σ_max) to ``t_min = σ_min / σ_max``. ``sigma_data`` is the data standard
    deviation used by EDM's preconditioning and loss weighting.

    References:
        Karras et al. 2022, arXiv:2206.00364, Table 1.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        self.sigma_min = _positive(sigma_min, "sigma_min")
        self.sigma_max = _positive(sigma_max, "sigma_max")
        self.sigma_data = _positive(sigma_data, "sigma_data")
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must exceed sigma_min, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.t_min = self.sigma_min / self.sigma_max

    def _alpha(self, t):
        return torch.ones_like(t)

    def _sigma(self, t):
        return self.sigma_max * t

    def _d_alpha(self, t):
        return torch.zeros_like(t)

    def _d_sigma(self, t):
        return torch.full_like(t, self.sigma_max)

    def _t_from_log_snr(self, lam):
        return torch.exp(-0.5 * lam) / self.sigma_max

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """EDM's noise level σ ``(B,)`` to flowgen time ``σ / σ_max``."""
        return sigma / self.sigma_max

    def _config(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "sigma_data": self.sigma_data}
