r"""One adapter from any model to any prediction, with guidance and honest NFE counting.

A model is a callable ``model(x_t, t)`` or ``model(x_t, t, cond)`` returning a prediction of
kind ``prediction`` (:class:`~flowgen.parameterization.Prediction`) with the shape of ``x_t``;
``t`` is ``(B,)``. Every conversion between predictions is affine in ``(x_t, pred)`` for a fixed
``t`` (see :mod:`flowgen.parameterization`), so this module reduces each to two coefficients

.. math::
    \text{target}(x_t, t) = c_x(t)\,x_t + c_p(t)\,\text{pred}(x_t, t),

obtained from :func:`~flowgen.parameterization.convert_with_coefficients` applied to the basis
``(x_t, pred) = (1, 0)`` and ``(0, 1)``. Samplers precompute ``c_x, c_p`` for their grid once,
so a step costs the model call and one or two fused tensor operations.

Classifier-free guidance runs the conditional and the null-conditional pass in ONE batched call
on ``cat([x, x])`` with ``cat([cond, null_cond])`` and combines them as
``pred = pred_uncond + w·(pred_cond − pred_uncond)``; since the conversion is affine in ``pred``
for a fixed ``x_t``, this is the same as guiding the velocity. ``w = 0`` is unconditional,
``w = 1`` conditional. Each guided evaluation counts **2** model evaluations (NFE).

References:
    Ho & Salimans 2022, arXiv:2207.12598, eq. (6) (classifier-free guidance);
    Karras et al. 2022, arXiv:2206.00364, Sec. 3 (the ODE from any denoiser).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._validation import check_batch, check_time, coefficient_dtype, expand_like
from ..parameterization import Prediction, _singular_at, convert_with_coefficients
from ..paths.base import Path

__all__ = [
    "PredictionAdapter",
    "as_prediction",
    "as_velocity",
    "as_denoiser",
    "conversion_coefficients",
    "CountingModel",
    "count_nfe",
]


def conversion_coefficients(path: Path, t: Tensor, *, src, dst) -> tuple[Tensor, Tensor]:
    """Coefficients ``(c_x, c_p)`` with ``dst = c_x·x_t + c_p·pred_src`` at times ``t``.

    Args:
        path: the path.
        t: ``(K,)`` times (any float dtype; computed in float64 if ``t`` is float64, else float32).
        src, dst: :class:`~flowgen.parameterization.Prediction` members or values.

    Returns:
        ``(c_x, c_p)``, each ``(K,)``. Infinite or NaN where :func:`~flowgen.parameterization.singular_at` is true.
    """
    src, dst = Prediction.parse(src, "src"), Prediction.parse(dst, "dst")
    t = t.to(coefficient_dtype(t))
    if src is dst:
        return torch.zeros_like(t), torch.ones_like(t)
    a, s, da, ds = path._alpha(t), path._sigma(t), path._d_alpha(t), path._d_sigma(t)
    zero, one = torch.zeros_like(t), torch.ones_like(t)
    with torch.no_grad():
        c_x = convert_with_coefficients(zero, src, dst, one, a, s, da, ds)
        c_p = convert_with_coefficients(one, src, dst, zero, a, s, da, ds)
    return c_x, c_p


def singular_for(path: Path, t: Tensor, prediction: Prediction, target: Prediction) -> Tensor:
    """Where the model's ``prediction`` cannot be turned into ``target`` (bool ``(K,)``).

    For ``target = DATA`` the noise is needed too (DDIM-type steps use both), so the
    check covers the conversion to ``DATA`` and to ``NOISE``.
    """
    if target is Prediction.DATA:
        return _singular_at(path, t, prediction, Prediction.DATA) | _singular_at(path, t, prediction, Prediction.NOISE)
    return _singular_at(path, t, prediction, target)


def _describe_singular(path: Path, t: float, prediction: Prediction, target: Prediction) -> str:
    tt = torch.tensor([t], dtype=torch.float64)
    a, s = float(path._alpha(tt)[0]), float(path._sigma(tt)[0])
    return (
        f"a '{prediction.value}' prediction cannot be converted to '{target.value}' at t={t:.6g} on "
        f"{type(path).__name__} (alpha={a:.4g}, sigma={s:.4g}: the conversion divides by zero or needs an infinite derivative)"
    )


def _check_cond(cond, batch: int, name: str = "cond") -> None:
    if isinstance(cond, Tensor):
        if cond.dim() == 0 or cond.shape[0] != batch:
            shape = tuple(cond.shape)
            raise ValueError(f"{name} has shape {shape} but the batch has {batch} samples; expected shape ({batch}, ...)")


def _null_like(cond: Tensor, null_cond) -> Tensor:
    """``null_cond`` as a tensor of ``cond``'s shape: accepts ``(B, ...)``, ``(...)`` or a scalar."""
    null = torch.as_tensor(null_cond, dtype=cond.dtype, device=cond.device)
    if null.shape == cond.shape:
        return null
    if null.dim() == 0 or tuple(null.shape) == tuple(cond.shape[1:]):
        return null.expand(cond.shape)
    raise ValueError(
        f"null_cond has shape {tuple(null.shape)}; expected {tuple(cond.shape)} (like cond), "
        f"{tuple(cond.shape[1:])} (one condition for all samples) or a scalar"
    )


