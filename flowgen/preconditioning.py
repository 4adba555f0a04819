r"""Input/output preconditioning (c_skip, c_out, c_in) for any path.

Both preconditionings work in the variance-exploding frame of the path,
``x̃ = x_t/α``, ``σ̃ = σ/α`` (so ``x̃ = data + σ̃·noise``), where EDM's formulas hold.

EDM (Karras et al. 2022, Table 1), output a data prediction:

.. math::
    D(x_t, t) = c_{skip} x̃ + c_{out} F(c_{in} x̃, t),\quad
    c_{skip} = \frac{σ_d^2}{σ̃^2 + σ_d^2},\; c_{out} = \frac{σ̃ σ_d}{\sqrt{σ̃^2+σ_d^2}},\;
    c_{in} = \frac{1}{\sqrt{σ̃^2+σ_d^2}}.

Consistency models (Song et al. 2023, Appendix C) need the boundary condition
``f(x, t_min) = x`` exactly, in ``x_t`` units:

.. math::
    f(x_t, t) = c_{skip} x_t + c_{out} F(c_{in} x̃, t),\quad
    c_{skip} = \frac{σ_d^2}{(σ̃ − σ̃_{min})^2 + σ_d^2},\;
    c_{out} = \frac{σ_d (σ̃ − σ̃_{min})}{\sqrt{σ̃^2 + σ_d^2}}.

At ``t = t_min`` the difference ``σ̃ − σ̃_min`` is exactly zero, so ``c_skip = 1`` and
``c_out = 0`` in floating point, whatever the network returns (if finite).

Where ``α = 0`` (``t = 1`` on rectified flow and cosine) ``σ̃`` is infinite; the coefficients
are computed in forms that take their limits there (``c_skip → 0``, ``c_out → σ_d``, the network
input ``c_in x̃ = x_t/√(σ² + σ_d²α²)``) instead of ``∞/∞``.

References:
    Karras et al. 2022, arXiv:2206.00364, Table 1; Song et al. 2023, arXiv:2303.01469, eq. (7) and Appendix C.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._validation import check_model_call, check_positive, check_time, coefficient_dtype, expand_like
from .paths.base import Path

__all__ = ["edm_coefficients", "consistency_coefficients", "EDMPreconditioned", "BoundaryConditioned"]


def _ve_sigma(path: Path, t: Tensor) -> Tensor:
    t = t.to(coefficient_dtype(t))
    return path._sigma(t) / path._alpha(t)


def _alpha_sigma(path: Path, t: Tensor) -> tuple[Tensor, Tensor]:
    t = t.to(coefficient_dtype(t))
    return path._alpha(t), path._sigma(t)


def _check_path(path) -> Path:
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    return path


def edm_coefficients(path: Path, t: Tensor, *, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """EDM's ``(c_skip, c_out, c_in)`` at ``t`` ``(B,)`` in the path's VE frame; each ``(B,)``. ``c_in`` acts on ``x_t/α``.

    Written with ``σ̃ = σ/α`` multiplied through by ``α`` (``c_skip = σ_d²α²/(σ² + σ_d²α²)``, …), which is
    Table 1 verbatim when ``α = 1`` and finite where ``α = 0``.
    """
    _check_path(path)
    check_time(t, "t")
    sigma_data = check_positive(sigma_data, "sigma_data")
    a, s = _alpha_sigma(path, t)
    sd2 = sigma_data**2
    norm2 = s * s + sd2 * a * a  # α²(σ̃² + σ_d²)
    norm = torch.sqrt(norm2)
    return sd2 * a * a / norm2, s * sigma_data / norm, a / norm


def consistency_coefficients(path: Path, t: Tensor, *, t_min: float, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """Boundary-condition ``(c_skip, c_out, c_in)``: ``c_skip(t_min) = 1``, ``c_out(t_min) = 0`` exactly. Each ``(B,)``."""
    _check_path(path)
    check_time(t, "t")
    _check_t_min(t_min)
    sigma_data = check_positive(sigma_data, "sigma_data")
    return _consistency_coefficients(path, t, t_min=t_min, sigma_data=sigma_data)


def _check_t_min(t_min) -> float:
    if isinstance(t_min, bool) or not isinstance(t_min, (int, float)) or not (0.0 <= t_min < 1.0):
        raise ValueError(f"t_min must be a number in [0, 1), got {t_min!r}")
    return float(t_min)


def _consistency_coefficients(path: Path, t: Tensor, *, t_min: float, sigma_data: float) -> tuple[Tensor, Tensor, Tensor]:
    s = _ve_sigma(path, t)
    s_min = _ve_sigma(path, torch.full_like(t, t_min))
    d = s - s_min  # exactly 0 at t = t_min
    c_out = sigma_data * d / torch.sqrt(s * s + sigma_data**2)
    c_out = torch.where(torch.isinf(s), torch.full_like(c_out, sigma_data), c_out)  # α = 0: the limit σ_d
    # tensor / tensor: ``scalar / tensor`` is computed as ``scalar * reciprocal(tensor)`` by torch, which is
    # not exactly 1 at d = 0 (it missed by an ulp in float32)
    sd2 = torch.full_like(d, sigma_data**2)
    return sd2 / (d * d + sd2), c_out, 1.0 / torch.sqrt(s * s + sigma_data**2)


def _input_scale(path: Path, t: Tensor, sigma_data: float) -> Tensor:
    """``c_in/α = 1/√(σ² + σ_d²α²)``: the factor on ``x_t`` of the network input, finite where ``α = 0``."""
    a, s = _alpha_sigma(path, t)
    return 1.0 / torch.sqrt(s * s + sigma_data**2 * a * a)


def _call(net: nn.Module, x: Tensor, t: Tensor, cond):
    out = net(x, t) if cond is None else net(x, t, cond)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"net output must be a tensor of the shape of x_t {tuple(x.shape)}, got {got}")
    return out


class EDMPreconditioned(nn.Module):
    """Wrap a raw network ``F(x, t[, cond])`` into EDM's denoiser; the wrapper predicts ``DATA``.

    Args:
        net: raw network, called with the scaled input and the unchanged ``t``.
        path: the path the model is trained on.
        sigma_data: data standard deviation σ_d.
    """

    def __init__(self, net: nn.Module, path: Path, sigma_data: float = 0.5):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t[, cond]), got {type(net).__name__}")
        self.net, self.path, self.sigma_data = net, _check_path(path), check_positive(sigma_data, "sigma_data")

    def forward(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        check_model_call(x_t, t)
        a, s = _alpha_sigma(self.path, t)
        sd = self.sigma_data
        norm2 = s * s + sd * sd * a * a
        skip = sd * sd * a / norm2  # c_skip/α: acts on x_t
        c_out = s * sd / torch.sqrt(norm2)
        scale_in = 1.0 / torch.sqrt(norm2)  # c_in/α
        out = _call(self.net, (expand_like(scale_in, x_t) * x_t).to(x_t.dtype), t, cond)
        return (expand_like(skip, x_t) * x_t + expand_like(c_out, x_t) * out).to(x_t.dtype)


class BoundaryConditioned(nn.Module):
    """Consistency function ``f(x_t, t) = c_skip x_t + c_out F(c_in x_t/α, t)`` with ``f(x, t_min) = x`` exactly.

    Args:
        net: raw network ``F(x, t[, cond])``.
        path: the path.
        t_min: the boundary time (usually ``path.t_min``).
        sigma_data: data standard deviation σ_d.
    """

    def __init__(self, net: nn.Module, path: Path, *, t_min: float | None = None, sigma_data: float = 0.5):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t[, cond]), got {type(net).__name__}")
        self.net, self.path, self.sigma_data = net, _check_path(path), check_positive(sigma_data, "sigma_data")
        self.t_min = _check_t_min(path.t_min if t_min is None else t_min)

    def forward(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        check_model_call(x_t, t)
        c_skip, c_out, _ = _consistency_coefficients(self.path, t, t_min=self.t_min, sigma_data=self.sigma_data)
        scaled = (expand_like(_input_scale(self.path, t, self.sigma_data), x_t) * x_t).to(x_t.dtype)
        out = _call(self.net, scaled, t, cond)
        return (expand_like(c_skip, x_t) * x_t + expand_like(c_out, x_t) * out).to(x_t.dtype)
