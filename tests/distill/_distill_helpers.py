"""Shared fixtures for the distillation tests: paths, a random linear teacher, exact oracles."""

from __future__ import annotations

import torch
from torch import nn

from flowgen.paths import EDM, VP, AffinePath, Cosine, DiscreteDDPM, RectifiedFlow

F64 = torch.float64

#: name → factory of one path of every family (small DDPM tables keep the tests fast).
PATHS = {
    "rf": lambda: RectifiedFlow(),
    "rf_sigma_min": lambda: RectifiedFlow(sigma_min=0.01),
    "cosine": lambda: Cosine(),
    "vp": lambda: VP(),
    "edm": lambda: EDM(),
    "ddpm_linear": lambda: DiscreteDDPM.linear(num_steps=100),
    "ddpm_cosine": lambda: DiscreteDDPM.cosine(num_steps=100),
    "affine": lambda: AffinePath(alpha=lambda t: 1 - t**2, sigma=lambda t: t, t_min=0.0, t_max=0.99),
}

PREDICTIONS = ["data", "noise", "velocity", "v", "score"]


class RandomLinearTeacher(nn.Module):
    """``pred(x_t, t) = A(t) x_t + b(t)`` with ``A(t) = A0 + t A1 + t² A2`` and ``b(t) = b0 + sin(3t) b1``.

    Affine in ``x_t`` with smooth time-dependent coefficients: DDIM steps of it have no closed
    form that the code under test could special-case, yet everything is exact in float64.
    """

    def __init__(self, dim: int, *, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(3, dim, dim, generator=g, dtype=F64) / dim**0.5, requires_grad=False)
        self.b = nn.Parameter(torch.randn(2, dim, generator=g, dtype=F64), requires_grad=False)
        self.calls = 0

    def forward(self, x_t, t, cond=None):
        self.calls += 1
        t = t.to(F64)[:, None, None]
        A = self.A[0] + t * self.A[1] + t * t * self.A[2]
        b = self.b[0] + torch.sin(3 * t[:, :, 0]) * self.b[1]
        return ((A @ x_t.to(F64)[:, :, None])[:, :, 0] + b).to(x_t.dtype)


class ExactConsistency(nn.Module):
    """The exact consistency function of Gaussian data: ``f(x, t) = flow_map(x, t → t_min)``."""

    def __init__(self, gauss, path, t_min: float):
        super().__init__()
        self.gauss, self.path, self.t_min = gauss, path, float(t_min)

    def forward(self, x_t, t, cond=None):
        return self.gauss.flow_map(x_t, t=t, s=torch.full_like(t, self.t_min), path=self.path)