class _Evaluator:
    """Calls the model: handles ``cond`` and guidance, counts NFE, checks the output.

    ``__call__(x, t, step, t_float)`` returns the model's prediction (kind ``prediction``)
    after guidance, in ``x``'s dtype. ``step``/``t_float`` only name the place in errors.
    With ``check_each`` it also refuses non-finite outputs at once (the diagnostic rerun).
    """

    __slots__ = ("model", "cond", "cond2", "w", "nfe", "check_each", "x_name", "shape", "dtype", "shape2")

    def __init__(self, model, *, cond=None, guidance_scale=None, null_cond=None, batch: int | None = None):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x_t, t[, cond]), got {type(model).__name__}")
        self.model = model
        self.nfe = 0
        self.check_each = False
        self.x_name = "x"  # the caller's argument the state starts from, named in the overflow error
        self.shape = None
        self.dtype = None
        self.shape2 = None
        self.cond, self.cond2, self.w = cond, None, None
        if batch is not None:
            _check_cond(cond, batch)
        if guidance_scale is not None:
            if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
                raise ValueError(f"guidance_scale must be a finite number (0 = unconditional, 1 = conditional), got {guidance_scale!r}")
            if not isinstance(cond, Tensor):
                raise ValueError("guidance_scale needs cond as a tensor (B, ...) and a null_cond; got cond=" + type(cond).__name__)
            if null_cond is None:
                raise ValueError("guidance_scale needs null_cond (the unconditional input, e.g. the null class or an empty embedding)")
            self.cond2 = torch.cat([cond, _null_like(cond, null_cond)])
            self.w = float(guidance_scale)
        elif null_cond is not None:
            raise ValueError("null_cond is only used with guidance_scale; pass guidance_scale or drop null_cond")

    def bind(self, x: Tensor) -> "_Evaluator":
        """Fix the expected output shape and dtype for states like ``x``."""
        self.shape = x.shape
        self.dtype = x.dtype
        self.shape2 = torch.Size((2 * x.shape[0], *x.shape[1:]))
        if self.cond2 is not None and self.cond2.shape[0] != 2 * x.shape[0]:
            raise ValueError(f"cond has batch size {self.cond2.shape[0] // 2} but x has {x.shape[0]}")
        if self.cond2 is None:
            _check_cond(self.cond, x.shape[0])
        return self

    def __call__(self, x: Tensor, t: Tensor, step, t_float) -> Tensor:
        if self.check_each and not bool(torch.isfinite(x).all()):  # diagnostic rerun only: a state that overflowed
            raise ValueError(
                f"the sampler state x given to the model at step {step} (t={t_float:.6g}) holds non-finite values: an update "
                f"overflowed {x.dtype} before the model was called (check the scale of {self.x_name}, give it in "
                f"float32/float64, or use a finer grid)"
            )
        if self.w is None:
            out = self.model(x, t) if self.cond is None else self.model(x, t, self.cond)
            self.nfe += 1
            if not isinstance(out, Tensor):
                raise TypeError(f"model returned {type(out).__name__} at step {step} (t={t_float:.6g}); expected a Tensor")
            if out.shape != self.shape:
                raise ValueError(
                    f"model output at step {step} (t={t_float:.6g}) has shape {tuple(out.shape)}; expected {tuple(self.shape)}, the shape of x_t"
                )
        else:
            out2 = self.model(torch.cat([x, x]), torch.cat([t, t]), self.cond2)
            self.nfe += 2
            if not isinstance(out2, Tensor):
                raise TypeError(f"model returned {type(out2).__name__} at step {step} (t={t_float:.6g}); expected a Tensor")
            if out2.shape != self.shape2:
                raise ValueError(
                    f"model output at step {step} (t={t_float:.6g}) has shape {tuple(out2.shape)} for the guided batch; "
                    f"expected {tuple(self.shape2)}, the shape of cat([x_t, x_t])"
                )
            cond_out, null_out = out2.chunk(2)
            out = torch.lerp(null_out, cond_out, self.w)
        if out.dtype != self.dtype:
            out = out.to(self.dtype)
        if self.check_each and not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out)).sum())
            raise ValueError(f"model output at step {step} (t={t_float:.6g}) holds {bad} non-finite value(s) (NaN or Inf)")
        return out


