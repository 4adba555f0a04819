r"""2-D toy distributions, drawn in whole batches on any device from an optional generator.

================  ===========================================================================
name              distribution
================  ===========================================================================
``moons``         two interleaved half circles (radius 1, centres ``(0, 0)`` and ``(1, 0.5)``),
                  Gaussian noise of std 0.1, then centred and scaled by 2: ``2·(m − (0.5, 0.25))``
``8gaussians``    equal mixture of 8 Gaussians of std 0.2 at radius 2, angles ``k·π/4``
``checkerboard``  uniform on the 8 dark cells of a 4×4 board of unit cells on ``[-2, 2]²``
``gmm``           a fixed, unequally weighted 5-component mixture with anisotropic covariances
================  ===========================================================================

``8gaussians`` and ``gmm`` are Gaussian mixtures with a closed-form density: :func:`toy_density`
returns their exact oracle (:class:`flowgen.testing.GaussianMixture`, with ``log_prob`` and the
posteriors under any path), which :func:`flowgen.metrics.log_likelihood` accepts.

References:
    Grathwohl et al. 2019, arXiv:1810.01367 (FFJORD 2-D toys: 8 Gaussians, checkerboard);
    Tong et al. 2024, arXiv:2302.00482 (moons and 8 Gaussians in conditional flow matching).
"""

from __future__ import annotations

import math
import numbers

from .._choice import Choice
from functools import lru_cache

import torch
from torch import Tensor

from ..testing import GaussianMixture

__all__ = ["Toy", "TOY_DATASETS", "sample_toy", "toy_density", "moons", "eight_gaussians", "checkerboard", "gmm"]


class Toy(Choice):
    """The built-in 2-D toy datasets."""

    MOONS = "moons"
    EIGHT_GAUSSIANS = "8gaussians"
    CHECKERBOARD = "checkerboard"
    GMM = "gmm"

    __argname__ = "toy dataset name"

    @classmethod
    def aliases(cls) -> dict:
        return {'eight_gaussians': '8gaussians', 'eightgaussians': '8gaussians', '8_gaussians': '8gaussians', 'two_moons': 'moons', 'twomoons': 'moons'}


#: the names accepted by :func:`sample_toy`.
TOY_DATASETS: tuple[str, ...] = tuple(m.value for m in Toy)


def _setup(n, generator, dtype, device):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    # draw where the generator lives (its device), then move; without one, draw on the target device
    gen_device = generator.device if generator is not None else torch.device(device) if device is not None else torch.device("cpu")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return gen_device, work


def _finish(x: Tensor, dtype, device) -> Tensor:
    return x.to(device=device if device is not None else x.device, dtype=dtype)


def moons(n: int, *, noise: float = 0.1, generator=None, dtype=torch.float32, device=None) -> Tensor:
    """Two interleaved half circles with Gaussian noise, centred and scaled by 2. Returns ``(n, 2)``.

    The two moons get ``⌈n/2⌉`` and ``⌊n/2⌋`` points, in a random order; each point's angle is
    uniform on ``[0, π]``.
    """
    gdev, work = _setup(n, generator, dtype, device)
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    theta = math.pi * torch.rand(n, generator=generator, device=gdev, dtype=work)
    upper = torch.arange(n, device=gdev) < (n + 1) // 2
    upper = upper[torch.randperm(n, generator=generator, device=gdev)]
    x = torch.where(upper, torch.cos(theta), 1.0 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x, y], dim=1) + noise * torch.randn(n, 2, generator=generator, device=gdev, dtype=work)
    pts[:, 0] -= 0.5  # column by column: no host-to-device copy of a constant per call
    pts[:, 1] -= 0.25
    pts = 2.0 * pts
    return _finish(pts, dtype, device)


