"""Training-time distributions: ``distribution.sample(batch, path=..., generator=...) → t (B,)``.

Every distribution returns times inside the path's ``[t_min, t_max]`` interval.

References:
    Esser et al. 2024, arXiv:2403.03206, Sec. 3.1 (logit-normal);
    Karras et al. 2022, arXiv:2206.00364, Table 1 (log-normal σ);
    Ho et al. 2020, arXiv:2006.11239 (uniform integer indices).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._random import rand, randint, randn
from ..paths.base import Path
from ..paths.discrete import DiscreteDDPM

__all__ = ["TimeDistribution", "UniformTime", "LogitNormalTime", "DiscreteTime", "LogNormalSigmaTime", "get_time_distribution"]


def _check_batch_size(batch) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch must be a non-negative int, got {batch!r}")
    return batch


class TimeDistribution:
    """Base class for time distributions."""

    def sample(self, batch: int, *, path: Path, generator: torch.Generator | None = None,
               device=None, dtype: torch.dtype = torch.float32) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class UniformTime(TimeDistribution):
    """``t ~ U[low, high]``; defaults to the path's ``[t_min, t_max]``."""

    def __init__(self, low: float | None = None, high: float | None = None):
        if low is not None and high is not None and not (0.0 <= low < high <= 1.0):
            raise ValueError(f"low and high must satisfy 0 <= low < high <= 1, got {low}, {high}")
        self.low, self.high = low, high

    def sample(self, batch, *, path, generator=None, device=None, dtype=torch.float32):
        lo = path.t_min if self.low is None else self.low
        hi = path.t_max if self.high is None else self.high
        u = rand(_check_batch_size(batch), generator=generator, device=device, dtype=dtype)
        return lo + (hi - lo) * u


class LogitNormalTime(TimeDistribution):
    """``t = t_min + (t_max − t_min)·sigmoid(m + s·z)``, ``z ~ N(0, 1)`` (SD3's default ``m=0, s=1``)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        if not (math.isfinite(mean) and std > 0):
            raise ValueError(f"logit-normal needs finite mean and std > 0, got mean={mean}, std={std}")
        self.mean, self.std = float(mean), float(std)

    def sample(self, batch, *, path, generator=None, device=None, dtype=torch.float32):
        z = randn(_check_batch_size(batch), generator=generator, device=device, dtype=dtype)
        return path.t_min + (path.t_max - path.t_min) * torch.sigmoid(self.mean + self.std * z)


class DiscreteTime(TimeDistribution):
    """Uniform integer index ``i ∈ {0 … T−1}`` mapped to ``t = (i + 1)/T``.

    ``num_steps`` defaults to the path's table size when the path is a
    :class:`~flowgen.paths.DiscreteDDPM`, and must be given otherwise. Sampling raises
    ``ValueError`` if that grid leaves the path's ``[t_min, t_max]``.
    """

    def __init__(self, num_steps: int | None = None):
        if num_steps is not None and not (isinstance(num_steps, int) and num_steps >= 1):
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        self.num_steps = num_steps

    def sample(self, batch, *, path, generator=None, device=None, dtype=torch.float32):
        n = self.num_steps
        if n is None:
            if not isinstance(path, DiscreteDDPM):
                raise ValueError("DiscreteTime needs num_steps unless the path is a DiscreteDDPM")
            n = path.num_steps
        # the grid {1/n, …, 1} must lie inside the path's interval (module contract); e.g. VP (t_min = 1e-3)
        # with n = 2000 would put times at 5e-4, and an AffinePath with t_max < 1 at t = 1
        if 1.0 / n < path.t_min * (1 - 1e-12) or path.t_max < 1.0:
            raise ValueError(
                f"DiscreteTime(num_steps={n}) puts times at (i + 1)/{n} in [{1.0 / n:.6g}, 1], outside the path's "
                f"[t_min, t_max] = [{path.t_min:.6g}, {path.t_max:.6g}]; use fewer steps or UniformTime"
            )
        i = randint(n, (_check_batch_size(batch),), generator=generator, device=device)
        return (i.to(dtype) + 1.0) / n


class LogNormalSigmaTime(TimeDistribution):
    """EDM's ``ln σ̃ ~ N(p_mean, p_std²)`` with ``σ̃ = σ/α``, mapped to ``t`` through the log-SNR.

    ``t`` is clamped to ``[t_min, t_max]`` (for EDM's defaults this moves about 2·10⁻⁵ of the mass).
    """

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        if not (math.isfinite(p_mean) and p_std > 0):
            raise ValueError(f"log-normal sigma needs finite p_mean and p_std > 0, got {p_mean}, {p_std}")
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def sample(self, batch, *, path, generator=None, device=None, dtype=torch.float32):
        z = randn(_check_batch_size(batch), generator=generator, device=device, dtype=dtype)
        log_snr = -2.0 * (self.p_mean + self.p_std * z)
        return path._t_from_log_snr(log_snr).clamp(path.t_min, path.t_max)


_TIMES = {"uniform": UniformTime, "logit_normal": LogitNormalTime, "discrete": DiscreteTime, "log_normal_sigma": LogNormalSigmaTime}


def get_time_distribution(time) -> TimeDistribution:
    """A :class:`TimeDistribution` from an instance or a name (``uniform``, ``logit_normal``, ``discrete``, ``log_normal_sigma``)."""
    if isinstance(time, TimeDistribution):
        return time
    if isinstance(time, str) and time.lower() in _TIMES:
        return _TIMES[time.lower()]()
    raise ValueError(f"unknown time distribution {time!r}; expected a TimeDistribution or one of {sorted(_TIMES)}")
