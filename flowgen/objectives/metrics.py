"""Per-sample distance metrics between a prediction and its target: ``(B, *D) → (B,)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["squared_l2", "pseudo_huber", "METRICS", "get_metric"]


def squared_l2(diff: Tensor) -> Tensor:
    """Mean squared error over the non-batch dimensions of ``diff`` ``(B, *D)``. Returns ``(B,)``."""
    return diff.reshape(diff.shape[0], -1).pow(2).mean(dim=1)


def pseudo_huber(diff: Tensor, c: float | None = None) -> Tensor:
    """Pseudo-Huber ``√(‖diff‖² + c²) − c`` per sample; ``c = 0.00054·√D`` by default.

    References:
        Song & Dhariwal 2023, arXiv:2310.14189, Sec. 3.3.
    """
    flat = diff.reshape(diff.shape[0], -1)
    if c is None:
        c = 0.00054 * math.sqrt(flat.shape[1])
    return torch.sqrt(flat.pow(2).sum(dim=1) + c * c) - c


METRICS = {"l2": squared_l2, "pseudo_huber": pseudo_huber}


def get_metric(metric):
    """A metric by name (``"l2"``, ``"pseudo_huber"``) or a callable ``(B, *D) → (B,)``."""
    if callable(metric):
        return metric
    if metric in METRICS:
        return METRICS[metric]
    raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(METRICS)} or a callable")
