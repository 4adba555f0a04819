r"""What a network predicts, and exact conversions between predictions through one hub.

Every prediction is an affine function of ``(data, noise)`` given ``x_t = α·data + σ·noise``:

=============  ===============================  ==========================================
Prediction     definition                       (data, noise) from the prediction ``p``
=============  ===============================  ==========================================
``DATA``       ``data``                         ``data = p``, ``noise = (x − α p)/σ``
``NOISE``      ``noise`` (ε)                    ``data = (x − σ p)/α``, ``noise = p``
``VELOCITY``   ``α'·data + σ'·noise``           ``data = (σ' x − σ p)/Δ``, ``noise = (α p − α' x)/Δ``
``V``          ``α·noise − σ·data``             ``data = (α x − σ p)/(α²+σ²)``, ``noise = (σ x + α p)/(α²+σ²)``
``SCORE``      ``−noise/σ`` (∇ log p(x_t))       ``noise = −σ p``, ``data = (x + σ² p)/α``
=============  ===============================  ==========================================

with ``Δ = α σ' − σ α' = −½ α σ λ'(t) > 0``. :func:`convert` goes ``src → (data, noise) → dst``,
so a new prediction type needs two formulas, not one per pair.

Singular points (where a conversion divides by zero):

* from ``DATA``: σ = 0 (t = 0 on paths with σ(0) = 0) — the noise is not determined;
* from ``NOISE`` or ``SCORE``: α = 0 (t = 1 on rectified flow and cosine) — the data is not determined;
* to ``SCORE``: σ = 0;
* from ``VELOCITY``: Δ = 0 (only where α = 0 or σ = 0 and the other's derivative vanishes);
* from ``V``: never (α² + σ² > 0 on every valid path).

Samplers never evaluate a model at a singular point: they check the grid against
:func:`singular_at` before integrating.

References:
    Salimans & Ho 2022, arXiv:2202.00512, Appendix D (v-prediction);
    Kingma et al. 2023, arXiv:2303.00848, Appendix (conversions between objectives);
    Song et al. 2023, arXiv:2303.01469, Appendix C (boundary-condition parameterization).
"""

from __future__ import annotations

import math

from ._choice import Choice

import torch
from torch import Tensor

from ._validation import check_batch, check_finite, check_same_shape, check_time, coefficient_dtype, expand_like
from .paths.base import Path

__all__ = ["Prediction", "convert", "to_data_noise", "from_data_noise", "singular_at", "prediction_error_scale"]


class Prediction(Choice):
    """What a model predicts. ``V`` is ``α·noise − σ·data`` (the usual v on VP paths)."""

    DATA = "data"
    NOISE = "noise"
    VELOCITY = "velocity"
    V = "v"
    SCORE = "score"

    __argname__ = "prediction"

    @classmethod
    def aliases(cls) -> dict:
        return _ALIASES


_ALIASES = {"epsilon": "noise", "eps": "noise", "x0": "data", "sample": "data", "flow": "velocity", "v_prediction": "v"}


# --- the hub: coefficient-level formulas (no validation; used by samplers) -----------------
def _to_data_noise(pred: Tensor, src: Prediction, x_t: Tensor, a, s, da, ds) -> tuple[Tensor, Tensor]:
    if src is Prediction.DATA:
        return pred, (x_t - a * pred) / s
    if src is Prediction.NOISE:
        return (x_t - s * pred) / a, pred
    if src is Prediction.VELOCITY:
        det = a * ds - s * da
        return (ds * x_t - s * pred) / det, (a * pred - da * x_t) / det
    if src is Prediction.V:
        norm = a * a + s * s
        return (a * x_t - s * pred) / norm, (s * x_t + a * pred) / norm
    if src is Prediction.SCORE:
        return (x_t + s * s * pred) / a, -s * pred
    raise ValueError(f"unknown prediction {src!r}")  # pragma: no cover - enum is closed


def _from_data_noise(data: Tensor, noise: Tensor, dst: Prediction, a, s, da, ds) -> Tensor:
    if dst is Prediction.DATA:
        return data
    if dst is Prediction.NOISE:
        return noise
    if dst is Prediction.VELOCITY:
        return da * data + ds * noise
    if dst is Prediction.V:
        return a * noise - s * data
    if dst is Prediction.SCORE:
        return -noise / s
    raise ValueError(f"unknown prediction {dst!r}")  # pragma: no cover


def convert_with_coefficients(pred: Tensor, src: Prediction, dst: Prediction, x_t: Tensor, a, s, da, ds) -> Tensor:
    """:func:`convert` on pre-broadcast coefficients ``(B, 1, …)``; no checks. For samplers' inner loops."""
    if src is dst:
        return pred
    data, noise = _to_data_noise(pred, src, x_t, a, s, da, ds)
    return _from_data_noise(data, noise, dst, a, s, da, ds)


def _coefficients(path: Path, t: Tensor, like: Tensor):
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    t = t.to(coefficient_dtype(t, like))
    return tuple(expand_like(c, like) for c in (path._alpha(t), path._sigma(t), path._d_alpha(t), path._d_sigma(t)))


