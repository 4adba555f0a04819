"""Training-time distributions: inside [t_min, t_max] on every path, with the right law (KS tests)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from flowgen.objectives import DiscreteTime, LogitNormalTime, LogNormalSigmaTime, UniformTime
from flowgen.paths import EDM, VP, Cosine, DiscreteDDPM, RectifiedFlow
from flowgen.testing import strategies as fst

FAMILIES = sorted(fst.PATH_FAMILIES)
N = 2000  # samples per KS test (fixed generators: deterministic)


def _distributions():
    return st.one_of(
        st.builds(UniformTime),
        st.builds(LogitNormalTime, st.floats(-3, 3), st.floats(0.1, 3)),
        st.builds(LogNormalSigmaTime, st.floats(-3, 3), st.floats(0.1, 3)),
    )


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_times_stay_inside_the_generation_interval(family, data):
    path = data.draw(fst.PATH_FAMILIES[family](), label="path")
    dist = data.draw(_distributions(), label="distribution")
    dtype = data.draw(fst.dtypes(), label="dtype")
    t = dist.sample(256, path=path, generator=torch.Generator().manual_seed(data.draw(fst.seeds())), dtype=dtype)
    assert t.shape == (256,) and t.dtype == dtype
    lo, hi = torch.tensor(path.t_min, dtype=dtype), torch.tensor(path.t_max, dtype=dtype)
    assert ((t >= lo) & (t <= hi)).all(), (float(t.min()), float(t.max()))
    path.alpha(t)  # valid input for the path


@pytest.mark.parametrize("path", [DiscreteDDPM.linear(), DiscreteDDPM.cosine(num_steps=7), VP(), EDM()], ids=repr)
def test_discrete_time_is_the_index_grid(path):
    n = path.num_steps if isinstance(path, DiscreteDDPM) else 1000
    dist = DiscreteTime() if isinstance(path, DiscreteDDPM) else DiscreteTime(num_steps=n)
    for dtype in (torch.float32, torch.float64):
        t = dist.sample(N, path=path, generator=torch.Generator().manual_seed(0), dtype=dtype)
        assert t.dtype == dtype
        i = t.double() * n - 1
        assert torch.allclose(i, i.round(), atol=1e-3) and i.min() >= 0 and i.max() <= n - 1
        assert ((t >= torch.tensor(path.t_min, dtype=dtype)) & (t <= 1)).all()
    counts = np.bincount((t.double() * n - 1).round().long().numpy(), minlength=n)
    if n <= 10:
        assert stats.chisquare(counts).pvalue > 1e-3
    if isinstance(path, DiscreteDDPM):
        assert torch.equal(path.t_to_timestep(t), (t * n - 1).round())


def _ks(samples: torch.Tensor, cdf) -> float:
    return stats.kstest(samples.double().numpy(), cdf).pvalue


def _phi(z):
    return stats.norm.cdf(z)


@pytest.mark.parametrize("path", [RectifiedFlow(), EDM(), VP()], ids=repr)
def test_uniform_law(path):
    lo, hi = path.t_min, path.t_max
    t = UniformTime().sample(N, path=path, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert _ks(t, lambda x: (x - lo) / (hi - lo)) > 1e-3
    t = UniformTime(0.2, 0.4).sample(N, path=path, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert t.min() >= 0.2 and t.max() <= 0.4
    assert _ks(t, lambda x: (x - 0.2) / 0.2) > 1e-3


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (-0.5, 0.7), (1.0, 2.0)])
def test_logit_normal_law(mean, std):
    """SD3's logit-normal (Esser et al. 2024, arXiv:2403.03206, eq. 19): logit(t) ~ N(m, s²)."""
    for path in (RectifiedFlow(), EDM()):
        lo, hi = path.t_min, path.t_max
        t = LogitNormalTime(mean, std).sample(N, path=path, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

        def cdf(x):
            u = np.clip((x - lo) / (hi - lo), 1e-300, 1 - 1e-16)
            return _phi((np.log(u) - np.log1p(-u) - mean) / std)

        assert _ks(t, cdf) > 1e-3
        # the test has power: the same samples are not uniform
        assert _ks(t, lambda x: (x - lo) / (hi - lo)) < 1e-6


@pytest.mark.parametrize(
    "path", [EDM(), VP(), Cosine(), RectifiedFlow(), DiscreteDDPM.linear(), DiscreteDDPM.cosine()], ids=repr
)
def test_log_normal_sigma_law_on_every_path(path):
    """EDM's ln σ̃ ~ N(P_mean, P_std²) (Karras et al. 2022, Table 1), σ̃ = σ/α = exp(−λ/2), through any path."""
    p_mean, p_std = -1.2, 1.2
    t = LogNormalSigmaTime(p_mean, p_std).sample(N, path=path, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def cdf(x):
        lam = path.log_snr(torch.as_tensor(np.atleast_1d(x), dtype=torch.float64)).numpy()
        return _phi((-0.5 * lam - p_mean) / p_std)

    assert _ks(t, cdf) > 1e-3
    if isinstance(path, EDM):  # in EDM's own units: ln σ ~ N(P_mean, P_std²)
        log_sigma = torch.log(path.sigma(t))
        assert stats.kstest(log_sigma.numpy(), stats.norm(p_mean, p_std).cdf).pvalue > 1e-3
    # power: a different P_mean is rejected
    assert _ks(t, lambda x: _phi((-0.5 * path.log_snr(torch.as_tensor(np.atleast_1d(x))).numpy() - p_mean - 0.5) / p_std)) < 1e-6


def test_reproducible_with_a_generator():
    for dist in (UniformTime(), LogitNormalTime(), LogNormalSigmaTime(), DiscreteTime(100)):
        a = dist.sample(16, path=VP(), generator=torch.Generator().manual_seed(4))
        b = dist.sample(16, path=VP(), generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b)
        assert dist.sample(0, path=VP()).shape == (0,)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: UniformTime(0.5, 0.2), r"low and high must satisfy"),
        (lambda: UniformTime(-0.1, 0.5), r"low and high must satisfy"),
        (lambda: LogitNormalTime(0.0, 0.0), r"std > 0"),
        (lambda: LogitNormalTime(math.nan, 1.0), r"finite mean"),
        (lambda: LogNormalSigmaTime(-1.2, -1.0), r"p_std > 0"),
        (lambda: LogNormalSigmaTime(math.inf, 1.0), r"finite p_mean"),
        (lambda: DiscreteTime(0), r"num_steps must be a positive int"),
        (lambda: DiscreteTime(2.5), r"num_steps must be a positive int"),
        (lambda: DiscreteTime().sample(4, path=Cosine()), r"DiscreteTime needs num_steps"),
        (lambda: DiscreteTime(2000).sample(4, path=VP()), r"DiscreteTime\(num_steps=2000\) puts times .* outside the path's"),
        (lambda: DiscreteTime(2000).sample(4, path=DiscreteDDPM.linear()), r"outside the path's \[t_min, t_max\]"),
        (lambda: UniformTime().sample(-1, path=Cosine()), r"batch must be a non-negative int"),
        (lambda: UniformTime().sample(2.0, path=Cosine()), r"batch must be a non-negative int"),
    ],
)
def test_bad_time_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()
