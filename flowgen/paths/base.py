r"""The probability-path contract shared by every schedule in flowgen.

Math (one convention everywhere): ``t ∈ [0, 1]``, ``t = 0`` is data and ``t = 1`` is noise,

.. math::
    x_t = \alpha(t)\,\text{data} + \sigma(t)\,\text{noise}, \qquad
    \frac{dx_t}{dt} = \alpha'(t)\,\text{data} + \sigma'(t)\,\text{noise}, \qquad
    \lambda(t) = 2\log\frac{\alpha(t)}{\sigma(t)}.

Invariants every path keeps (checked by ``tests/paths/test_path_laws.py`` over all paths):

* ``alpha`` and ``sigma`` are finite and non-negative on ``[0, 1]``;
* the log-SNR ``λ`` is strictly decreasing where ``α, σ > 0`` (it may be ``+inf`` where
  ``σ = 0`` and ``-inf`` where ``α = 0``, which only happens at the ends);
* ``d_alpha``/``d_sigma`` are the exact derivatives (checked against autograd);
* ``t_from_log_snr`` inverts ``log_snr``;
* ``[t_min, t_max]`` is the default generation interval: there ``α, σ`` and both
  derivatives are finite and ``α + σ > 0``.

Coefficients are computed in float32, or float64 when ``t`` is float64.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_batch, check_finite, check_same_shape, check_time, coefficient_dtype, expand_like

__all__ = ["Path", "PathSample"]


@dataclass(frozen=True)
class PathSample:
    """A draw from a path: ``x_t``, its velocity ``dx_t/dt`` and the coefficients used.

    Attributes:
        x_t: ``(B, *D)`` noisy sample.
        velocity: ``(B, *D)`` conditional velocity ``α'(t)·data + σ'(t)·noise`` (the flow-matching target).
        t: ``(B,)`` times.
        alpha, sigma, d_alpha, d_sigma: ``(B,)`` coefficients at ``t``.
    """

    x_t: Tensor
    velocity: Tensor
    t: Tensor
    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


def _log_sigmoid(x: Tensor) -> Tensor:
    """``log σ(x) = −softplus(−x)``, exact to rounding (threshold far beyond where ``e^x`` matters).

    Used instead of ``torch.nn.functional.logsigmoid``, whose CPU kernel opens a parallel region even
    for a handful of elements: measured 3.5 ms per call on 3 elements on a busy 2-core machine, against
    ~3 µs for ``softplus`` (``log_snr`` inverses run once per training step in ``LogNormalSigmaTime``).
    """
    return -torch.nn.functional.softplus(-x, beta=1.0, threshold=60.0)


class Path(ABC):
    """Abstract affine probability path ``x_t = α(t)·data + σ(t)·noise``.

    Subclasses implement :meth:`_alpha`, :meth:`_sigma`, :meth:`_d_alpha`, :meth:`_d_sigma`
    on an already-validated float ``t`` of shape ``(B,)``; they may override
    :meth:`_t_from_log_snr` with a closed form (the default bisects the strictly
    decreasing ``λ``).
    """

    #: Default lower end of generation (samplers integrate down to here).
    t_min: float = 0.0
    #: Default upper end of generation (samplers start here).
    t_max: float = 1.0

    # --- to implement -----------------------------------------------------------------
    @abstractmethod
    def _alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _sigma(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _d_alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _d_sigma(self, t: Tensor) -> Tensor: ...

    def _log_snr(self, t: Tensor) -> Tensor:
        return 2.0 * (torch.log(self._alpha(t)) - torch.log(self._sigma(t)))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Bisection on ``[0, 1]`` (λ is strictly decreasing); 64 halvings reach float64 resolution."""
        lo = torch.zeros_like(lam)
        hi = torch.ones_like(lam)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self._log_snr(mid) > lam  # λ(mid) too large → t must grow
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    # --- public API -------------------------------------------------------------------
    def _prepare(self, t: Tensor, name: str = "t") -> Tensor:
        check_time(t, name)
        return t.to(coefficient_dtype(t))

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale ``α(t)``. Args: t ``(B,)`` in [0, 1]. Returns ``(B,)``."""
        return self._alpha(self._prepare(t))

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale ``σ(t)``. Args: t ``(B,)`` in [0, 1]. Returns ``(B,)``."""
        return self._sigma(self._prepare(t))

    def d_alpha(self, t: Tensor) -> Tensor:
        """Exact derivative ``α'(t)``. Args: t ``(B,)``. Returns ``(B,)``."""
        return self._d_alpha(self._prepare(t))

    def d_sigma(self, t: Tensor) -> Tensor:
        """Exact derivative ``σ'(t)``. Args: t ``(B,)``. Returns ``(B,)``."""
        return self._d_sigma(self._prepare(t))

    def log_snr(self, t: Tensor) -> Tensor:
        """Log signal-to-noise ratio ``λ(t) = 2 log(α/σ)``, strictly decreasing. Returns ``(B,)``."""
        return self._log_snr(self._prepare(t))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`.

        Args:
            log_snr: ``(B,)`` values inside the path's range ``[λ(1), λ(0)]``.

        Returns:
            ``(B,)`` times in ``[0, 1]``.

        Raises:
            ValueError: if ``log_snr`` is NaN or outside the range of the path.
        """
        if not isinstance(log_snr, Tensor) or not log_snr.is_floating_point():
            raise TypeError(f"log_snr must be a floating tensor of shape (B,), got {type(log_snr).__name__}"
                            + (f" of dtype {log_snr.dtype}" if isinstance(log_snr, Tensor) else ""))
        if log_snr.dim() != 1:  # a TypeError, as it always was for this method
            raise TypeError(f"log_snr must be a floating tensor of shape (B,), got shape {tuple(log_snr.shape)}")
        if log_snr.device.type == "meta":
            raise ValueError("log_snr is a meta tensor (a shape without values); expected a tensor with values")
        if bool(torch.isnan(log_snr).any()):
            raise ValueError("log_snr holds NaN; expected values in the path's log-SNR range")
        lam = log_snr.to(coefficient_dtype(log_snr))
        ends = self._log_snr(torch.tensor([1.0, 0.0], dtype=lam.dtype, device=lam.device))
        # relative tolerance on finite values only: with |λ| = inf the tolerance would be inf and let any
        # infinite λ through (e.g. λ = +inf on RectifiedFlow(sigma_min > 0), whose λ(0) is finite)
        tol = 1e-6 * (1.0 + torch.where(torch.isfinite(lam), lam.abs(), torch.zeros_like(lam)))
        if bool(((lam < ends[0] - tol) | (lam > ends[1] + tol)).any()):
            raise ValueError(
                f"log_snr must lie in the path's range [{float(ends[0]):.6g}, {float(ends[1]):.6g}], "
                f"got values in [{float(lam.min()):.6g}, {float(lam.max()):.6g}]"
            )
        t = self._t_from_log_snr(lam)
        # the ends exactly (closed forms can give inf/inf = NaN at λ = ±inf, e.g. rectified flow at λ(0) = +inf)
        t = torch.where(lam >= ends[1], torch.zeros_like(t), t)
        t = torch.where(lam <= ends[0], torch.ones_like(t), t)
        return t.clamp(0.0, 1.0)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(α, σ, α', σ')`` at ``t``, each ``(B,)``; one validation for all four."""
        t = self._prepare(t)
        return self._alpha(t), self._sigma(t), self._d_alpha(t), self._d_sigma(t)

    def sample(self, *, data: Tensor, noise: Tensor, t: Tensor) -> PathSample:
        """Draw ``x_t`` and the velocity target from given data, noise and times.

        Args:
            data: ``(B, *D)`` clean samples.
            noise: ``(B, *D)`` standard normal noise (same shape as ``data``).
            t: ``(B,)`` times in ``[0, 1]``.

        Returns:
            :class:`PathSample` with ``x_t`` and ``velocity`` in ``data``'s dtype.
        """
        check_batch(data, "data")
        check_batch(noise, "noise")
        check_same_shape(data, noise, "data", "noise")
        check_time(t, "t", batch=data.shape[0], device=data.device)
        out = self._sample(data=data, noise=noise, t=t.to(coefficient_dtype(t, data)))
        # one reduction on the result; the diagnosis below runs only when it fails
        if not bool(torch.isfinite(out.x_t).all() & torch.isfinite(out.velocity).all()):
            check_finite(data, "data")
            check_finite(noise, "noise")
            bad = ~(torch.isfinite(out.d_alpha) & torch.isfinite(out.d_sigma))
            if bool(bad.any()):
                tb = float(t[bad.nonzero()[0, 0]])
                raise ValueError(
                    f"t={tb:.6g} is where the velocity of {type(self).__name__} is infinite (alpha'(t) or sigma'(t) "
                    f"diverges); draw t in [t_min, t_max] = [{self.t_min:.6g}, {self.t_max:.6g}]"
                )
            raise ValueError(
                f"x_t or the velocity overflowed in {data.dtype} (data and noise are finite); "
                "use a wider dtype such as float32 or rescale the data"
            )
        return out

    def _sample(self, *, data: Tensor, noise: Tensor, t: Tensor) -> PathSample:
        a, s, da, ds = self._alpha(t), self._sigma(t), self._d_alpha(t), self._d_sigma(t)
        x_t = (expand_like(a, data) * data + expand_like(s, data) * noise).to(data.dtype)
        velocity = (expand_like(da, data) * data + expand_like(ds, data) * noise).to(data.dtype)
        return PathSample(x_t=x_t, velocity=velocity, t=t, alpha=a, sigma=s, d_alpha=da, d_sigma=ds)

    def prior_scale(self) -> float:
        """``σ(t_max)``: generation starts from ``prior_scale() * noise``."""
        return float(self._sigma(torch.tensor([self.t_max], dtype=torch.float64))[0])

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        fields = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({fields})"

    def _config(self) -> dict:
        """Constructor arguments (for repr and checkpoint metadata)."""
        return {}