def _check_pair(x: Tensor, x_name: str, x_t: Tensor, t: Tensor, x_t_name: str = "x_t") -> None:
    check_batch(x, x_name)
    check_batch(x_t, x_t_name)
    check_same_shape(x, x_t, x_name, x_t_name)
    check_time(t, "t", batch=x_t.shape[0], device=x_t.device)


# --- public API ---------------------------------------------------------------------------
def _check_result(outs: tuple[Tensor, ...], inputs: tuple[tuple[str, Tensor], ...], t: Tensor, path: Path, what: str,
                  singular=None) -> None:
    """Raise ValueError naming the cause if a result holds NaN/Inf; one reduction when all is well.

    The cause is a non-finite input (named), a time where the computation divides by zero or by an
    infinite derivative (named ``t``, with α and σ there; ``singular(t64) → bool (1,)`` decides, by
    default a non-finite α, σ, α' or σ'), or else an overflow of the dtype.
    """
    ok = torch.isfinite(outs[0]).all()
    for o in outs[1:]:
        ok = ok & torch.isfinite(o).all()
    if bool(ok):
        return
    for name, x in inputs:
        check_finite(x, name)
    bad_rows = torch.zeros(t.shape[0], dtype=torch.bool, device=t.device)
    for o in outs:
        bad_rows |= ~torch.isfinite(o.reshape(o.shape[0], -1)).all(dim=1)
    i = int(bad_rows.nonzero()[0, 0])
    ti = t[i : i + 1].detach().to(torch.float64)
    a, s, da, ds = (float(c[0]) for c in (path._alpha(ti), path._sigma(ti), path._d_alpha(ti), path._d_sigma(ti)))
    coefs = (a, s, da, ds)
    is_singular = any(not math.isfinite(c) for c in coefs) or (singular is not None and bool(singular(ti)[0]))
    if is_singular:
        raise ValueError(
            f"{what} is singular at t={float(ti[0]):.6g} on {type(path).__name__} (alpha={a:.4g}, sigma={s:.4g}, "
            f"alpha'={da:.4g}, sigma'={ds:.4g}): it divides by zero or by an infinite derivative there; "
            f"use t inside [t_min, t_max] = [{path.t_min:.6g}, {path.t_max:.6g}] away from the singular end"
        )
    names = ", ".join(name for name, _ in inputs)
    raise ValueError(
        f"{what} overflowed in {outs[0].dtype} at t={float(ti[0]):.6g}: {names} are finite but too large for it; "
        "rescale them or compute in a wider dtype"
    )


def _target_singular(path: Path, t: Tensor, dst: Prediction) -> Tensor:
    """Where the ``dst`` target ``from_data_noise`` is infinite: the score at ``σ = 0``, the velocity where a derivative diverges."""
    if dst is Prediction.SCORE:
        return path._sigma(t) == 0
    if dst is Prediction.VELOCITY:
        return ~(torch.isfinite(path._d_alpha(t)) & torch.isfinite(path._d_sigma(t)))
    return torch.zeros_like(t, dtype=torch.bool)


def to_data_noise(pred: Tensor, *, src, x_t: Tensor, t: Tensor, path: Path) -> tuple[Tensor, Tensor]:
    """Recover ``(data, noise)`` implied by a prediction at ``x_t``.

    Args:
        pred: ``(B, *D)`` model output of kind ``src``.
        src: :class:`Prediction` (or its string value).
        x_t: ``(B, *D)`` the point the prediction was made at.
        t: ``(B,)`` times in ``[0, 1]``.
        path: the path ``x_t`` lies on.

    Returns:
        ``(data, noise)``, each ``(B, *D)`` in ``pred``'s dtype.

    Raises:
        ValueError: bad shapes or ``t``, NaN/Inf in ``pred`` or ``x_t``, or a ``t`` where the
            conversion is singular (see :func:`singular_at`).
    """
    src = Prediction.parse(src, "src")
    _check_pair(pred, "pred", x_t, t)
    coefs = _coefficients(path, t, pred)
    data, noise = _to_data_noise(pred, src, x_t, *coefs)
    data, noise = data.to(pred.dtype), noise.to(pred.dtype)
    _check_result((data, noise), (("pred", pred), ("x_t", x_t)), t, path, f"the conversion from {src.value!r} to (data, noise)",
                  lambda tt: _singular_at(path, tt, src, Prediction.DATA) | _singular_at(path, tt, src, Prediction.NOISE))
    return data, noise


def from_data_noise(*, data: Tensor, noise: Tensor, dst, t: Tensor, path: Path) -> Tensor:
    """The value of prediction ``dst`` for given ``data`` and ``noise`` at ``t``: a training target. ``(B, *D)``.

    Raises:
        ValueError: bad shapes or ``t``, NaN/Inf in ``data`` or ``noise``, or a ``t`` where ``dst``
            is infinite (the score at ``σ = 0``, the velocity where a derivative diverges).
    """
    dst = Prediction.parse(dst, "dst")
    _check_pair(data, "data", noise, t, "noise")
    coefs = _coefficients(path, t, data)
    out = _from_data_noise(data, noise, dst, *coefs).to(data.dtype)
    _check_result((out,), (("data", data), ("noise", noise)), t, path, f"the {dst.value!r} target",
                  lambda tt: _target_singular(path, tt, dst))
    return out


