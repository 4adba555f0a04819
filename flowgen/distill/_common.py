"""Shared pieces of the distillers: teacher metadata, argument checks, the loss output record.

Nothing here draws random numbers on its own; the distiller objects pass their
``torch.Generator`` down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._random import randint as _randint
from .._random import randn as _randn
from .._validation import check_batch, check_finite, checks_values, expand_like
from ..parameterization import Prediction
from ..paths.base import Path

__all__ = ["DistillOutput", "resolve_teacher", "check_data", "check_int", "check_probability", "check_model", "check_loss"]


@dataclass(frozen=True)
class DistillOutput:
    """What one evaluation of a distillation loss produced.

    Attributes:
        loss: scalar, the mean of ``per_sample`` (differentiable w.r.t. the student).
        per_sample: ``(B,)`` per-sample losses.
        t: ``(B,)`` the times the student was evaluated at.
        x_t: ``(B, *D)`` the student's input.
        pred: ``(B, *D)`` the student's output (its own prediction kind, or the consistency
            function's value).
        target: ``(B, *D)`` the regression target (no gradient).
    """

    loss: Tensor
    per_sample: Tensor
    t: Tensor
    x_t: Tensor
    pred: Tensor
    target: Tensor


def resolve_teacher(teacher, path, prediction, *, what: str = "teacher") -> tuple[Path, Prediction]:
    """The path and prediction a teacher was trained with.

    Explicit ``path``/``prediction`` arguments win; otherwise the teacher's ``.path`` and
    ``.prediction`` attributes are used (flowgen's oracle models and wrapped checkpoints carry them).

    Raises:
        TypeError: if ``teacher`` is not callable.
        ValueError: if the path or the prediction is known neither way, naming what is missing.
    """
    if not callable(teacher):
        raise TypeError(f"{what} must be callable as {what}(x_t, t[, cond]), got {type(teacher).__name__}")
    if path is None:
        path = getattr(teacher, "path", None)
        if not isinstance(path, Path):
            raise ValueError(
                f"{what} has no path metadata: pass path=<the flowgen Path it was trained on> "
                f"(or give the {what} a .path attribute, as checkpoints loaded by flowgen do)"
            )
    elif not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    if prediction is None:
        prediction = getattr(teacher, "prediction", None)
        if prediction is None:
            raise ValueError(
                f"{what} has no prediction metadata: pass {what}_prediction=<what it predicts, e.g. 'noise', "
                f"'velocity', 'data', 'v'> (or give the {what} a .prediction attribute)"
            )
    return path, Prediction.parse(prediction, f"{what}_prediction")


def check_data(data, name: str = "data", *, event_shape: tuple | None = None) -> Tensor:
    """Validate a data batch ``(B, *D)`` with at least one event dimension, finite values.

    Raises:
        TypeError: not a floating tensor.
        ValueError: a scalar or ``(B,)`` tensor, an empty batch, the wrong event shape, or NaN/Inf.
    """
    check_batch(data, name)
    if data.dim() < 2:
        raise ValueError(
            f"{name} must have shape (B, *D) with at least one event dimension, got shape {tuple(data.shape)}; "
            "for scalar data use shape (B, 1)"
        )
    if data.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(data.shape)}); expected at least one sample")
    if event_shape is not None and tuple(data.shape[1:]) != tuple(event_shape):
        raise ValueError(
            f"{name} has per-sample shape {tuple(data.shape[1:])}, expected {tuple(event_shape)} "
            f"(full shape (B, {', '.join(map(str, event_shape))}))"
        )
    check_finite(data, name)
    return data


def noised(data: Tensor, noise: Tensor, t: Tensor, path: Path) -> Tensor:
    """``x_t = α(t)·data + σ(t)·noise`` ``(B, *D)``, coefficients in float64 cast to ``data``'s dtype."""
    t64 = t.detach().to(torch.float64)
    a, s = path._alpha(t64), path._sigma(t64)
    return expand_like(a, data).to(data.dtype) * data + expand_like(s, data).to(data.dtype) * noise


def check_int(value, name: str, *, low: int = 1) -> int:
    """An ``int`` ``>= low`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_probability(value, name: str, *, allow_one: bool = True) -> float:
    """A finite number in ``[0, 1]`` (or ``[0, 1)``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value!r}")
    if not (0.0 <= value <= 1.0) or (not allow_one and value == 1.0):
        raise ValueError(f"{name} must lie in [0, {'1]' if allow_one else '1)'}, got {value!r}")
    return float(value)


def time_dtype(x: Tensor) -> torch.dtype:
    """Times are float64 for float64 states, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def randn(shape, *, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise of ``shape`` on ``like``'s device and in its dtype, from ``generator``.

    The generator may live on the CPU while ``like`` is on an accelerator: the noise is then
    drawn on the CPU and moved, so a CPU generator gives the same numbers on every device.
    """
    return _randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def randint(high: int, size: int, *, device, generator: torch.Generator | None) -> Tensor:
    """Uniform integers in ``{0 … high − 1}`` ``(size,)``, drawn on the generator's device, then moved."""
    return _randint(high, (size,), generator=generator, device=device)


def check_model(model, name: str) -> None:
    """Raise TypeError unless ``model`` is callable as ``model(x_t, t[, cond])`` (the error names ``name``)."""
    if not callable(model):
        raise TypeError(f"{name} must be callable as {name}(x_t, t[, cond]), got {type(model).__name__}")


def check_loss(per_sample: Tensor, outputs: tuple[Tensor, ...], inputs: tuple[tuple[str, Tensor], ...], t: Tensor, path: Path,
               what: str, singular=None) -> None:
    """One reduction on a distillation loss; if it is not finite, say why, unless a network caused it.

    A non-finite network output (``outputs``: the student's prediction, the target network's value)
    gives a non-finite loss, returned as is for the training loop to stop (naming the step) or skip.
    Otherwise the cause is an input: NaN/Inf in one of ``inputs`` (named), a ``t`` where the target or
    the weighting is infinite (``singular(t64)``; named with α and σ there), or an overflow — each a ValueError.
    """
    if not checks_values() or bool(torch.isfinite(per_sample).all()):
        return
    for out in outputs:
        if not bool(torch.isfinite(out).all()):
            return
    from ..parameterization import _check_result

    _check_result((per_sample,), inputs, t, path, what, singular)
