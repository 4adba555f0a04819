"""User-defined affine paths from two callables α(t), σ(t)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .base import Path

__all__ = ["AffinePath"]

Schedule = Callable[[Tensor], Tensor]


def _autograd_derivative(fn: Schedule, t: Tensor) -> Tensor:
    """Elementwise derivative of ``fn`` at ``t`` ``(B,)`` by reverse-mode autograd."""
    keep_graph = torch.is_grad_enabled() and t.requires_grad
    with torch.enable_grad():
        tt = t if keep_graph else t.detach().requires_grad_(True)
        y = fn(tt)
        if not y.requires_grad:  # a constant schedule (e.g. α = 1 built with ones_like) has no graph
            return torch.zeros_like(t)
        (grad,) = torch.autograd.grad(y.sum(), tt, create_graph=keep_graph, allow_unused=True)
    return torch.zeros_like(t) if grad is None else grad


class AffinePath(Path):
    """A path from user callables ``alpha(t)`` and ``sigma(t)``.

    The callables take and return ``(B,)`` tensors and must be elementwise. Missing
    derivatives are computed by autograd. The schedule is validated when built, on
    ``num_check_points`` times in float64: α and σ finite and non-negative, never both
    zero, derivatives finite on ``[t_min, t_max]``, and ``λ = 2 log(α/σ)`` strictly
    decreasing where ``α, σ > 0``.

    Args:
        alpha: callable ``t ↦ α(t)``.
        sigma: callable ``t ↦ σ(t)``.
        d_alpha, d_sigma: optional callables for the exact derivatives.
        t_min, t_max: default generation interval.
        num_check_points: how many times the validation checks.

    Raises:
        TypeError: if a schedule is not callable or returns a non-tensor.
        ValueError: naming the schedule and the failing time when a check fails.

    Example:
        >>> import torch
        >>> path = AffinePath(alpha=lambda t: 1 - t**2, sigma=lambda t: t)
    """

    def __init__(
        self,
        alpha: Schedule,
        sigma: Schedule,
        *,
        d_alpha: Schedule | None = None,
        d_sigma: Schedule | None = None,
        t_min: float = 0.0,
        t_max: float = 1.0,
        num_check_points: int = 1025,
    ):
        for name, fn in (("alpha", alpha), ("sigma", sigma), ("d_alpha", d_alpha), ("d_sigma", d_sigma)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable t -> Tensor, got {type(fn).__name__}")
        if not (0.0 <= t_min < t_max <= 1.0):
            raise ValueError(f"t_min and t_max must satisfy 0 <= t_min < t_max <= 1, got {t_min}, {t_max}")
        self._alpha_fn, self._sigma_fn = alpha, sigma
        self._d_alpha_fn, self._d_sigma_fn = d_alpha, d_sigma
        self.t_min, self.t_max = float(t_min), float(t_max)
        self._validate(num_check_points)

    def _call(self, fn: Schedule, t: Tensor, name: str) -> Tensor:
        out = fn(t)
        if not isinstance(out, Tensor):
            raise TypeError(f"{name}(t) must return a torch.Tensor, got {type(out).__name__}")
        if out.shape != t.shape:
            out = out.expand(t.shape) if out.numel() == 1 else out
        if out.shape != t.shape:
            raise ValueError(f"{name}(t) must return shape {tuple(t.shape)} (elementwise), got {tuple(out.shape)}")
        return out.to(t.dtype)

    def _alpha(self, t):
        return self._call(self._alpha_fn, t, "alpha")

    def _sigma(self, t):
        return self._call(self._sigma_fn, t, "sigma")

    def _d_alpha(self, t):
        if self._d_alpha_fn is not None:
            return self._call(self._d_alpha_fn, t, "d_alpha")
        return _autograd_derivative(self._alpha, t)

    def _d_sigma(self, t):
        if self._d_sigma_fn is not None:
            return self._call(self._d_sigma_fn, t, "d_sigma")
        return _autograd_derivative(self._sigma, t)

    def _validate(self, n: int) -> None:
        t = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
        with torch.no_grad():
            a, s = self._alpha(t), self._sigma(t)
        for name, v in (("alpha", a), ("sigma", s)):
            bad = ~torch.isfinite(v) | (v < 0)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                raise ValueError(f"{name}(t) must be finite and >= 0 on [0, 1]; at t={float(t[i]):.6g} it is {float(v[i])!r}")
        both_zero = (a == 0) & (s == 0)
        if bool(both_zero.any()):
            i = int(both_zero.nonzero()[0])
            raise ValueError(f"alpha(t) and sigma(t) are both 0 at t={float(t[i]):.6g}; x_t would carry nothing")
        inner = (t >= self.t_min) & (t <= self.t_max)
        for name, d in (("d_alpha", self._d_alpha(t[inner])), ("d_sigma", self._d_sigma(t[inner]))):
            bad = ~torch.isfinite(d)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                raise ValueError(f"{name}(t) must be finite on [t_min, t_max]; at t={float(t[inner][i]):.6g} it is {float(d[i])!r}")
        pos = (a > 0) & (s > 0)
        lam = 2.0 * (torch.log(a[pos]) - torch.log(s[pos]))
        steps = lam[1:] - lam[:-1]
        if bool((steps >= 0).any()):
            i = int((steps >= 0).nonzero()[0])
            tt = t[pos]
            raise ValueError(
                "log-SNR 2*log(alpha/sigma) must be strictly decreasing in t; it does not decrease "
                f"between t={float(tt[i]):.6g} and t={float(tt[i + 1]):.6g}"
            )

    def __repr__(self) -> str:
        parts = [f"alpha={self._alpha_fn!r}", f"sigma={self._sigma_fn!r}"]
        parts += [f"{k}={v!r}" for k, v in (("d_alpha", self._d_alpha_fn), ("d_sigma", self._d_sigma_fn)) if v is not None]
        return f"AffinePath({', '.join(parts)}, t_min={self.t_min}, t_max={self.t_max})"

    def _config(self):
        raise TypeError("AffinePath holds Python callables and cannot be saved as config; use a built-in path or subclass Path")