def convert(pred: Tensor, *, src, dst, x_t: Tensor, t: Tensor, path: Path) -> Tensor:
    """Convert a prediction of kind ``src`` at ``(x_t, t)`` into kind ``dst``.

    Args:
        pred: ``(B, *D)`` prediction of kind ``src``.
        src, dst: :class:`Prediction` members (or their string values).
        x_t: ``(B, *D)``.
        t: ``(B,)`` in ``[0, 1]``.
        path: the path.

    Returns:
        ``(B, *D)`` in ``pred``'s dtype. Exact (closed form) away from the singular points
        listed in the module docstring; see :func:`singular_at`.

    Raises:
        ValueError: bad shapes or ``t``, NaN/Inf in ``pred`` or ``x_t``, or a ``t`` where the
            conversion is singular (the message names ``t`` and the path's α, σ there).
    """
    src, dst = Prediction.parse(src, "src"), Prediction.parse(dst, "dst")
    _check_pair(pred, "pred", x_t, t)
    if src is dst:
        check_finite(pred, "pred")
        return pred
    coefs = _coefficients(path, t, pred)
    out = convert_with_coefficients(pred, src, dst, x_t, *coefs).to(pred.dtype)
    _check_result((out,), (("pred", pred), ("x_t", x_t)), t, path, f"the conversion {src.value!r} -> {dst.value!r}",
                  lambda tt: _singular_at(path, tt, src, dst))
    return out


def singular_at(path: Path, t: Tensor, *, src, dst) -> Tensor:
    """Boolean ``(B,)``: where converting ``src → dst`` divides by zero (or by an infinite derivative).

    Args:
        path: the path.
        t: ``(B,)`` times in ``[0, 1]``.
        src, dst: :class:`Prediction` members (or their values).
    """
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    src, dst = Prediction.parse(src, "src"), Prediction.parse(dst, "dst")
    check_time(t, "t")
    return _singular_at(path, t, src, dst)


def _singular_at(path: Path, t: Tensor, src: Prediction, dst: Prediction) -> Tensor:
    """:func:`singular_at` without argument checks (samplers' precomputation on validated grids)."""
    t = t.to(coefficient_dtype(t))
    if src is dst:
        return torch.zeros_like(t, dtype=torch.bool)
    a, s = path._alpha(t), path._sigma(t)
    da, ds = path._d_alpha(t), path._d_sigma(t)
    bad = ~(torch.isfinite(a) & torch.isfinite(s))
    needs_derivative = Prediction.VELOCITY in (src, dst)
    if needs_derivative:
        bad |= ~(torch.isfinite(da) & torch.isfinite(ds))
    if src is Prediction.DATA:
        bad |= s == 0
    elif src in (Prediction.NOISE, Prediction.SCORE):
        bad |= a == 0
    elif src is Prediction.VELOCITY:
        bad |= (a * ds - s * da) == 0
    if dst is Prediction.SCORE:
        bad |= s == 0
    return bad


def prediction_error_scale(path: Path, t: Tensor, prediction) -> Tensor:
    r"""``k_P(t)²``: the factor by which a squared data-space error grows in prediction space.

    For a fixed ``x_t`` every prediction is affine in the implied data estimate, so
    ``‖p̂ − p‖² = k_P(t)² ‖d̂ − d‖²`` with

    ``DATA``: 1; ``NOISE``: α²/σ² (= SNR); ``VELOCITY``: (α' − σ'α/σ)²;
    ``V``: (α² + σ²)²/σ²; ``SCORE``: α²/σ⁴.

    Used to express loss weightings defined on the data-space error in any prediction's space.
    Returns ``(B,)``.

    References:
        Hang et al. 2023, arXiv:2303.09556, Sec. 3.4 (the same weight in ε, x0 and v form).
    """
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    prediction = Prediction.parse(prediction)
    check_time(t, "t")
    return _prediction_error_scale(path, t, prediction)


def _prediction_error_scale(path: Path, t: Tensor, prediction: Prediction) -> Tensor:
    """:func:`prediction_error_scale` without argument checks (loss weightings on validated times)."""
    t = t.to(coefficient_dtype(t))
    a, s = path._alpha(t), path._sigma(t)
    if prediction is Prediction.DATA:
        return torch.ones_like(t)
    if prediction is Prediction.NOISE:
        return (a / s) ** 2
    if prediction is Prediction.VELOCITY:
        return (path._d_alpha(t) - path._d_sigma(t) * a / s) ** 2
    if prediction is Prediction.V:
        return ((a * a + s * s) / s) ** 2
    return (a / (s * s)) ** 2