class PredictionAdapter:
    """A model seen as a field of another prediction kind, for per-sample times.

    ``adapter(x_t, t)`` returns the ``target`` prediction implied by the model's output, with
    ``t`` of shape ``(B,)`` (each sample its own time). ``adapter.nfe`` counts model
    evaluations (2 per call with guidance). Build it with :func:`as_velocity`,
    :func:`as_denoiser` or :func:`as_prediction`.

    Raises (at call time):
        ValueError: if a ``t`` is singular for this conversion (see
            :func:`~flowgen.parameterization.singular_at`), if the model's output has the wrong
            shape, or if ``cond`` does not match the batch.
    """

    def __init__(self, model, path: Path, prediction, target, *, cond=None, guidance_scale=None, null_cond=None):
        if not isinstance(path, Path):
            raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
        self.path = path
        self.prediction = Prediction.parse(prediction)
        self.target = Prediction.parse(target, "target")
        self._ev = _Evaluator(model, cond=cond, guidance_scale=guidance_scale, null_cond=null_cond)

    @property
    def nfe(self) -> int:
        """Model evaluations so far (the guided pair counts 2)."""
        return self._ev.nfe

    def raw(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The model's own prediction (after guidance) at ``(x_t, t)``. ``(B, *D)``."""
        check_batch(x_t, "x_t")
        check_time(t, "t", batch=x_t.shape[0], device=x_t.device)
        bad = singular_for(self.path, t.detach(), self.prediction, self.target)
        if bool(bad.any()):
            tb = float(t[bad.nonzero()[0, 0]])
            raise ValueError("refusing to evaluate the model: " + _describe_singular(self.path, tb, self.prediction, self.target))
        ev = self._ev.bind(x_t)
        return ev(x_t, t.to(x_t.dtype), "-", float(t.detach().flatten()[0]) if t.numel() else float("nan"))

    def _coefs(self, t: Tensor, x_t: Tensor, dst: Prediction) -> tuple[Tensor, Tensor]:
        c_x, c_p = conversion_coefficients(self.path, t.detach(), src=self.prediction, dst=dst)
        return expand_like(c_x, x_t).to(x_t.dtype), expand_like(c_p, x_t).to(x_t.dtype)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The ``target`` prediction at ``(x_t, t)``; ``x_t`` ``(B, *D)``, ``t`` ``(B,)``. Returns ``(B, *D)``."""
        pred = self.raw(x_t, t)
        if self.target is self.prediction:
            return pred
        c_x, c_p = self._coefs(t, x_t, self.target)
        return c_x * x_t + c_p * pred

    def data_noise(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(data, noise)`` implied by the model at ``(x_t, t)``; one model evaluation."""
        pred = self.raw(x_t, t)
        dx, dp = self._coefs(t, x_t, Prediction.DATA)
        nx, np_ = self._coefs(t, x_t, Prediction.NOISE)
        return dx * x_t + dp * pred, nx * x_t + np_ * pred


def as_prediction(model, path: Path, prediction, target, *, cond=None, guidance_scale=None, null_cond=None) -> PredictionAdapter:
    """Wrap ``model`` (predicting ``prediction``) as a field returning ``target``; see :class:`PredictionAdapter`."""
    return PredictionAdapter(model, path, prediction, target, cond=cond, guidance_scale=guidance_scale, null_cond=null_cond)


def as_velocity(model, path: Path, prediction, *, cond=None, guidance_scale=None, null_cond=None) -> PredictionAdapter:
    """The probability-flow velocity field ``v(x_t, t) = E[α'·data + σ'·noise | x_t]`` of any model.

    Args:
        model: ``model(x_t, t[, cond])`` predicting ``prediction``.
        path: the path it was trained on.
        prediction: what it predicts (:class:`~flowgen.parameterization.Prediction` or value).
        cond: optional condition passed as the third argument, ``(B, ...)`` if a tensor.
        guidance_scale: classifier-free guidance weight ``w`` (needs ``cond`` and ``null_cond``).
        null_cond: the unconditional input, of ``cond``'s shape, its per-sample shape, or a scalar.

    Returns:
        :class:`PredictionAdapter` with ``field(x_t, t) → (B, *D)`` and ``.nfe``.

    References:
        Song et al. 2021, arXiv:2011.13456, eq. (13) (probability-flow ODE).
    """
    return as_prediction(model, path, prediction, Prediction.VELOCITY, cond=cond, guidance_scale=guidance_scale, null_cond=null_cond)


def as_denoiser(model, path: Path, prediction, *, cond=None, guidance_scale=None, null_cond=None) -> PredictionAdapter:
    """The data prediction ``D(x_t, t) = E[data | x_t]`` of any model (DDIM / DPM-Solver++ use it).

    ``adapter.data_noise(x_t, t)`` gives ``(data, noise)`` from one evaluation. Arguments as
    in :func:`as_velocity`.

    References:
        Karras et al. 2022, arXiv:2206.00364, eq. (3) (the denoiser D).
    """
    return as_prediction(model, path, prediction, Prediction.DATA, cond=cond, guidance_scale=guidance_scale, null_cond=null_cond)


class CountingModel(nn.Module):
    """Wrap a model and count its calls in ``.calls`` (per call, not per sample).

    Args:
        model: any callable ``model(x_t, t[, cond])``; if it is an ``nn.Module`` it is
            registered as a submodule, so ``.to()``/``.eval()`` reach it.
    """

    def __init__(self, model):
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        if isinstance(model, nn.Module):
            self.model = model
        else:
            self._fn = model
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        inner = self.model if "model" in self._modules else self._fn
        return inner(*args, **kwargs)


def count_nfe(model) -> CountingModel:
    """``CountingModel(model)``: a wrapper whose ``.calls`` counts model evaluations."""
    return CountingModel(model)
