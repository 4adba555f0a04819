r"""Sample-based distances between distributions: exact W2, MMD, Fréchet distance, log-likelihood.

* :func:`wasserstein2` / :func:`w2_squared` — exact 2-Wasserstein distance between two
  equal-size point clouds with uniform weights. By Birkhoff–von Neumann the optimal plan is a
  permutation, found exactly on the squared-distance matrix by :func:`flowgen._ot.assignment`
  (POT's network simplex): ``W2² = min_π (1/N) Σ_i ‖x_i − y_π(i)‖²``. ``O(N²)`` memory; 2000 2-D
  points take about 0.4 s on one CPU core; 1-D data uses the sorted matching instead.
* :func:`sliced_w2_squared` — squared W2 averaged over random 1-D projections, each solved by
  sorting: ``O(L·N log N)``, so it takes 10⁴–10⁵ points where exact W2 takes 10³ (lower variance
  for the same time; a different distance, not an estimate of W2).
* :func:`mmd` — unbiased estimate of ``MMD²`` with a sum of Gaussian (RBF) or inverse
  multiquadric kernels over several bandwidths.
* :func:`frechet_distance` — ``‖μ_x − μ_y‖² + tr(Σ_x + Σ_y − 2 (Σ_x^{1/2} Σ_y Σ_x^{1/2})^{1/2})``,
  the W2² between the Gaussians fitted to two feature sets, computed with symmetric
  eigen-decompositions (no complex ``sqrtm`` round-off).
* :func:`log_likelihood` — mean log-density of samples under a known density.

All take tensors ``(N, *D)``, compute in float64 and return Python floats (``reduction="none"``
returns a tensor where stated).

References:
    Villani 2009, Optimal Transport, Thm 4.1 and Birkhoff's theorem (discrete OT is an assignment);
    Gretton et al. 2012, JMLR 13 "A Kernel Two-Sample Test", Lemma 6 and eq. (3) (unbiased MMD²);
    Dowson & Landau 1982 (Fréchet distance between Gaussians);
    Heusel et al. 2017, arXiv:1706.08500 (FID);
    Bonneel et al. 2015, J. Math. Imaging Vis. 51 "Sliced and Radon Wasserstein barycenters" (sliced W2).
"""

from __future__ import annotations

import math

from .._choice import Choice
from .._ot import assignment

import torch
from torch import Tensor

__all__ = [
    "wasserstein2",
    "w2_squared",
    "sliced_w2_squared",
    "mmd",
    "Kernel",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "log_likelihood",
]


def _points(x, name: str, *, min_n: int = 1) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, *D), got {type(x).__name__}")
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a real tensor, got dtype {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{name} must have shape (N, *D), got a scalar")
    if x.shape[0] < min_n:
        raise ValueError(f"{name} must hold at least {min_n} point(s), got shape {tuple(x.shape)}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (a shape without values); expected points with values")
    flat = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{name} holds {int((~torch.isfinite(flat)).sum())} NaN/Inf value(s); expected finite points")
    return flat


def _pair(x, y, name_x: str = "x", name_y: str = "y", *, min_n: int = 1) -> tuple[Tensor, Tensor]:
    a, b = _points(x, name_x, min_n=min_n), _points(y, name_y, min_n=min_n)
    if tuple(x.shape[1:]) != tuple(y.shape[1:]):
        raise ValueError(
            f"{name_x} has shape {tuple(x.shape)} and {name_y} has shape {tuple(y.shape)}; expected the same point shape (N, *D)"
        )
    return a, b.to(a.device)


def w2_squared(x: Tensor, y: Tensor) -> float:
    """Exact squared 2-Wasserstein distance between two equal-size point clouds.

    Args:
        x: ``(N, *D)`` points (flattened to ``(N, d)``), uniform weights.
        y: ``(N, *D)`` points.

    Returns:
        ``min_π (1/N) Σ_i ‖x_i − y_π(i)‖²`` over permutations ``π`` (a float).

    References:
        Villani 2009, Optimal Transport (discrete OT with uniform weights is an assignment problem).
    """
    a, b = _pair(x, y)
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"x has {a.shape[0]} points and y has {b.shape[0]}; exact W2 by assignment needs equal sizes (subsample the larger)"
        )
    if a.shape[1] == 1:
        # in one dimension the monotone (sorted) matching is optimal, O(N log N); the assignment
        # solver is very slow on the massively tied 1-D cost matrices
        return float((a[:, 0].sort().values - b[:, 0].sort().values).pow(2).mean())
    cost = torch.cdist(a, b).pow(2).cpu().numpy()
    # cdist can round tiny distances; recompute the matched costs exactly
    cols = torch.as_tensor(assignment(cost), device=a.device)
    return float((a - b[cols]).pow(2).sum(1).mean())


