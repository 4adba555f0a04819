"""Independent reference formulas for the built-in paths (numpy, float64), and test helpers.

The formulas are written from the papers, not from flowgen's code, so that a law test
comparing the two catches a wrong coefficient.
"""

from __future__ import annotations

import numpy as np
import torch

from flowgen.paths import EDM, VP, AffinePath, Cosine, DiscreteDDPM, Path, RectifiedFlow


def reference_alpha_sigma(path: Path, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """α(t), σ(t) in float64 from each path's defining formula."""
    t = np.asarray(t, dtype=np.float64)
    if isinstance(path, RectifiedFlow):  # Liu et al. 2022; Lipman et al. 2022 eq. (22), time reversed
        return 1.0 - t, path.sigma_min + (1.0 - path.sigma_min) * t
    if isinstance(path, Cosine):
        return np.cos(0.5 * np.pi * t), np.sin(0.5 * np.pi * t)
    if isinstance(path, VP):  # Song et al. 2021, eq. (33): mean coefficient exp(-¼t²Δβ - ½tβ_min)
        log_mean = -0.25 * t**2 * (path.beta_max - path.beta_min) - 0.5 * t * path.beta_min
        return np.exp(log_mean), np.sqrt(1.0 - np.exp(2.0 * log_mean))
    if isinstance(path, EDM):
        return np.ones_like(t), path.sigma_max * t
    if isinstance(path, DiscreteDDPM):
        betas = path.betas.numpy()
        log_abar = np.concatenate([[0.0], np.log(np.cumprod(1.0 - betas))])
        grid = np.arange(path.num_steps + 1) / path.num_steps
        la = np.interp(t, grid, log_abar)
        return np.exp(0.5 * la), np.sqrt(-np.expm1(la))
    if isinstance(path, AffinePath):
        tt = torch.as_tensor(t)
        return path._alpha_fn(tt).double().numpy(), path._sigma_fn(tt).double().numpy()
    raise NotImplementedError(f"no reference formula for {type(path).__name__}")


def knots(path: Path) -> np.ndarray:
    """Times where the path's derivatives jump (DDPM grid points); empty for smooth paths."""
    if isinstance(path, DiscreteDDPM):
        return np.arange(path.num_steps + 1) / path.num_steps
    return np.empty(0)


def fd_points(path: Path, t: torch.Tensor, h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t_lo, t_hi)`` for a finite difference at ``t`` (float64): central away from knots.

    Beside a knot the difference is one-sided: on the right (the side flowgen documents for
    DDPM derivatives at a knot) unless a knot lies in ``(t, t + h]`` or ``t + h > 1``, then
    on the left.
    """
    k = knots(path)
    lo, hi = (t - h).clone(), (t + h).clone()
    h1 = h * 1e-2  # one-sided differences are first order: a smaller step keeps their error at the central one's level
    for i, ti in enumerate(t.tolist()):
        if not ((k > ti - h) & (k < ti + h)).any():
            continue
        # a knot within 1e-12 of t counts as t itself: flowgen places such a t on the knot (t·T rounds to
        # the knot's index), so its derivative is the right-hand one (seen with t = 0.99 − 1 ulp)
        if ti + h1 <= 1.0 and not ((k > ti + 1e-12) & (k <= ti + h1)).any():
            lo[i], hi[i] = ti, ti + h1
        else:
            lo[i], hi[i] = ti - h1, ti
    return lo, hi
