"""Couplings: exact minibatch OT is the brute-force optimum; Sinkhorn approaches it as reg → 0."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowgen.objectives import ExactOTCoupling, IndependentCoupling, SinkhornCoupling, get_coupling
from flowgen.objectives.coupling import pairwise_sq_dist
from flowgen.testing import strategies as fst


def _rows_of(out: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Index in ``noise`` of every row of ``out`` (each row of ``out`` must be a row of ``noise``)."""
    d = pairwise_sq_dist(out.double(), noise.double())
    idx = d.argmin(1)
    assert torch.equal(out, noise[idx]), "the coupling made up a noise row"
    return idx


def _cost(data, noise):
    return float((data.double() - noise.double()).reshape(data.shape[0], -1).pow(2).sum())


@given(st.integers(1, 6), fst.batch_shapes(min_rank=2, max_batch=1), fst.seeds(), fst.dtypes())
def test_exact_ot_is_a_permutation_that_equals_brute_force(batch, event, seed, dtype):
    shape = (batch, *event[1:])
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(shape, generator=g).to(dtype) + 1.0
    noise = torch.randn(shape, generator=g).to(dtype)
    out = ExactOTCoupling()(data, noise)
    assert out.shape == noise.shape and out.dtype == dtype
    idx = _rows_of(out, noise)
    assert sorted(idx.tolist()) == list(range(batch))  # a permutation: every noise row used once
    cost = _cost(data, out)
    assert cost <= _cost(data, noise) * (1 + 1e-6) + 1e-9
    brute = min(_cost(data, noise[list(p)]) for p in itertools.permutations(range(batch)))
    assert cost == pytest.approx(brute, rel=1e-5, abs=1e-7)


def test_exact_ot_on_a_known_assignment():
    data = torch.tensor([[0.0], [10.0], [20.0]])
    noise = torch.tensor([[19.0], [1.0], [11.0]])
    assert torch.equal(ExactOTCoupling()(data, noise), torch.tensor([[1.0], [11.0], [19.0]]))


def test_sinkhorn_approaches_the_exact_ot_cost_as_reg_goes_to_zero():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(16, 2, generator=g) + torch.tensor([2.0, 0.0])
    noise = torch.randn(16, 2, generator=g)
    exact = _cost(data, ExactOTCoupling()(data, noise)) / 16
    cost = pairwise_sq_dist(data, noise).double()
    gaps = []
    for reg in (0.5, 0.1, 0.02, 0.005):
        plan = SinkhornCoupling(reg=reg, max_iter=5000, tol=1e-6).plan(data, noise).double().exp()
        # uniform marginals (to float32 log-domain precision, which at reg = 0.005 is ~1e-4 relative)
        torch.testing.assert_close(plan.sum(1), torch.full((16,), 1 / 16, dtype=torch.float64), rtol=1e-3, atol=0)
        torch.testing.assert_close(plan.sum(0), torch.full((16,), 1 / 16, dtype=torch.float64), rtol=1e-3, atol=0)
        gaps.append(float((plan * cost).sum()) - exact)
    assert all(gap >= -1e-4 * exact for gap in gaps)  # no plan beats the optimum
    assert gaps == sorted(gaps, reverse=True)  # monotone in reg
    assert gaps[-1] <= 0.01 * exact
    assert gaps[0] > 10 * gaps[-1]


def test_sinkhorn_draws_rows_of_the_noise_reproducibly():
    g = torch.Generator().manual_seed(1)
    data, noise = torch.randn(32, 3, generator=g), torch.randn(32, 3, generator=g)
    coupling = SinkhornCoupling(reg=0.05)
    a = coupling(data, noise, torch.Generator().manual_seed(5))
    b = coupling(data, noise, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    _rows_of(a, noise)
    assert _cost(data, a) < _cost(data, noise)


def test_independent_and_lookup():
    data, noise = torch.randn(4, 2), torch.randn(4, 2)
    assert IndependentCoupling()(data, noise) is noise
    assert isinstance(get_coupling("ot"), ExactOTCoupling) and isinstance(get_coupling("OT"), ExactOTCoupling)
    assert isinstance(get_coupling("exact_ot"), ExactOTCoupling)
    assert isinstance(get_coupling("sinkhorn"), SinkhornCoupling)
    assert isinstance(get_coupling("independent"), IndependentCoupling)
    c = SinkhornCoupling(reg=0.1)
    assert get_coupling(c) is c and "SinkhornCoupling(" in repr(c)
    with pytest.raises(ValueError, match=r"unknown coupling 'emd'"):
        get_coupling("emd")
    with pytest.raises(ValueError, match=r"reg must be > 0"):
        SinkhornCoupling(reg=0.0)
    with pytest.raises(ValueError, match=r"reg must be > 0"):
        SinkhornCoupling(reg=float("nan"))
    with pytest.raises(ValueError, match=r"max_iter must be a positive int"):
        SinkhornCoupling(max_iter=0)


@pytest.mark.parametrize("coupling", [ExactOTCoupling(), SinkhornCoupling(), SinkhornCoupling(max_iter=3)],
                         ids=["exact", "sinkhorn", "sinkhorn_3_iterations"])
def test_couplings_refuse_non_finite_points_naming_them(coupling):
    data, noise = torch.randn(80, 2), torch.randn(80, 2)
    bad = data.clone()
    bad[5, 1] = float("nan")
    with pytest.raises(ValueError, match="data holds 1 non-finite"):
        coupling(bad, noise)
    bad = noise.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="noise holds 1 non-finite"):
        coupling(data, bad)
