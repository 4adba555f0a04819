"""Argument checks and the one broadcasting helper.

Every public function of flowgen takes ``t`` of shape ``(B,)`` and data of shape
``(B, *D)``. Per-sample coefficients are ``(B,)`` tensors; :func:`expand_like` is
the single place where they are reshaped to broadcast against ``(B, *D)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "expand_like",
    "coefficient_dtype",
    "check_tensor",
    "check_time",
    "check_finite",
    "check_same_shape",
]


def expand_like(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient ``(B,)`` to ``(B, 1, ..., 1)`` for ``x`` of shape ``(B, *D)``."""
    return coef.reshape(coef.shape[0], *([1] * (x.dim() - 1)))


def coefficient_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype in which schedule coefficients are computed: float64 if any input is float64, else float32."""
    for x in tensors:
        if x is not None and x.dtype == torch.float64:
            return torch.float64
    return torch.float32


def check_tensor(x, name: str) -> Tensor:
    """Raise TypeError unless ``x`` is a floating-point tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_finite(x: Tensor, name: str) -> Tensor:
    """Raise ValueError if ``x`` holds NaN or Inf."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or Inf); expected finite values")
    return x


def check_time(t, name: str = "t", *, batch: int | None = None, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Validate a time tensor: floating, shape ``(B,)`` (``B == batch`` when given), finite, in ``[low, high]``."""
    check_tensor(t, name)
    if t.dim() != 1:
        raise ValueError(f"{name} must have shape (B,), got shape {tuple(t.shape)}")
    if batch is not None and t.shape[0] != batch:
        raise ValueError(f"{name} has batch size {t.shape[0]} but the data has batch size {batch}; expected shape ({batch},)")
    check_finite(t, name)
    if t.numel() and (bool((t < low).any()) or bool((t > high).any())):
        raise ValueError(
            f"{name} must lie in [{low}, {high}], got values in [{float(t.min()):.6g}, {float(t.max()):.6g}]"
        )
    return t


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Raise ValueError unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; expected equal shapes")


def check_batch(x, name: str) -> Tensor:
    """Validate a batch tensor ``(B, *D)``: floating, at least 1-D, non-empty batch dimension allowed."""
    check_tensor(x, name)
    if x.dim() < 1:
        raise ValueError(f"{name} must have shape (B, *D) with a batch dimension, got a scalar")
    return x
