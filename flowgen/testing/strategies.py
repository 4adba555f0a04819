r"""Hypothesis strategies for property-testing paths, predictions and models.

Users import them to check their own schedules and models against the same laws flowgen's
own test suite checks (``tests/paths/test_path_laws.py``)::

    from hypothesis import given, strategies as st
    from flowgen.testing import strategies as fst

    @given(fst.paths(), fst.batch_shapes(), fst.predictions(), data=st.data())
    def test_my_model(path, shape, prediction, data):
        t = data.draw(fst.times(path, shape[0]))
        ...

This module needs ``hypothesis`` (the ``test`` extra). :mod:`flowgen.testing` itself imports
without it: its strategy names are loaded lazily, on first access.

What is drawn:

* :func:`builtin_paths` — every built-in path with randomized valid parameters:
  ``RectifiedFlow(sigma_min ∈ {0, small})``, ``Cosine()``, ``VP(β_min < β_max)``,
  ``DiscreteDDPM.linear/cosine/scaled_linear`` (the standard 1000 steps or a random small
  table size), ``EDM(σ_min < σ_max, σ_data)``. :data:`PATH_FAMILIES` maps each built-in class
  name (and ``"AffinePath"``) to its strategy, so a test can enumerate the families and check
  that every :class:`~flowgen.paths.Path` subclass is covered.
* :func:`user_paths` — random valid :class:`~flowgen.paths.AffinePath` schedules:
  power schedules ``α = c_α(1 − t)^a``, ``σ = c_σ t^b`` (with and without analytic
  derivatives), VP-like ``α = exp(−½kt² − mt)``, ``σ = √(1 − α²)`` and VE-like ``α = 1``,
  ``σ = c t^b``. Their callables are small classes with a readable ``repr``.
* :func:`paths` — either of the above.
* :func:`times` — ``(B,)`` float32/float64 times inside the path's ``[t_min, t_max]`` and
  ``margin`` away from 0 and 1 (where conversions and some derivatives are singular).
* :func:`batch_shapes` — ``(B, *D)`` tuples of rank 1 … 4 with small sizes.
* :func:`predictions`, :func:`dtypes`.
* :func:`data_noise` / :func:`tensors` — tensors drawn from a seeded ``torch.Generator``: hypothesis
  chooses (and shrinks) the seed and a scale, not every element, which keeps examples fast.
* :func:`path_cases` — a whole :class:`PathCase` ``(path, t, data, noise)`` in one draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import hypothesis.strategies as st
import torch
from torch import Tensor

from ..parameterization import Prediction
from ..paths import EDM, VP, AffinePath, Cosine, DiscreteDDPM, Path, RectifiedFlow

__all__ = [
    "PATH_FAMILIES",
    "PathCase",
    "rectified_flows",
    "cosines",
    "vps",
    "discrete_ddpms",
    "edms",
    "builtin_paths",
    "user_paths",
    "paths",
    "predictions",
    "dtypes",
    "batch_shapes",
    "times",
    "seeds",
    "tensors",
    "data_noise",
    "path_cases",
]


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


# --- built-in paths ----------------------------------------------------------------------
def rectified_flows() -> st.SearchStrategy[RectifiedFlow]:
    """``RectifiedFlow()`` or ``RectifiedFlow(sigma_min)`` with a small ``sigma_min ∈ [1e-4, 0.1]``."""
    return st.one_of(st.just(0.0), _floats(1e-4, 0.1)).map(lambda s: RectifiedFlow(sigma_min=s))


def cosines() -> st.SearchStrategy[Cosine]:
    """``Cosine()`` (it has no parameters)."""
    return st.builds(Cosine)


@st.composite
def vps(draw) -> VP:
    """``VP(beta_min, beta_max)`` with ``0.01 ≤ beta_min < beta_max ≤ beta_min + 30``."""
    beta_min = draw(_floats(0.01, 2.0))
    beta_max = beta_min + draw(_floats(0.5, 30.0))
    return VP(beta_min=beta_min, beta_max=beta_max)


@st.composite
def discrete_ddpms(draw) -> DiscreteDDPM:
    """``DiscreteDDPM.linear/cosine/scaled_linear`` with 1000 steps or a random small table (2 … 64 steps)."""
    schedule = draw(st.sampled_from(["linear", "cosine", "scaled_linear"]))
    num_steps = draw(st.one_of(st.just(1000), st.integers(2, 64)))
    return getattr(DiscreteDDPM, schedule)(num_steps=num_steps)


@st.composite
def edms(draw) -> EDM:
    """``EDM(sigma_min, sigma_max, sigma_data)`` with ``1e-3 ≤ σ_min``, ``σ_max ≥ 2 σ_min``, ``σ_max ≤ 200``."""
    sigma_min = draw(_floats(1e-3, 0.5))
    sigma_max = draw(_floats(2.0 * sigma_min, 200.0))
    sigma_data = draw(_floats(0.1, 2.0))
    return EDM(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data)


def builtin_paths() -> st.SearchStrategy[Path]:
    """Every built-in path class, with randomized valid parameters."""
    return st.one_of(rectified_flows(), cosines(), vps(), discrete_ddpms(), edms())


# --- user-defined schedules --------------------------------------------------------------
@dataclass(frozen=True)
class _Power:
    """``scale · u^power`` with ``u = t`` (``flip=False``) or ``u = 1 − t``."""

    scale: float
    power: float
    flip: bool

    def __call__(self, t: Tensor) -> Tensor:
        u = 1.0 - t if self.flip else t
        return self.scale * u**self.power


@dataclass(frozen=True)
class _PowerDerivative:
    """Exact derivative of :class:`_Power`."""

    scale: float
    power: float
    flip: bool

    def __call__(self, t: Tensor) -> Tensor:
        u = 1.0 - t if self.flip else t
        d = self.scale * self.power * u ** (self.power - 1.0) if self.power != 1.0 else torch.full_like(t, self.scale)
        return -d if self.flip else d


@dataclass(frozen=True)
class _VPAlpha:
    """``exp(−½ k t² − m t)``."""

    k: float
    m: float

    def __call__(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.k * t * t - self.m * t)


@dataclass(frozen=True)
class _VPSigma:
    """``√(1 − exp(−k t² − 2 m t))``."""

    k: float
    m: float

    def __call__(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.k * t * t - 2.0 * self.m * t))


@dataclass(frozen=True)
class _VPDAlpha:
    k: float
    m: float

    def __call__(self, t: Tensor) -> Tensor:
        return -(self.k * t + self.m) * torch.exp(-0.5 * self.k * t * t - self.m * t)


@dataclass(frozen=True)
class _VPDSigma:
    k: float
    m: float

    def __call__(self, t: Tensor) -> Tensor:
        a2 = torch.exp(-self.k * t * t - 2.0 * self.m * t)
        return (self.k * t + self.m) * a2 / torch.sqrt(-torch.expm1(-self.k * t * t - 2.0 * self.m * t))


@dataclass(frozen=True)
class _One:
    """The constant 1 (a VE schedule's α); its autograd derivative is 0."""

    def __call__(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)


@st.composite
def _power_paths(draw) -> AffinePath:
    a, b = draw(_floats(0.5, 3.0)), draw(_floats(0.5, 3.0))
    ca, cs = draw(_floats(0.5, 2.0)), draw(_floats(0.5, 2.0))
    # a power below 1 has an infinite derivative at its zero: keep generation away from it
    t_min = 1e-2 if b < 1.0 else 0.0
    t_max = 1.0 - 1e-2 if a < 1.0 else 1.0
    analytic = draw(st.booleans())
    kwargs = {}
    if analytic:
        kwargs = {"d_alpha": _PowerDerivative(ca, a, True), "d_sigma": _PowerDerivative(cs, b, False)}
    return AffinePath(alpha=_Power(ca, a, True), sigma=_Power(cs, b, False), t_min=t_min, t_max=t_max, **kwargs)


@st.composite
def _vp_like_paths(draw) -> AffinePath:
    k, m = draw(_floats(0.5, 20.0)), draw(_floats(0.05, 1.0))
    analytic = draw(st.booleans())
    kwargs = {"d_alpha": _VPDAlpha(k, m), "d_sigma": _VPDSigma(k, m)} if analytic else {}
    return AffinePath(alpha=_VPAlpha(k, m), sigma=_VPSigma(k, m), t_min=1e-3, **kwargs)


@st.composite
def _ve_like_paths(draw) -> AffinePath:
    c, b = draw(_floats(0.5, 50.0)), draw(_floats(1.0, 2.0))
    return AffinePath(alpha=_One(), sigma=_Power(c, b, False), t_min=1e-3)


def user_paths() -> st.SearchStrategy[AffinePath]:
    """Random valid user schedules as :class:`~flowgen.paths.AffinePath` (see the module docstring)."""
    return st.one_of(_power_paths(), _vp_like_paths(), _ve_like_paths())


def paths() -> st.SearchStrategy[Path]:
    """A built-in path or a random valid user schedule."""
    return st.one_of(builtin_paths(), user_paths())


#: Path class name → zero-argument factory of its strategy (built-ins and ``AffinePath``).
PATH_FAMILIES: dict[str, Callable[[], st.SearchStrategy[Path]]] = {
    "RectifiedFlow": rectified_flows,
    "Cosine": cosines,
    "VP": vps,
    "DiscreteDDPM": discrete_ddpms,
    "EDM": edms,
    "AffinePath": user_paths,
}


# --- predictions, dtypes, shapes ---------------------------------------------------------
def predictions() -> st.SearchStrategy[Prediction]:
    """Any :class:`~flowgen.Prediction` member."""
    return st.sampled_from(list(Prediction))


def dtypes() -> st.SearchStrategy[torch.dtype]:
    """``torch.float32`` or ``torch.float64``."""
    return st.sampled_from([torch.float32, torch.float64])


def batch_shapes(*, min_rank: int = 1, max_rank: int = 4, min_batch: int = 1, max_batch: int = 4, max_side: int = 3):
    """Shapes ``(B, *D)`` of rank ``min_rank … max_rank`` (rank 1 is ``(B,)``, scalar data), small sizes."""
    if not (1 <= min_rank <= max_rank):
        raise ValueError(f"need 1 <= min_rank <= max_rank, got min_rank={min_rank}, max_rank={max_rank}")
    return st.tuples(
        st.integers(min_batch, max_batch),
        st.lists(st.integers(1, max_side), min_size=min_rank - 1, max_size=max_rank - 1),
    ).map(lambda bd: (bd[0], *bd[1]))


# --- times and tensors -------------------------------------------------------------------
def times(path: Path, batch: int, *, margin: float = 1e-3, dtype: torch.dtype | None = None, device=None):
    """``(batch,)`` times in ``[max(t_min, margin), min(t_max, 1 − margin)]``.

    Args:
        path: the path whose generation interval bounds the times.
        batch: ``B``.
        margin: distance kept from ``t = 0`` and ``t = 1`` (where conversions divide by zero
            on some paths); ``0`` allows the ends.
        dtype: ``torch.float32``/``torch.float64``; drawn from both when ``None``.
        device: device of the returned tensor.
    """
    lo = max(float(path.t_min), margin)
    hi = min(float(path.t_max), 1.0 - margin)
    if not lo <= hi:
        raise ValueError(f"margin={margin} leaves no times inside the path's [t_min, t_max] = [{path.t_min}, {path.t_max}]")
    dtype_st = dtypes() if dtype is None else st.just(dtype)
    values = st.lists(_floats(lo, hi), min_size=batch, max_size=batch)

    def build(args):
        vals, dt = args
        t = torch.tensor(vals, dtype=torch.float64).clamp(lo, hi).to(dt)
        return t.to(device) if device is not None else t

    return st.tuples(values, dtype_st).map(build)


def seeds() -> st.SearchStrategy[int]:
    """Seeds for a ``torch.Generator``."""
    return st.integers(0, 2**31 - 1)


def tensors(shape, *, dtype: torch.dtype = torch.float64, scale: tuple[float, float] = (0.1, 3.0), device=None):
    """Standard-normal tensors of ``shape`` times a random scale in ``scale``, from a seeded generator."""

    def build(args):
        seed, sc = args
        g = torch.Generator().manual_seed(seed)
        x = sc * torch.randn(tuple(shape), generator=g, dtype=torch.float64)
        x = x.to(dtype)
        return x.to(device) if device is not None else x

    return st.tuples(seeds(), _floats(*scale)).map(build)


def data_noise(shape, *, dtype: torch.dtype = torch.float64, device=None):
    """A pair ``(data, noise)`` of ``shape``: data with a random scale and mean shift, noise standard normal."""

    def build(args):
        seed, sc, shift = args
        g = torch.Generator().manual_seed(seed)
        data = shift + sc * torch.randn(tuple(shape), generator=g, dtype=torch.float64)
        noise = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
        out = data.to(dtype), noise.to(dtype)
        return tuple(x.to(device) for x in out) if device is not None else out

    return st.tuples(seeds(), _floats(0.1, 3.0), _floats(-2.0, 2.0)).map(build)


@dataclass(frozen=True)
class PathCase:
    """One drawn test case: a path, times ``(B,)`` and data, noise ``(B, *D)`` of one dtype."""

    path: Path
    t: Tensor
    data: Tensor
    noise: Tensor


@st.composite
def path_cases(
    draw,
    path_strategy: st.SearchStrategy[Path] | None = None,
    *,
    shapes: st.SearchStrategy[tuple] | None = None,
    dtype: torch.dtype | None = None,
    margin: float = 1e-3,
    device=None,
) -> PathCase:
    """A :class:`PathCase`: path (from ``path_strategy``, default :func:`paths`), shape, dtype, times and tensors."""
    path = draw(path_strategy if path_strategy is not None else paths())
    shape = draw(shapes if shapes is not None else batch_shapes())
    dt = draw(dtypes()) if dtype is None else dtype
    t = draw(times(path, shape[0], margin=margin, dtype=dt, device=device))
    data, noise = draw(data_noise(shape, dtype=dt, device=device))
    return PathCase(path=path, t=t, data=data, noise=noise)