@lru_cache(maxsize=32)
def _mixture_tensors(build, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``(weights, Cholesky factors, means)`` of the built-in mixture ``build()`` on ``device``, made once
    (on an accelerator each copy would be a host-to-device transfer per training batch)."""
    mix = build()
    return (mix.weights.to(device=device, dtype=dtype), torch.linalg.cholesky(mix.covs).to(device=device, dtype=dtype),
            mix.means.to(device=device, dtype=dtype))


def _sample_mixture(build, n, generator, dtype, device) -> Tensor:
    gdev, work = _setup(n, generator, dtype, device)
    weights, chol, means = _mixture_tensors(build, torch.device(gdev), work)
    comp = torch.multinomial(weights, n, replacement=True, generator=generator) if n else torch.zeros(0, dtype=torch.long, device=gdev)
    z = torch.randn(n, means.shape[1], generator=generator, device=gdev, dtype=work)
    x = means[comp] + (chol[comp] @ z[:, :, None])[:, :, 0]
    return _finish(x, dtype, device)


@lru_cache(maxsize=None)
def _eight_gaussians_mixture(radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(torch.ones(8, dtype=torch.float64), means, torch.full((8,), std**2, dtype=torch.float64))


@lru_cache(maxsize=None)
def _gmm_mixture() -> GaussianMixture:
    weights = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1], dtype=torch.float64)
    means = torch.tensor([[-1.5, -1.0], [1.5, -1.0], [0.0, 1.5], [-1.0, 0.5], [1.8, 1.2]], dtype=torch.float64)

    def cov(sx, sy, rho):
        return [[sx * sx, rho * sx * sy], [rho * sx * sy, sy * sy]]

    covs = torch.tensor(
        [cov(0.4, 0.2, 0.5), cov(0.3, 0.5, -0.6), cov(0.5, 0.25, 0.0), cov(0.2, 0.2, 0.3), cov(0.15, 0.35, -0.4)],
        dtype=torch.float64,
    )
    return GaussianMixture(weights, means, covs)


def eight_gaussians(n: int, *, generator=None, dtype=torch.float32, device=None) -> Tensor:
    """Equal mixture of 8 Gaussians (std 0.2) at radius 2, angles ``k·π/4``. Returns ``(n, 2)``."""
    return _sample_mixture(_eight_gaussians_mixture, n, generator, dtype, device)


def gmm(n: int, *, generator=None, dtype=torch.float32, device=None) -> Tensor:
    """The fixed 5-component anisotropic Gaussian mixture of :func:`toy_density` ``("gmm")``. Returns ``(n, 2)``."""
    return _sample_mixture(_gmm_mixture, n, generator, dtype, device)


def checkerboard(n: int, *, generator=None, dtype=torch.float32, device=None) -> Tensor:
    """Uniform on the 8 dark cells of a 4×4 board of unit cells covering ``[-2, 2]²``. Returns ``(n, 2)``.

    Cell ``(i, j)`` (``i, j ∈ {0..3}``, lower-left corner ``(i − 2, j − 2)``) is dark when
    ``i + j`` is even.
    """
    gdev, work = _setup(n, generator, dtype, device)
    cell = torch.randint(0, 8, (n,), generator=generator, device=gdev)
    i = cell // 2
    j = 2 * (cell % 2) + (i % 2)  # i + j even
    u = torch.rand(n, 2, generator=generator, device=gdev, dtype=work)
    pts = torch.stack([i, j], dim=1).to(work) - 2.0 + u
    return _finish(pts, dtype, device)


_SAMPLERS = {Toy.MOONS: moons, Toy.EIGHT_GAUSSIANS: eight_gaussians, Toy.CHECKERBOARD: checkerboard, Toy.GMM: gmm}


def sample_toy(name, n: int, *, generator: torch.Generator | None = None, dtype=torch.float32, device=None) -> Tensor:
    """Draw ``n`` points of the toy dataset ``name`` (one of :data:`TOY_DATASETS`).

    Args:
        name: ``"moons"``, ``"8gaussians"``, ``"checkerboard"``, ``"gmm"`` or a :class:`Toy`.
        n: number of points.
        generator: optional ``torch.Generator``; the points are drawn on its device (then moved to
            ``device``), so the same generator state gives the same points.
        dtype: floating dtype of the result.
        device: device of the result (default: the generator's device, else CPU).

    Returns:
        ``(n, 2)`` tensor.
    """
    return _SAMPLERS[Toy.parse(name)](n, generator=generator, dtype=dtype, device=device)


def toy_density(name) -> GaussianMixture:
    """The exact density oracle of a toy that is a Gaussian mixture (``"8gaussians"``, ``"gmm"``).

    Returns:
        A :class:`flowgen.testing.GaussianMixture` with ``log_prob(x) → (B,)`` and exact
        posteriors/velocities under any path.

    Raises:
        ValueError: for toys without a Gaussian-mixture density (``moons``, ``checkerboard``).
    """
    toy = Toy.parse(name)
    if toy is Toy.EIGHT_GAUSSIANS:
        return _eight_gaussians_mixture()
    if toy is Toy.GMM:
        return _gmm_mixture()
    raise ValueError(f"toy dataset {toy.value!r} has no closed-form density; toys with one: ['8gaussians', 'gmm']")
