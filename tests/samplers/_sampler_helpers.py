"""Shared helpers for the sampler tests: paths with their intervals, exact starts, oracle models."""

from __future__ import annotations

import math

import torch

from flowgen.parameterization import Prediction
from flowgen.paths import EDM, VP, Cosine, DiscreteDDPM, RectifiedFlow
from flowgen.testing import GaussianData

F64 = torch.float64

#: name → factory; built lazily so that each test gets a fresh path.
PATH_FACTORIES = {
    "rectified_flow": RectifiedFlow,
    "cosine": Cosine,
    "vp": VP,
    "edm": EDM,
    "ddpm": lambda: DiscreteDDPM.linear(1000),
}

#: a grid that suits each path (EDM's σ spans 80 → 0.002: uniform t is a poor grid there).
NATURAL_GRID = {"rectified_flow": "uniform", "cosine": "uniform", "vp": "uniform", "edm": "karras", "ddpm": "uniform"}

PREDICTIONS = [p.value for p in Prediction]


def oracle(dim: int = 2, seed: int = 1) -> GaussianData:
    return GaussianData.random(dim, generator=torch.Generator().manual_seed(seed))


def start_time(path, prediction) -> float:
    """``path.t_max``, or 0.999 where the prediction is singular at ``t_max`` (α = 0 with a noise/score model)."""
    from flowgen.parameterization import singular_at

    t = torch.tensor([path.t_max], dtype=F64)
    bad = singular_at(path, t, src=prediction, dst=Prediction.VELOCITY) | singular_at(path, t, src=prediction, dst=Prediction.DATA)
    return 0.999 if bool(bad[0]) else path.t_max


def exact_start(orc: GaussianData, path, t: float, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` draws from the exact marginal of ``x_t`` (float64)."""
    mean, cov = orc.marginal(t, path)
    z = torch.randn(n, orc.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return mean + z @ torch.linalg.cholesky(cov).T


def exact_end(orc: GaussianData, path, x: torch.Tensor, t: float, s: float) -> torch.Tensor:
    n = x.shape[0]
    return orc.flow_map(x, t=torch.full((n,), t, dtype=F64), s=torch.full((n,), s, dtype=F64), path=path)


class ConditionalOracle(torch.nn.Module):
    """``model(x, t, cond)``: the oracle of ``oracles[cond[i]]`` for sample ``i``; counts calls and batch sizes."""

    def __init__(self, oracles, path, prediction):
        super().__init__()
        self.oracles, self.path, self.prediction = oracles, path, Prediction.parse(prediction)
        self.calls = 0
        self.batches = []

    def forward(self, x, t, cond):
        self.calls += 1
        self.batches.append(x.shape[0])
        out = torch.empty_like(x)
        for k, orc in enumerate(self.oracles):
            m = cond == k
            if bool(m.any()):
                out[m] = orc.predict(x[m], t[m], self.path, self.prediction)
        return out


def sample_stats_tolerance(cov: torch.Tensor, n: int, z: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``z``-sigma tolerances for a sample mean ``(d,)`` and a sample covariance ``(d, d)`` of ``n`` Gaussian draws.

    Var(mean_i) = Σ_ii / n; Var(cov_ij) ≈ (Σ_ii Σ_jj + Σ_ij²) / n (Wishart).
    """
    diag = cov.diagonal()
    mean_tol = z * torch.sqrt(diag / n)
    cov_tol = z * torch.sqrt((diag[:, None] * diag[None, :] + cov**2) / n)
    return mean_tol, cov_tol


def observed_order(err_coarse: float, err_fine: float) -> float:
    return math.log2(err_coarse / err_fine)
