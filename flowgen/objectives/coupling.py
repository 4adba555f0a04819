r"""Couplings between a data batch and a noise batch: ``coupling(data, noise) → noise'``.

A coupling reorders (or resamples) the noise so that ``noise'[i]`` is paired with
``data[i]``; data and any condition stay in place.

* :class:`IndependentCoupling` — the noise as drawn.
* :class:`ExactOTCoupling` — minibatch optimal transport for the squared Euclidean cost.
  With uniform weights and equal batch sizes the optimal plan is a permutation
  (Birkhoff–von Neumann), found exactly on the CPU by :func:`flowgen._ot.assignment` (POT's network
  simplex; scipy's linear assignment for small batches).
* :class:`SinkhornCoupling` — entropic OT solved by log-domain Sinkhorn iterations on the
  tensors' device; each data point draws its partner from its row of the plan.

References:
    Tong et al. 2023, arXiv:2302.00482 (OT-CFM); Pooladian et al. 2023, arXiv:2304.14772;
    Cuturi 2013, arXiv:1306.0895 (Sinkhorn).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .._ot import assignment
from .._validation import check_finite
from .._random import rand

__all__ = ["Coupling", "IndependentCoupling", "ExactOTCoupling", "SinkhornCoupling", "get_coupling", "pairwise_sq_dist"]


def pairwise_sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ``(B, B')`` between the rows of flattened ``a (B, *D)`` and ``b (B', *D)``."""
    a2, b2 = a.reshape(a.shape[0], math.prod(a.shape[1:])), b.reshape(b.shape[0], math.prod(b.shape[1:]))
    return torch.cdist(a2, b2).pow(2)


def _plan_cost(data: Tensor, noise: Tensor) -> Tensor:
    """The squared-distance cost ``(B, B)`` in float32, divided by a common scale.

    Both optimal-transport plans are invariant to a common scale of the cost (the assignment, and
    Sinkhorn's kernel ``−cost/(reg·mean cost)``), and dividing the points by their largest magnitude
    keeps the squares from overflowing float32 for data of large scale.
    """
    a, b = data.detach().float(), noise.detach().float()
    scale = torch.maximum(a.abs().amax(), b.abs().amax()).clamp_min(1e-30) if a.numel() and b.numel() else 1.0
    return pairwise_sq_dist(a / scale, b / scale)


def _refuse_non_finite(data: Tensor, noise: Tensor) -> None:
    """Raise for a non-finite cost or plan, naming ``data`` or ``noise`` when one holds NaN/Inf.

    Called where the couplings read their cost or plan back to the host anyway (no extra device
    sync on the training path); NaN/Inf points would otherwise give an arbitrary pairing.
    """
    check_finite(data, "data")
    check_finite(noise, "noise")
    raise ValueError("the optimal-transport cost or plan of data and noise is not finite")


class Coupling:
    """Base class: ``coupling(data, noise, generator=None) → noise`` re-paired with ``data``."""

    def __call__(self, data: Tensor, noise: Tensor, generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class IndependentCoupling(Coupling):
    """The independent coupling: noise unchanged."""

    def __call__(self, data, noise, generator=None):
        return noise


class ExactOTCoupling(Coupling):
    """Exact minibatch OT: the permutation of ``noise`` minimising ``Σ_i ‖data_i − noise_π(i)‖²``."""

    def __call__(self, data, noise, generator=None):
        cost = _plan_cost(data, noise).cpu().numpy()
        if not np.isfinite(cost).all():
            _refuse_non_finite(data, noise)
        cols = assignment(cost)
        return noise[torch.as_tensor(cols, device=noise.device)]


class SinkhornCoupling(Coupling):
    """Entropic minibatch OT by Sinkhorn scaling; partners drawn from the plan's rows.

    The kernel ``K = exp(−cost/(reg·mean cost))`` is shifted so that every row and every column
    holds an entry equal to 1 (a diagonal rescaling, which Sinkhorn's scalings absorb exactly), so
    no row or column underflows to zero. The scalings are iterated as matrix–vector products —
    far cheaper than log-domain updates — in float64 on the CPU and float32 on accelerators.

    Args:
        reg: entropic regularisation, relative to the mean pairwise cost (smaller is closer to exact OT).
        max_iter: iteration cap.
        tol: stop when the row marginals are off by less than this, relative (checked every 10
            iterations and at the last; the column marginals are exact after each iteration).
    """

    def __init__(self, reg: float = 0.05, max_iter: int = 200, tol: float = 1e-3):
        if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
            raise ValueError(f"reg must be > 0 and finite, got {reg!r}")
        if not (isinstance(max_iter, int) and max_iter >= 1):
            raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
        self.reg, self.max_iter, self.tol = float(reg), max_iter, float(tol)

    def _scaled_plan(self, data: Tensor, noise: Tensor) -> Tensor:
        """The entropic plan times ``n`` (rows sum to 1): ``diag(a) K diag(b)`` with ``a = 1/(K b)``, ``b = 1/(Kᵀ a)``.

        Dropping the marginals' constant ``1/n`` from the scalings leaves each half-iteration one
        matrix–vector product and one reciprocal (two kernels on a GPU); the scalings stay positive
        and finite because every row and column of ``K`` holds a 1.
        """
        cost = _plan_cost(data, noise)
        dtype = torch.float64 if cost.device.type == "cpu" else torch.float32
        c = cost.to(dtype) / (self.reg * cost.mean().to(dtype).clamp_min(1e-30))
        c = c - c.amin(dim=1, keepdim=True)
        c = c - c.amin(dim=0, keepdim=True)
        kernel = torch.exp_(c.neg_())
        kernel_t = kernel.T
        b = torch.ones(kernel.shape[1], dtype=dtype, device=kernel.device)
        for i in range(self.max_iter):
            a = torch.mv(kernel, b).reciprocal_()
            b = torch.mv(kernel_t, a).reciprocal_()
            if (i + 1) % 10 == 0 or i + 1 == self.max_iter:
                err = float((torch.mv(kernel, b).mul_(a).sub_(1)).abs().max())
                if not math.isfinite(err):  # NaN/Inf points: caught at the first convergence check
                    _refuse_non_finite(data, noise)
                if err < self.tol:
                    break
        return kernel.mul_(a[:, None]).mul_(b[None, :])

    def plan(self, data: Tensor, noise: Tensor) -> Tensor:
        """Log of the entropic plan ``(B, B)`` with uniform marginals (``-inf`` where it underflows)."""
        return torch.log(self._scaled_plan(data, noise)) - math.log(data.shape[0])

    def __call__(self, data, noise, generator=None):
        plan = self._scaled_plan(data, noise)
        # inverse-CDF draw of one partner per row (torch.multinomial is ~20x slower here)
        cdf = plan.cumsum(dim=1)
        u = rand((plan.shape[0], 1), generator=generator, dtype=plan.dtype, device=plan.device) * cdf[:, -1:]
        cols = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_max(plan.shape[1] - 1)
        return noise[cols]


_COUPLINGS = {"independent": IndependentCoupling, "ot": ExactOTCoupling, "exact_ot": ExactOTCoupling, "sinkhorn": SinkhornCoupling}


def get_coupling(coupling) -> Coupling:
    """A :class:`Coupling` from an instance or a name (``independent``, ``ot``, ``sinkhorn``)."""
    if isinstance(coupling, Coupling):
        return coupling
    if isinstance(coupling, str) and coupling.lower() in _COUPLINGS:
        return _COUPLINGS[coupling.lower()]()
    raise ValueError(f"unknown coupling {coupling!r}; expected a Coupling or one of {sorted(_COUPLINGS)}")
