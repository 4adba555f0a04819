"""The exact assignment solver: POT's network simplex agrees with scipy's optimum, ties and fallbacks included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from flowgen import _ot
from flowgen._ot import assignment


def _optimum(cost: np.ndarray) -> float:
    r, c = linear_sum_assignment(cost)
    return float(cost[r, c].sum())


def _check(cost: np.ndarray, cols: np.ndarray) -> None:
    n = cost.shape[0]
    assert cols.shape == (n,) and cols.dtype == np.int64
    assert sorted(cols.tolist()) == list(range(n))  # a permutation
    assert float(cost[np.arange(n), cols].sum()) == pytest.approx(_optimum(cost), rel=1e-12, abs=1e-12)


def test_network_simplex_solves_above_the_small_size(monkeypatch):
    pytest.importorskip("ot")
    calls = []
    emd = _ot._network_simplex()

    def spy(*args, **kwargs):
        calls.append(args[2].shape[0])
        return emd(*args, **kwargs)

    monkeypatch.setattr(_ot, "_network_simplex", lambda: spy)
    rng = np.random.default_rng(0)
    for n in (_ot.SMALL, _ot.SMALL + 1):
        cost = rng.random((n, n))
        _check(cost, assignment(cost))
    assert calls == [_ot.SMALL + 1]  # scipy up to SMALL, the network simplex above


@settings(max_examples=25)
@given(st.integers(_ot.SMALL + 1, 200), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_matches_scipys_optimum_on_point_clouds(n, dim, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, dim)) + 1.0, rng.normal(size=(n, dim))
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    _check(cost, assignment(cost))


@pytest.mark.parametrize("n", [3, 70, 150])
def test_massive_ties_still_give_an_optimal_permutation(n):
    rng = np.random.default_rng(n)
    cost = rng.integers(0, 3, size=(n, n)).astype(np.float64)  # few distinct values: many optimal plans
    _check(cost, assignment(cost))
    points = np.repeat(rng.normal(size=(n // 3 + 1, 2)), 3, axis=0)[:n]  # every point three times
    cost = ((points[:, None] - rng.normal(size=(1, n, 2))) ** 2).sum(-1)
    _check(cost, assignment(cost))


def test_falls_back_to_scipy_without_pot(monkeypatch):
    monkeypatch.setattr(_ot, "_network_simplex", lambda: None)
    cost = np.random.default_rng(0).random((100, 100))
    _check(cost, assignment(cost))


def test_falls_back_to_scipy_when_the_simplex_stops_early_or_returns_no_permutation(monkeypatch):
    cost = np.random.default_rng(1).random((90, 90))
    calls = []

    def stopped(a, b, m, **kw):
        calls.append("stopped")
        return np.zeros_like(m), {"warning": "numItermax reached before optimality"}

    monkeypatch.setattr(_ot, "_network_simplex", lambda: stopped)
    _check(cost, assignment(cost))

    def split(a, b, m, **kw):  # a feasible but fractional plan
        calls.append("split")
        return np.full_like(m, 1.0 / m.shape[0] ** 2), {"warning": None}

    monkeypatch.setattr(_ot, "_network_simplex", lambda: split)
    _check(cost, assignment(cost))
    assert calls == ["stopped", "split"]


def test_refuses_a_non_square_cost():
    with pytest.raises(ValueError, match="cost must be a square"):
        assignment(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="cost must be a square"):
        assignment(np.zeros(3))
