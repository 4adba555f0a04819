"""Per-sample distance metrics between a prediction and its target: ``(B, *D) → (B,)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["squared_l2", "pseudo_huber", "METRICS", "get_metric"]


def _per_sample(diff: Tensor) -> Tensor:
    """``(B, *D) → (B, prod(D))``; explicit size so that an empty batch (B = 0) works too."""
    return diff.reshape(diff.shape[0], math.prod(diff.shape[1:]))


def squared_l2(diff: Tensor) -> Tensor:
    """Mean squared error over the non-batch dimensions of ``diff`` ``(B, *D)``. Returns ``(B,)``."""
    return _per_sample(diff).pow(2).mean(dim=1)


def pseudo_huber(diff: Tensor, c: float | None = None) -> Tensor:
    """Pseudo-Huber ``√(‖diff‖² + c²) − c`` per sample; ``c = 0.00054·√D`` by default.

    Computed as ``‖diff‖²/(√(‖diff‖² + c²) + c)`` (the same number without cancellation).

    References:
        Song & Dhariwal 2023, arXiv:2310.14189, Sec. 3.3.
    """
    flat = _per_sample(diff)
    if c is None:
        c = 0.00054 * math.sqrt(flat.shape[1])
    sq = flat.pow(2).sum(dim=1)
    if c == 0:
        return torch.sqrt(sq)
    # = √(‖d‖² + c²) − c, written without the cancellation: exactly 0 at d = 0, accurate when ‖d‖ ≪ c
    return sq / (torch.sqrt(sq + c * c) + c)


METRICS = {"l2": squared_l2, "pseudo_huber": pseudo_huber}


def get_metric(metric):
    """A metric by name (``"l2"``, ``"pseudo_huber"``) or a callable ``(B, *D) → (B,)``."""
    if callable(metric):
        return metric
    if isinstance(metric, str) and metric in METRICS:
        return METRICS[metric]
    raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(METRICS)} or a callable")
