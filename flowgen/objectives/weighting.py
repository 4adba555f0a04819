r"""Loss weightings ``w(t)``, returned in the space of the model's prediction.

Weightings other than :class:`UniformWeight` are defined on the *data-space* squared
error ``‖d̂ − d‖²`` (the convention of Hang et al. and of EDM), and converted to the
prediction's own space by dividing by :func:`~flowgen.parameterization.prediction_error_scale`.
So ``MinSNRWeight(5)`` gives ``min(SNR, 5)/SNR`` for ε-prediction, ``min(SNR, 5)`` for
data prediction and ``min(SNR, 5)/(SNR + 1)`` for v-prediction on VP paths, as in the paper.

References:
    Hang et al. 2023, arXiv:2303.09556 (min-SNR-γ); Karras et al. 2022, arXiv:2206.00364,
    Table 1 (EDM's λ(σ)); Kingma & Gao 2023, arXiv:2303.00848 (weightings as functions of λ).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..parameterization import Prediction, _prediction_error_scale
from ..paths.base import Path

__all__ = ["Weighting", "UniformWeight", "SNRWeight", "MinSNRWeight", "EDMWeight", "get_weighting"]


class Weighting:
    """Base class: ``weighting(path, t, prediction) → (B,)`` weight of the prediction-space error."""

    def data_weight(self, path: Path, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, path: Path, t: Tensor, prediction: Prediction) -> Tensor:
        return self.data_weight(path, t) / _prediction_error_scale(path, t, Prediction.parse(prediction))

    def __repr__(self):
        return f"{type(self).__name__}()"


class UniformWeight(Weighting):
    """Weight 1 on the error in the prediction's own space (DDPM's simple loss, rectified flow)."""

    def __call__(self, path, t, prediction):
        return torch.ones_like(t)


class SNRWeight(Weighting):
    """Data-space weight ``SNR(t) = α²/σ²`` (equivalent to the unweighted ε loss)."""

    def data_weight(self, path, t):
        return torch.exp(path._log_snr(t))


class MinSNRWeight(Weighting):
    """Data-space weight ``min(SNR(t), γ)``.

    Args:
        gamma: the clamp γ (the paper's default is 5).
    """

    def __init__(self, gamma: float = 5.0):
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
        self.gamma = float(gamma)

    def data_weight(self, path, t):
        return torch.clamp(torch.exp(path._log_snr(t)), max=self.gamma)

    def __repr__(self):
        return f"MinSNRWeight(gamma={self.gamma})"


class EDMWeight(Weighting):
    """EDM's ``λ(σ̃) = (σ̃² + σ_d²)/(σ̃ σ_d)²`` on the data-space error, with ``σ̃ = σ/α``."""

    def __init__(self, sigma_data: float = 0.5):
        if isinstance(sigma_data, bool) or not (isinstance(sigma_data, (int, float)) and math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data must be > 0 and finite, got {sigma_data!r}")
        self.sigma_data = float(sigma_data)

    def data_weight(self, path, t):
        s = path._sigma(t) / path._alpha(t)
        return (s * s + self.sigma_data**2) / (s * self.sigma_data) ** 2

    def __repr__(self):
        return f"EDMWeight(sigma_data={self.sigma_data})"


_WEIGHTINGS = {"uniform": UniformWeight, "snr": SNRWeight, "min_snr": MinSNRWeight, "edm": EDMWeight}


def get_weighting(weighting) -> Weighting:
    """A :class:`Weighting` from an instance or a name (``uniform``, ``snr``, ``min_snr``, ``edm``)."""
    if isinstance(weighting, Weighting):
        return weighting
    if isinstance(weighting, str) and weighting.lower() in _WEIGHTINGS:
        return _WEIGHTINGS[weighting.lower()]()
    raise ValueError(f"unknown weighting {weighting!r}; expected a Weighting or one of {sorted(_WEIGHTINGS)}")
