"""Pre-paired noise and the prefetching pair iterator (OT coupling on a worker thread)."""

import pytest
import torch

from flowgen.objectives import flow_matching, prefetch_pairs, rectified_flow


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 2, generator=g) * 2 + 1 for _ in range(n)]


@pytest.mark.parametrize("coupling", ["ot", "sinkhorn"])
def test_prefetched_pairs_equal_sequential_pairing(coupling):
    objective = flow_matching(coupling=coupling)
    batches = _batches(5)
    got = list(prefetch_pairs(objective, batches, generator=torch.Generator().manual_seed(7)))
    g = torch.Generator().manual_seed(7)
    want = [(b, objective.pair(b, g)) for b in batches]
    assert len(got) == len(want)
    for (d1, n1), (d2, n2) in zip(got, want):
        assert d1 is d2 and torch.equal(n1, n2)
    if coupling == "ot":  # exact OT: the noise is a permutation of a fresh draw with a lower transport cost
        d, n = got[0]
        fresh = torch.randn(32, 2, generator=torch.Generator().manual_seed(7))
        assert torch.equal(n.sort(0).values, fresh.sort(0).values)
        assert float((d - n).pow(2).sum()) <= float((d - fresh).pow(2).sum())


def test_given_noise_is_used_as_is_and_checked():
    objective = flow_matching(coupling="ot")
    model = torch.nn.Linear(3, 2)

    def net(x, t):
        return model(torch.cat([x, t[:, None]], 1))

    data = _batches(1)[0]
    out = objective.compute(net, data, generator=torch.Generator().manual_seed(3))
    again = objective.compute(net, data, noise=out.noise, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.noise, out.noise) and torch.equal(again.t, out.t) and torch.equal(again.loss, out.loss)
    with pytest.raises(ValueError, match="noise"):
        objective(net, data, noise=torch.randn(31, 2))
    with pytest.raises(ValueError, match="noise"):
        objective(net, data, noise=torch.full((32, 2), float("nan")))
    # a plain objective accepts user noise too (no coupling): the loss uses exactly that noise
    rf = rectified_flow()
    noise = torch.randn(32, 2)
    assert torch.equal(rf.compute(net, data, noise=noise).noise, noise)


def test_errors_on_the_worker_reach_the_caller():
    bad = _batches(3)
    bad[1][0, 0] = float("nan")
    it = prefetch_pairs(flow_matching(coupling="ot"), bad)
    next(it)
    with pytest.raises(ValueError, match="data"):
        next(it)
