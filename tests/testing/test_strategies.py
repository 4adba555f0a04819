"""The public hypothesis strategies draw what their docstrings promise; flowgen.testing imports without hypothesis."""

from __future__ import annotations

import pytest
import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st

import flowgen.testing
from flowgen.parameterization import Prediction
from flowgen.paths import EDM, VP, AffinePath, Cosine, DiscreteDDPM, Path, RectifiedFlow
from flowgen.testing import strategies as fst


def test_lazy_names_resolve_to_the_strategies_module():
    assert flowgen.testing.strategies is fst
    for name in fst.__all__:
        assert getattr(flowgen.testing, name) is getattr(fst, name)
        assert name in dir(flowgen.testing)
    assert set(flowgen.testing.__all__) == {"GaussianData", "GaussianMixture", "OracleModel", "HostReads"}  # star-import needs no hypothesis
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        flowgen.testing.nope  # noqa: B018


@given(fst.builtin_paths())
def test_builtin_paths_are_valid_builtins(path):
    assert isinstance(path, (RectifiedFlow, Cosine, VP, DiscreteDDPM, EDM))
    if isinstance(path, RectifiedFlow):
        assert path.sigma_min == 0.0 or 1e-4 <= path.sigma_min <= 0.1
    if isinstance(path, VP):
        assert 0 < path.beta_min < path.beta_max
    if isinstance(path, EDM):
        assert 0 < path.sigma_min < path.sigma_max
    if isinstance(path, DiscreteDDPM):
        assert path.name in ("linear", "cosine", "scaled_linear") and (path.num_steps == 1000 or 2 <= path.num_steps <= 64)


@given(fst.user_paths())
def test_user_paths_are_valid_affine_paths(path):
    assert isinstance(path, AffinePath)
    t = torch.linspace(path.t_min, path.t_max, 33, dtype=torch.float64)
    for c in path.coefficients(t):
        assert torch.isfinite(c).all()
    lam = path.log_snr(t[1:-1])
    assert (lam[1:] < lam[:-1]).all()
    assert repr(path).startswith("AffinePath(alpha=")


@pytest.mark.parametrize(
    "strategy, predicate",
    [(fst.paths, lambda p, name=name: type(p).__name__ == name) for name in ("RectifiedFlow", "Cosine", "VP", "DiscreteDDPM", "EDM")]
    + [(fst.user_paths, lambda p, kind=kind: type(p._alpha_fn).__name__ == kind) for kind in ("_Power", "_VPAlpha", "_One")]
    + [(fst.rectified_flows, lambda p: p.sigma_min > 0), (fst.discrete_ddpms, lambda p: p.num_steps < 1000)],
)
def test_every_family_and_kind_is_drawn(strategy, predicate):
    find(strategy(), predicate, settings=settings(database=None, max_examples=500))


@given(fst.paths(), st.integers(0, 5), st.floats(0.0, 0.1), st.data())
def test_times_respect_interval_margin_and_dtype(path, batch, margin, data):
    for dtype in (torch.float32, torch.float64):
        t = data.draw(fst.times(path, batch, margin=margin, dtype=dtype))
        assert t.shape == (batch,) and t.dtype == dtype
        lo, hi = max(path.t_min, margin), min(path.t_max, 1 - margin)
        assert ((t >= torch.tensor(lo, dtype=dtype)) & (t <= torch.tensor(hi, dtype=dtype))).all()
        path.alpha(t)  # valid input
    t = data.draw(fst.times(path, 3))
    assert t.dtype in (torch.float32, torch.float64)


def test_times_refuses_an_empty_interval():
    with pytest.raises(ValueError, match="margin=0.6 leaves no times"):
        fst.times(Cosine(), 2, margin=0.6)


@given(fst.batch_shapes(), fst.batch_shapes(min_rank=2, max_rank=2, max_batch=1, max_side=1))
def test_batch_shapes(shape, small):
    assert 1 <= len(shape) <= 4 and 1 <= shape[0] <= 4 and all(1 <= d <= 3 for d in shape[1:])
    assert small == (1, 1)


def test_batch_shapes_refuses_bad_ranks():
    with pytest.raises(ValueError, match="min_rank"):
        fst.batch_shapes(min_rank=0)
    with pytest.raises(ValueError, match="max_rank"):
        fst.batch_shapes(min_rank=3, max_rank=2)


@given(fst.predictions(), fst.dtypes())
def test_predictions_and_dtypes(prediction, dtype):
    assert isinstance(prediction, Prediction)
    assert dtype in (torch.float32, torch.float64)


@given(fst.batch_shapes(), fst.dtypes(), st.data())
def test_tensors_and_data_noise(shape, dtype, data):
    x = data.draw(fst.tensors(shape, dtype=dtype))
    d, n = data.draw(fst.data_noise(shape, dtype=dtype))
    for v in (x, d, n):
        assert v.shape == shape and v.dtype == dtype and torch.isfinite(v).all()


@given(fst.path_cases())
def test_path_cases_are_consistent(case):
    assert isinstance(case.path, Path)
    assert case.t.dtype == case.data.dtype == case.noise.dtype
    assert case.t.shape == (case.data.shape[0],) and case.data.shape == case.noise.shape
    case.path.sample(data=case.data, noise=case.noise, t=case.t)


def test_user_can_property_test_a_schedule_with_the_kit():
    """The README's promise: a user checks their own schedule against a law in a few lines."""
    mine = AffinePath(alpha=lambda t: 1 - t**2, sigma=lambda t: t)

    @given(fst.times(mine, 4, margin=1e-2, dtype=torch.float64))
    def lam_inverse_round_trips(t):
        torch.testing.assert_close(mine.t_from_log_snr(mine.log_snr(t)), t)

    lam_inverse_round_trips()


# flowgen.testing importing without hypothesis is checked in tests/test_core_imports.py (one subprocess).
