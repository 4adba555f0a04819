"""Argument checks and the one broadcasting helper.

Every public function of flowgen takes ``t`` of shape ``(B,)`` and data of shape
``(B, *D)``. Per-sample coefficients are ``(B,)`` tensors; :func:`expand_like` is
the single place where they are reshaped to broadcast against ``(B, *D)``.
"""

from __future__ import annotations

import contextvars
import math
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = [
    "expand_like",
    "coefficient_dtype",
    "check_tensor",
    "check_time",
    "check_finite",
    "check_same_shape",
    "check_model_call",
    "check_positive",
    "value_checks",
    "checks_values",
]

_VALUE_CHECKS = contextvars.ContextVar("flowgen_value_checks", default=True)


@contextmanager
def value_checks(enabled: bool):
    """Turn off (``enabled=False``) the argument checks that read tensor values back to the host.

    Inside, :func:`check_finite`, the value part of :func:`check_time` and the other checks that
    consult :func:`checks_values` (time order, singular evaluation times, a loss's finiteness)
    skip their reads; shapes, dtypes and devices are still checked. On a GPU each such read is a
    device synchronisation, so the distillation modules train inside ``value_checks(False)`` on
    accelerators, where their inputs come from checked CPU grids and a non-finite loss is caught
    on the device instead (the run stops naming the step). Nothing changes where it is not used.
    """
    token = _VALUE_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def checks_values() -> bool:
    """Whether checks that read tensor values on the host are on (see :func:`value_checks`)."""
    return _VALUE_CHECKS.get()


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
    """Raise ValueError if ``x`` holds NaN or Inf (or is a meta tensor, whose values cannot be checked)."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (a shape without values); expected a tensor with values on a real device")
    if not _VALUE_CHECKS.get():
        return x
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or Inf); expected finite values")
    return x


def check_time(t, name: str = "t", *, batch: int | None = None, low: float = 0.0, high: float = 1.0,
               device: torch.device | None = None) -> Tensor:
    """Validate a time tensor: floating, shape ``(B,)`` (``B == batch`` when given), on ``device`` (when given),
    finite, in ``[low, high]``."""
    check_tensor(t, name)
    if t.dim() != 1:
        raise ValueError(f"{name} must have shape (B,), got shape {tuple(t.shape)}")
    if batch is not None and t.shape[0] != batch:
        raise ValueError(f"{name} has batch size {t.shape[0]} but the data has batch size {batch}; expected shape ({batch},)")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on device {t.device} but the data is on {device}; expected both on the same device")
    check_finite(t, name)
    if t.numel() and _VALUE_CHECKS.get() and (bool((t < low).any()) or bool((t > high).any())):
        raise ValueError(
            f"{name} must lie in [{low}, {high}], got values in [{float(t.min()):.6g}, {float(t.max()):.6g}]"
        )
    return t


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Raise ValueError unless ``a`` and ``b`` have the same shape and live on the same device."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; expected equal shapes")
    if a.device != b.device:
        raise ValueError(f"{name_a} is on device {a.device} but {name_b} is on {b.device}; expected both on the same device")


def check_batch(x, name: str) -> Tensor:
    """Validate a batch tensor ``(B, *D)``: floating, at least 1-D, non-empty batch dimension allowed."""
    check_tensor(x, name)
    if x.dim() < 1:
        raise ValueError(f"{name} must have shape (B, *D) with a batch dimension, got a scalar")
    return x


def check_model_call(x_t, t, *, low: float = 0.0, high: float = 1.0) -> None:
    """Checks for a model-like call ``f(x_t (B, *D), t (B,))`` that runs in training and sampling loops.

    Types, shapes and devices are always checked; the values of ``t`` (finite, in ``[low, high]``) only
    on the CPU, where reading them costs no device synchronisation. ``x_t``'s values are not checked
    (NaN in, NaN out), as for the networks of :mod:`flowgen.nn`.
    """
    check_batch(x_t, "x_t")
    check_tensor(t, "t")
    if t.dim() != 1 or t.shape[0] != x_t.shape[0]:
        raise ValueError(f"t must have shape ({x_t.shape[0]},) to match x_t {tuple(x_t.shape)}, got {tuple(t.shape)}")
    if t.device != x_t.device:
        raise ValueError(f"t is on device {t.device} but x_t is on {x_t.device}; expected both on the same device")
    if t.device.type == "cpu":
        check_time(t, "t", low=low, high=high)


def check_positive(value, name: str) -> float:
    """A finite real number ``> 0`` (bools refused); raise ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
