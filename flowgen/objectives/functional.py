r"""Pure objective functions: no model, no randomness of their own.

.. math::
    \ell_i = w(t_i)\; m\big(\hat p_i − p(\text{data}_i, \text{noise}_i, t_i)\big)

where ``p`` is the target of the chosen prediction (see :mod:`flowgen.parameterization`),
``w`` a weighting and ``m`` a per-sample metric (mean squared error by default).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_batch, check_same_shape, check_time, coefficient_dtype, expand_like
from ..parameterization import Prediction, _check_result, _from_data_noise, _target_singular
from ..paths.base import Path
from .metrics import get_metric
from .weighting import UniformWeight, Weighting, get_weighting

__all__ = ["prediction_loss", "prediction_target"]


def prediction_target(*, data: Tensor, noise: Tensor, t: Tensor, path: Path, prediction) -> Tensor:
    """The regression target of ``prediction`` for given data, noise and times. ``(B, *D)``."""
    prediction = Prediction.parse(prediction)
    _check_inputs(data, noise, t, path)
    out = _target(data, noise, t, path, prediction)
    _check_result((out,), (("data", data), ("noise", noise)), t, path, f"the {prediction.value!r} target",
                  lambda tt: _target_singular(path, tt, prediction))
    return out


def _check_inputs(data, noise, t, path):
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    check_batch(data, "data")
    check_batch(noise, "noise")
    check_same_shape(data, noise, "data", "noise")
    check_time(t, "t", batch=data.shape[0], device=data.device)


def _coefficients(path, t, like):
    """``(α, σ, α', σ')`` at ``t``, each broadcast against ``like`` ``(B, *D)``."""
    return tuple(expand_like(c, like) for c in (path._alpha(t), path._sigma(t), path._d_alpha(t), path._d_sigma(t)))


def _loss_singular(path: Path, t: Tensor, prediction: Prediction, weighting: Weighting) -> Tensor:
    """Where the loss of ``prediction`` under ``weighting`` is infinite or undefined: the target, or the weight."""
    w = weighting(path, t, prediction)
    return _target_singular(path, t, prediction) | ~torch.isfinite(w)


def _target(data, noise, t, path, prediction, coefs=None):
    t = t.to(coefficient_dtype(t, data))
    coefs = _coefficients(path, t, data) if coefs is None else coefs
    return _from_data_noise(data, noise, prediction, *coefs).to(data.dtype)


def prediction_loss(
    pred: Tensor,
    *,
    data: Tensor,
    noise: Tensor,
    t: Tensor,
    path: Path,
    prediction,
    weighting: Weighting | str | None = None,
    metric="l2",
) -> Tensor:
    """Per-sample loss of a model output against the target of its prediction type.

    Args:
        pred: ``(B, *D)`` model output, of kind ``prediction``.
        data: ``(B, *D)`` clean samples.
        noise: ``(B, *D)`` the noise that made ``x_t = α(t)·data + σ(t)·noise``.
        t: ``(B,)`` times in ``[0, 1]``.
        path: the probability path.
        prediction: :class:`~flowgen.Prediction` (or its string value).
        weighting: :class:`~flowgen.objectives.Weighting` or name; uniform by default.
        metric: ``"l2"`` (mean squared error), ``"pseudo_huber"`` or a callable ``(B, *D) → (B,)``.

    Returns:
        ``(B,)`` per-sample losses (float32, or float64 for float64 input).

    Raises:
        ValueError/TypeError: naming the argument for wrong shapes, dtypes or ``t`` out of range; a
            non-finite loss is never returned: NaN/Inf in ``pred``, ``data`` or ``noise`` is named, a ``t``
            where the target or the weighting is infinite (e.g. the score at ``σ = 0``) is named with
            the path's α and σ there, and an overflow of the loss's dtype is reported as such.
    """
    prediction = Prediction.parse(prediction)
    _check_inputs(data, noise, t, path)
    check_batch(pred, "pred")
    check_same_shape(pred, data, "pred", "data")
    weighting = get_weighting(weighting or UniformWeight())
    out = _loss(pred, data, noise, t, path, prediction, weighting, get_metric(metric))
    _check_result((out,), (("pred", pred), ("data", data), ("noise", noise)), t, path,
                  f"the {prediction.value!r} loss (target or weighting)", lambda tt: _loss_singular(path, tt, prediction, weighting))
    return out


def _loss(pred, data, noise, t, path, prediction, weighting, metric, coefs=None):
    """Per-sample weighted loss; ``coefs`` are the broadcast ``(α, σ, α', σ')`` when already computed."""
    target = _target(data, noise, t, path, prediction, coefs)
    diff = pred - target
    if diff.dtype not in (torch.float32, torch.float64):
        diff = diff.float()
    per_sample = metric(diff)
    if isinstance(weighting, UniformWeight):
        return per_sample
    return weighting(path, t.to(coefficient_dtype(t, data)), prediction) * per_sample