def wasserstein2(x: Tensor, y: Tensor) -> float:
    """Exact 2-Wasserstein distance ``sqrt(w2_squared(x, y))`` between equal-size point clouds ``(N, *D)``.

    References:
        Villani 2009, Optimal Transport, Def. 6.1 and Birkhoff's theorem.
    """
    return math.sqrt(max(w2_squared(x, y), 0.0))


def sliced_w2_squared(x: Tensor, y: Tensor, *, projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced squared 2-Wasserstein distance between two equal-size point clouds.

    ``SW2² = E_θ[W2²(θᵀx, θᵀy)]`` over directions ``θ`` uniform on the unit sphere, estimated with
    ``projections`` random directions; each 1-D distance is exact (sorted matching). For ``d = 1``
    it equals :func:`w2_squared`. Between ``N(0, I)`` and ``N(m, I)`` it is ``‖m‖²/d`` in the limit
    of many points and directions.

    Args:
        x: ``(N, *D)`` points (flattened to ``(N, d)``), uniform weights.
        y: ``(N, *D)`` points.
        projections: number of random directions ``L`` (keyword-only).
        generator: draws the directions (pass a seeded one to compare several ``x`` on the same directions).

    Returns:
        A float: the mean over the ``L`` directions of ``(1/N) Σ_i (sort(θᵀx)_i − sort(θᵀy)_i)²``.

    References:
        Bonneel, Rabin, Peyré & Pfister 2015, J. Math. Imaging Vis. 51, "Sliced and Radon Wasserstein barycenters".
    """
    a, b = _pair(x, y)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x has {a.shape[0]} points and y has {b.shape[0]}; sliced W2 needs equal sizes (subsample the larger)")
    if isinstance(projections, bool) or not isinstance(projections, int) or projections < 1:
        raise ValueError(f"projections must be a positive int, got {projections!r}")
    d = a.shape[1]
    if d == 1:
        theta = torch.ones(1, 1, dtype=torch.float64, device=a.device)
    else:
        theta = torch.randn(d, projections, generator=generator, dtype=torch.float64).to(a.device)
        theta = theta / theta.norm(dim=0, keepdim=True)
    pa, pb = (a @ theta).sort(0).values, (b @ theta).sort(0).values
    return float((pa - pb).pow(2).mean())


class Kernel(Choice):
    """Kernels for :func:`mmd`: ``RBF`` ``exp(−d²/(2h²))``, ``IMQ`` ``h²/(h² + d²)``."""

    RBF = "rbf"
    IMQ = "imq"

    __argname__ = "kernel"

    @classmethod
    def aliases(cls) -> dict:
        return {'gaussian': 'rbf'}


def _kernel_sum(a: Tensor, b: Tensor, kernel: Kernel, bw: Tensor, *, exclude_diag: bool, chunk: int = 2048) -> Tensor:
    """``Σ_{i,j} k(a_i, b_j)`` (without ``i = j`` when ``exclude_diag``), summed over the bandwidths, in chunks."""
    total = a.new_zeros(())
    for start in range(0, a.shape[0], chunk):
        d2 = torch.cdist(a[start : start + chunk], b).pow(2)[..., None]  # (c, m, 1)
        k = torch.exp(-d2 / (2 * bw * bw)) if kernel is Kernel.RBF else (bw * bw) / (bw * bw + d2)
        k = k.sum(-1)
        if exclude_diag:
            idx = torch.arange(start, min(start + chunk, a.shape[0]), device=a.device)
            k[idx - start, idx] = 0.0
        total = total + k.sum()
    return total


def _median_distance(a: Tensor, b: Tensor, max_points: int = 2000) -> float:
    pooled = torch.cat([a[:max_points], b[:max_points]])
    d = torch.pdist(pooled)
    med = float(d.median()) if d.numel() else 1.0
    return med if med > 0 else 1.0


def mmd(x: Tensor, y: Tensor, kernel="rbf", bandwidths=None, *, squared: bool = True) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy between samples ``x`` and ``y``.

    With ``k = Σ_h k_h`` summed over the bandwidths ``h``:

    * equal sizes ``N``: the paired U-statistic
      ``1/(N(N−1)) Σ_{i≠j} [k(x_i,x_j) + k(y_i,y_j) − k(x_i,y_j) − k(x_j,y_i)]`` (Gretton et al.
      2012, Lemma 6), exactly 0 when ``x`` and ``y`` are the same set in the same order;
    * different sizes: ``mean_{i≠j} k(x_i,x_j) + mean_{i≠j} k(y_i,y_j) − 2 mean_{i,j} k(x_i,y_j)`` (eq. 3).

    Both are unbiased, so the estimate can be slightly negative when the distributions agree.

    Args:
        x: ``(N, *D)`` samples (at least 2).
        y: ``(M, *D)`` samples (at least 2).
        kernel: ``"rbf"`` (Gaussian ``exp(−d²/2h²)``) or ``"imq"`` (``h²/(h²+d²)``), or a :class:`Kernel`.
        bandwidths: a float or a sequence of positive floats; ``None`` uses the median pairwise
            distance ``m`` of the pooled samples times ``(0.25, 0.5, 1, 2, 4)``. Fix the
            bandwidths when comparing several models against one reference set.
        squared: return ``MMD²`` (default); ``False`` returns ``sqrt(max(MMD², 0))``.

    Returns:
        A float.

    References:
        Gretton et al. 2012, JMLR 13, Lemma 6 and eq. (3).
    """
    kernel = Kernel.parse(kernel)
    a, b = _pair(x, y, min_n=2)
    if bandwidths is None:
        med = _median_distance(a, b)
        bw_list = [med * f for f in (0.25, 0.5, 1.0, 2.0, 4.0)]
    else:
        bw_list = [bandwidths] if isinstance(bandwidths, (int, float)) else list(bandwidths)
        if not bw_list or any(not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0 for h in bw_list):
            raise ValueError(f"bandwidths must be a positive float or a non-empty sequence of them, got {bandwidths!r}")
    bw = torch.tensor(bw_list, dtype=torch.float64, device=a.device)
    n, m = a.shape[0], b.shape[0]
    kxx = _kernel_sum(a, a, kernel, bw, exclude_diag=True) / (n * (n - 1))
    kyy = _kernel_sum(b, b, kernel, bw, exclude_diag=True) / (m * (m - 1))
    if n == m:
        kxy = _kernel_sum(a, b, kernel, bw, exclude_diag=True) / (n * (n - 1))
    else:
        kxy = _kernel_sum(a, b, kernel, bw, exclude_diag=False) / (n * m)
    value = float(kxx + kyy - 2 * kxy)
    return value if squared else math.sqrt(max(value, 0.0))


def gaussian_stats(features: Tensor, name: str = "features") -> tuple[Tensor, Tensor]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` (float64) of features ``(N, d)``, ``N ≥ 2``."""
    if isinstance(features, Tensor) and features.dim() != 2:
        raise ValueError(f"{name} must have shape (N, d), got {tuple(features.shape)}")
    f = _points(features, name, min_n=2)
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def _psd_eigvals(vals: Tensor) -> Tensor:
    """Clip eigenvalues of a PSD matrix below its round-off level (``d · eps · max|λ|``) to zero.

    ``eigh`` returns each eigenvalue with an absolute error of about ``eps · ‖M‖``; taking the square
    root of such noise (``√1e-16 = 1e-8`` per eigenvalue) would otherwise bias the trace of a
    rank-deficient covariance.
    """
    tol = vals.shape[-1] * torch.finfo(vals.dtype).eps * vals.abs().max().clamp_min(torch.finfo(vals.dtype).tiny)
    return torch.where(vals > tol, vals, torch.zeros_like(vals))


def _psd_sqrt(mat: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((mat + mat.T) / 2)
    return (vecs * _psd_eigvals(vals).sqrt()) @ vecs.T


def frechet_distance_from_stats(mu_x: Tensor, cov_x: Tensor, mu_y: Tensor, cov_y: Tensor) -> float:
    """Fréchet distance ``‖μ_x − μ_y‖² + tr(Σ_x + Σ_y − 2 (Σ_x^{1/2} Σ_y Σ_x^{1/2})^{1/2})``.

    ``tr((Σ_x Σ_y)^{1/2})`` equals ``Σ_i sqrt(λ_i)`` for the eigenvalues ``λ_i ≥ 0`` of the symmetric
    PSD matrix ``Σ_x^{1/2} Σ_y Σ_x^{1/2}``; both square roots use ``eigh`` with eigenvalues below
    the round-off level clipped to zero, so the result is real and stable for singular covariances.

    Args:
        mu_x, mu_y: ``(d,)`` means. cov_x, cov_y: ``(d, d)`` symmetric PSD covariances.

    Returns:
        A float ``≥ 0`` (up to round-off), the squared W2 between ``N(μ_x, Σ_x)`` and ``N(μ_y, Σ_y)``.

    References:
        Dowson & Landau 1982; Heusel et al. 2017, arXiv:1706.08500, eq. (6).
    """
    mu_x, mu_y, cov_x, cov_y = (torch.as_tensor(v, dtype=torch.float64) for v in (mu_x, mu_y, cov_x, cov_y))
    d = mu_x.shape[0] if mu_x.dim() == 1 else -1
    for name, v, shape in (("mu_x", mu_x, (d,)), ("mu_y", mu_y, (d,)), ("cov_x", cov_x, (d, d)), ("cov_y", cov_y, (d, d))):
        if tuple(v.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (d from mu_x), got {tuple(v.shape)}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} holds NaN/Inf values")
    cov_y = cov_y.to(cov_x.device)
    sx = _psd_sqrt(cov_x)
    inner = sx @ cov_y @ sx
    tr_sqrt = _psd_eigvals(torch.linalg.eigvalsh((inner + inner.T) / 2)).sqrt().sum()
    diff = (mu_x - mu_y.to(mu_x.device)).pow(2).sum()
    return float(diff + torch.trace(cov_x) + torch.trace(cov_y) - 2 * tr_sqrt)


def frechet_distance(features_x: Tensor, features_y: Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets ``(N, d)`` and ``(M, d)``.

    The means and unbiased covariances are computed in float64 and passed to
    :func:`frechet_distance_from_stats`. With image-classifier features this is FID.

    References:
        Heusel et al. 2017, arXiv:1706.08500.
    """
    if isinstance(features_x, Tensor) and isinstance(features_y, Tensor) and features_x.dim() == 2 == features_y.dim():
        if features_x.shape[1] != features_y.shape[1]:
            raise ValueError(
                f"features_x has shape {tuple(features_x.shape)} and features_y {tuple(features_y.shape)}; expected the same d"
            )
    mx, cx = gaussian_stats(features_x, "features_x")
    my, cy = gaussian_stats(features_y, "features_y")
    return frechet_distance_from_stats(mx, cx, my, cy)


def log_likelihood(x: Tensor, density, *, reduction: str = "mean"):
    """Log-likelihood of samples under a known density.

    Args:
        x: ``(N, *D)`` samples.
        density: an object with ``log_prob(x) → (N,)``, e.g. :func:`flowgen.data.toy_density` or a
            :class:`flowgen.testing.GaussianData`/``GaussianMixture`` oracle, or a
            ``torch.distributions.Distribution``.
        reduction: ``"mean"`` (a float, the average log-density in nats), ``"sum"`` (a float) or
            ``"none"`` (the ``(N,)`` float64 tensor).

    Raises:
        TypeError: ``density`` without ``log_prob``. ValueError: shape mismatch with the density's
            event shape, non-finite samples, or a density that returns a wrong shape.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not callable(getattr(density, "log_prob", None)):
        raise TypeError(f"density must have a log_prob method, got {type(density).__name__}")
    _points(x, "x")
    event_shape = getattr(density, "event_shape", None)
    if event_shape is not None and tuple(x.shape[1:]) != tuple(event_shape):
        raise ValueError(f"x has shape {tuple(x.shape)} but the density's event shape is {tuple(event_shape)}")
    lp = density.log_prob(x.detach().to(torch.float64))
    if not isinstance(lp, Tensor) or lp.shape != (x.shape[0],):
        raise ValueError(f"density.log_prob returned shape {getattr(lp, 'shape', None)}; expected ({x.shape[0]},)")
    lp = lp.to(torch.float64)
    if reduction == "none":
        return lp
    return float(lp.mean() if reduction == "mean" else lp.sum())
