r"""Exact oracles: Gaussian and Gaussian-mixture data with closed-form posteriors under any path.

For data ``~ N(μ, Σ)`` and ``x_t = α·data + σ·noise``, with ``C_t = α²Σ + σ²I``:

.. math::
    E[\text{data} | x_t] = μ + αΣ C_t^{-1}(x_t − αμ),\quad
    E[\text{noise} | x_t] = σ C_t^{-1}(x_t − αμ),\quad
    ∇\log p_t(x_t) = −C_t^{-1}(x_t − αμ).

Every prediction is affine in ``(data, noise)``, so the optimal model of any prediction type
is that prediction evaluated at the posterior means. The probability-flow ODE of a Gaussian
is linear and solved exactly by :meth:`GaussianData.flow_map`: in the eigenbasis
``Σ = U diag(λ) Uᵀ`` each coordinate of ``x_t − α_t μ`` scales by
``√(α_s²λ + σ_s²) / √(α_t²λ + σ_t²)`` from ``t`` to ``s``.

For a mixture ``Σ_k w_k N(μ_k, Σ_k)`` the posteriors are the component posteriors weighted by
the responsibilities ``r_k(x_t) ∝ w_k N(x_t; αμ_k, α²Σ_k + σ²I)``.

All arithmetic is float64; results come back in the dtype of ``x_t``.

References:
    Karras et al. 2022, arXiv:2206.00364, Appendix B.3 (ideal denoiser);
    Song et al. 2021, arXiv:2011.13456, Sec. 4.3 (probability-flow ODE).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_batch, check_time
from ..parameterization import Prediction, _from_data_noise
from ..paths.base import Path

__all__ = ["GaussianData", "GaussianMixture", "OracleModel"]


def _coefs(path: Path, t: Tensor):
    t64 = t.detach().to("cpu", torch.float64)
    return path._alpha(t64), path._sigma(t64), path._d_alpha(t64), path._d_sigma(t64)


class _Oracle:
    """Shared code: event shape handling and prediction of any kind from posterior means."""

    event_shape: tuple
    dim: int

    def _flat(self, x_t: Tensor, t: Tensor) -> Tensor:
        check_batch(x_t, "x_t")
        if tuple(x_t.shape[1:]) != self.event_shape:
            raise ValueError(f"x_t must have shape (B, {', '.join(map(str, self.event_shape))}), got {tuple(x_t.shape)}")
        check_time(t, "t", batch=x_t.shape[0], device=x_t.device)
        return x_t.reshape(x_t.shape[0], self.dim).to("cpu", torch.float64)

    def _unflat(self, y: Tensor, like: Tensor) -> Tensor:
        return y.reshape(like.shape).to(like.device, like.dtype)

    def posterior(self, x_t: Tensor, t: Tensor, path: Path) -> tuple[Tensor, Tensor]:
        """``(E[data | x_t], E[noise | x_t])``, each ``(B, *D)``."""
        x = self._flat(x_t, t)
        d, n = self._posterior(x, t, path)
        return self._unflat(d, x_t), self._unflat(n, x_t)

    def predict(self, x_t: Tensor, t: Tensor, path: Path, prediction) -> Tensor:
        """The exact (Bayes-optimal) output of a model of kind ``prediction`` at ``(x_t, t)``. ``(B, *D)``."""
        prediction = Prediction.parse(prediction)
        x = self._flat(x_t, t)
        if prediction is Prediction.SCORE:
            return self._unflat(self._score(x, t, path), x_t)
        d, n = self._posterior(x, t, path)
        a, s, da, ds = (c[:, None] for c in _coefs(path, t))
        return self._unflat(_from_data_noise(d, n, prediction, a, s, da, ds), x_t)

    def velocity(self, x_t: Tensor, t: Tensor, path: Path) -> Tensor:
        """The probability-flow velocity ``E[α'·data + σ'·noise | x_t]``. ``(B, *D)``."""
        return self.predict(x_t, t, path, Prediction.VELOCITY)

    def score(self, x_t: Tensor, t: Tensor, path: Path) -> Tensor:
        """``∇ log p_t(x_t)``. ``(B, *D)``."""
        return self.predict(x_t, t, path, Prediction.SCORE)

    def model(self, path: Path, prediction) -> "OracleModel":
        """A callable ``model(x_t, t)`` returning the exact prediction of kind ``prediction``."""
        return OracleModel(self, path, Prediction.parse(prediction))


class OracleModel(torch.nn.Module):
    """An exact model ``(x_t, t) → prediction`` backed by an oracle; counts its calls in ``.calls``."""

    def __init__(self, oracle: _Oracle, path: Path, prediction: Prediction):
        super().__init__()
        self.oracle, self.path, self.prediction = oracle, path, prediction
        self.calls = 0

    def forward(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        self.calls += 1
        return self.oracle.predict(x_t, t, self.path, self.prediction)


class GaussianData(_Oracle):
    """Data ``~ N(mean, cov)`` with exact posteriors, flow map, marginals and log-densities.

    Args:
        mean: ``(*D)`` mean; the event shape of the data.
        cov: ``(d, d)`` symmetric positive-definite covariance with ``d = prod(D)``;
            a scalar or ``(d,)`` vector gives an isotropic or diagonal covariance.
    """

    def __init__(self, mean: Tensor, cov: Tensor | float = 1.0):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        self.event_shape = tuple(mean.shape)
        self.dim = int(mean.numel())
        self.mean = mean.reshape(self.dim)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if cov.dim() == 0:
            cov = cov * torch.eye(self.dim, dtype=torch.float64)
        elif cov.dim() == 1:
            cov = torch.diag(cov)
        if cov.shape != (self.dim, self.dim):
            raise ValueError(f"cov must have shape ({self.dim}, {self.dim}), got {tuple(cov.shape)}")
        if not torch.allclose(cov, cov.T, atol=1e-12):
            raise ValueError("cov must be symmetric")
        self.cov = cov
        self.eigvals, self.eigvecs = torch.linalg.eigh(cov)
        if bool((self.eigvals <= 0).any()):
            raise ValueError("cov must be positive definite")

    @classmethod
    def random(cls, dim: int, *, generator: torch.Generator | None = None, scale: float = 1.0) -> "GaussianData":
        """A random Gaussian in ``dim`` dimensions (mean ~ N(0, 1), well-conditioned covariance)."""
        mean = torch.randn(dim, generator=generator, dtype=torch.float64)
        a = torch.randn(dim, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)
        cov = scale * (a @ a.T + 0.25 * torch.eye(dim, dtype=torch.float64))
        return cls(mean, cov)

    def sample(self, n: int, *, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
        """``n`` data samples ``(n, *D)``."""
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.mean + (z * self.eigvals.sqrt()) @ self.eigvecs.T
        return x.reshape(n, *self.event_shape).to(dtype)

    def _proj(self, x: Tensor) -> Tensor:
        return x @ self.eigvecs

    def _unproj(self, y: Tensor) -> Tensor:
        return y @ self.eigvecs.T

    def _posterior(self, x, t, path):
        a, s, _, _ = (c[:, None] for c in _coefs(path, t))
        y = self._proj(x - a * self.mean)
        lam = self.eigvals[None, :]
        var = a * a * lam + s * s
        data = self.mean + self._unproj(a * lam / var * y)
        noise = self._unproj(s / var * y)
        return data, noise

    def _score(self, x, t, path):
        a, s, _, _ = (c[:, None] for c in _coefs(path, t))
        y = self._proj(x - a * self.mean)
        return -self._unproj(y / (a * a * self.eigvals[None, :] + s * s))

    def marginal(self, t: float, path: Path) -> tuple[Tensor, Tensor]:
        """Mean ``(d,)`` and covariance ``(d, d)`` of ``x_t`` at the scalar time ``t``."""
        a, s, _, _ = _coefs(path, torch.tensor([float(t)], dtype=torch.float64))
        return a[0] * self.mean, a[0] ** 2 * self.cov + s[0] ** 2 * torch.eye(self.dim, dtype=torch.float64)

    def flow_map(self, x_t: Tensor, *, t: Tensor, s: Tensor, path: Path) -> Tensor:
        """Exact probability-flow ODE solution from time ``t`` to time ``s`` (both ``(B,)``). ``(B, *D)``."""
        x = self._flat(x_t, t)
        check_time(s, "s", batch=x.shape[0], device=x.device)
        at, st, _, _ = (c[:, None] for c in _coefs(path, t))
        as_, ss, _, _ = (c[:, None] for c in _coefs(path, s))
        lam = self.eigvals[None, :]
        ratio = torch.sqrt(as_ * as_ * lam + ss * ss) / torch.sqrt(at * at * lam + st * st)
        y = self._proj(x - at * self.mean)
        return self._unflat(as_ * self.mean + self._unproj(ratio * y), x_t)

    def log_prob(self, x: Tensor, *, t: float = 0.0, path: Path | None = None) -> Tensor:
        """Log-density ``(B,)`` of ``x`` under the data (no ``path``) or under the marginal of ``x_t`` at scalar ``t``.

        With a path the marginal is used at every ``t``, ``t = 0`` included: it differs from the data where
        ``σ(0) > 0`` (``RectifiedFlow(sigma_min)``).
        """
        if path is None:
            mean, cov = self.mean, self.cov
        else:
            mean, cov = self.marginal(t, path)
        flat = x.reshape(x.shape[0], self.dim).to("cpu", torch.float64)
        dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
        return dist.log_prob(flat).to(x.device, x.dtype if x.is_floating_point() else torch.float64)


class GaussianMixture(_Oracle):
    """Data from ``Σ_k w_k N(μ_k, Σ_k)`` with exact posteriors and log-densities.

    Args:
        weights: ``(K,)`` positive mixture weights (normalised here).
        means: ``(K, d)`` component means.
        covs: ``(K, d, d)`` covariances, or ``(K,)`` isotropic variances, or a scalar.
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor | float = 1.0):
        w = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        if w.dim() != 1 or bool((w <= 0).any()):
            raise ValueError("weights must be a (K,) tensor of positive numbers")
        if means.dim() != 2 or means.shape[0] != w.shape[0]:
            raise ValueError(f"means must have shape (K, d) with K={w.shape[0]}, got {tuple(means.shape)}")
        k, d = means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        eye = torch.eye(d, dtype=torch.float64)
        if covs.dim() == 0:
            covs = covs * eye.expand(k, d, d)
        elif covs.dim() == 1:
            covs = covs[:, None, None] * eye
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape ({k}, {d}, {d}), got {tuple(covs.shape)}")
        self.weights, self.means, self.covs = w / w.sum(), means, covs.clone()
        self.event_shape, self.dim = (d,), d

    def sample(self, n: int, *, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
        """``n`` samples ``(n, d)``."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)
        return (self.means[comp] + (chol[comp] @ z[:, :, None])[:, :, 0]).to(dtype)

    def _components(self, x, t, path):
        a, s, _, _ = _coefs(path, t)
        eye = torch.eye(self.dim, dtype=torch.float64)
        cov_t = a[:, None, None, None] ** 2 * self.covs[None] + s[:, None, None, None] ** 2 * eye  # (B, K, d, d)
        diff = x[:, None, :] - a[:, None, None] * self.means[None]  # (B, K, d)
        chol = torch.linalg.cholesky(cov_t)
        sol = torch.cholesky_solve(diff[..., None], chol)[..., 0]  # C^{-1}(x − αμ_k)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        logp = -0.5 * ((diff * sol).sum(-1) + logdet + self.dim * math.log(2 * math.pi))
        resp = torch.softmax(torch.log(self.weights)[None] + logp, dim=1)  # (B, K)
        return a, s, sol, resp, logp

    def _posterior(self, x, t, path):
        a, s, sol, resp, _ = self._components(x, t, path)
        data_k = self.means[None] + a[:, None, None] * (self.covs[None] @ sol[..., None])[..., 0]
        noise_k = s[:, None, None] * sol
        return (resp[..., None] * data_k).sum(1), (resp[..., None] * noise_k).sum(1)

    def _score(self, x, t, path):
        _, _, sol, resp, _ = self._components(x, t, path)
        return -(resp[..., None] * sol).sum(1)

    def log_prob(self, x: Tensor, *, t: float = 0.0, path: Path | None = None) -> Tensor:
        """Log-density ``(B,)`` of ``x`` under the data (``t = 0``) or the marginal at scalar ``t``."""
        flat = x.reshape(x.shape[0], self.dim).to("cpu", torch.float64)
        if path is None:
            from ..paths import RectifiedFlow

            path, t = RectifiedFlow(), 0.0
        tt = torch.full((flat.shape[0],), float(t), dtype=torch.float64)
        *_, logp = self._components(flat, tt, path)
        return torch.logsumexp(torch.log(self.weights)[None] + logp, dim=1).to(x.device)
