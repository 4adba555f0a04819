"""Reflow: resumable atomic pair shards, Gaussian-to-Gaussian reflow reaches the linear OT map, straightness."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from flowgen.distill import (
    OneStepDistillation,
    PairDataset,
    Reflow,
    generate_pairs,
    one_step_distillation_loss,
    pair_loader,
    path_energy,
    reflow_loss,
    shard_seed,
    straightness,
    trajectory_stats,
)
from flowgen.paths import RectifiedFlow
from flowgen.samplers import sample
from flowgen.testing import GaussianData

from _distill_helpers import F64


def _gauss(dim=2, seed=3):
    return GaussianData.random(dim, generator=torch.Generator().manual_seed(seed))


def _sqrtm(cov):
    w, u = torch.linalg.eigh(cov)
    return u @ torch.diag(w.sqrt()) @ u.T


class StraightField(torch.nn.Module):
    """The exact reflow minimiser for the Gaussian OT coupling ``x = μ + Σ^{1/2} z`` on rectified flow.

    ``x_t = (1 − t)(μ + Σ^{1/2} z) + t z`` is invertible in ``z``; the velocity ``E[z − x | x_t] = z − x``
    is constant along every straight line.
    """

    def __init__(self, gauss):
        super().__init__()
        self.mu, self.root = gauss.mean, _sqrtm(gauss.cov)

    def forward(self, x_t, t, cond=None):
        t = t.to(F64)[:, None, None]
        eye = torch.eye(self.mu.numel(), dtype=F64)
        a = (1 - t) * self.root + t * eye
        z = torch.linalg.solve(a, (x_t.to(F64) - (1 - t[:, :, 0]) * self.mu)[:, :, None])[:, :, 0]
        return (z - (self.mu + z @ self.root.T)).to(x_t.dtype)


# --- pair generation and resuming -----------------------------------------------------------------------
def _gen(teacher, out, **kw):
    args = dict(num=50, batch_size=16, shape=(2,), out_dir=out, method="heun", steps=8, seed=7, dtype=F64)
    args.update(kw)
    return generate_pairs(teacher, **args)


def test_pairs_are_the_teachers_endpoints_of_seeded_noise(tmp_path):
    gauss = _gauss()
    path = RectifiedFlow()
    teacher = gauss.model(path, "velocity")
    ds = _gen(teacher, tmp_path)
    assert len(ds) == 50 and ds.generated == [0, 1, 2, 3] and sorted(os.listdir(tmp_path))[-1] == "pairs_000003.pt"
    noise3 = torch.randn(2, 2, generator=torch.Generator().manual_seed(shard_seed(7, 3)), dtype=F64)
    assert torch.equal(ds.noise[48:], noise3)
    want = sample(teacher, path, ds.noise[:16], prediction="velocity", method="heun", steps=8).samples
    assert torch.equal(ds.endpoint[:16], want)
    assert isinstance(ds.path, RectifiedFlow) and ds.prediction.value == "velocity"
    assert json.load(open(tmp_path / "manifest.json"))["num_shards"] == 4
    n, e = ds[5]
    assert n.shape == (2,) and e.shape == (2,)
    batches = list(pair_loader(tmp_path, batch_size=20, shuffle=False))
    assert [b[0].shape[0] for b in batches] == [20, 20, 10] and torch.equal(batches[0][1], ds.endpoint[:20])


def test_generation_resumes_to_identical_contents_after_an_interruption(tmp_path):
    gauss = _gauss()
    teacher = gauss.model(RectifiedFlow(), "v")
    full = _gen(teacher, tmp_path / "full")
    # an "interrupted" run: shard 1 never written, shard 2 truncated mid-write, a stale temp file left behind
    part = tmp_path / "part"
    _gen(teacher, part)
    os.remove(part / "pairs_000001.pt")
    raw = (part / "pairs_000002.pt").read_bytes()
    (part / "pairs_000002.pt").write_bytes(raw[: len(raw) // 2])
    (part / ".pairs_000003.pt.abc.tmp").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="rerun generate_pairs"):
        PairDataset(part)
    calls = teacher.calls
    resumed = _gen(teacher, part)
    assert resumed.generated == [1, 2]
    assert teacher.calls - calls == 2 * (2 * 8)  # Heun's NFE for the two regenerated shards only
    assert torch.equal(resumed.noise, full.noise) and torch.equal(resumed.endpoint, full.endpoint)
    assert not any(n.endswith(".tmp") for n in os.listdir(part))
    again = _gen(teacher, part)
    assert again.generated == []


def test_a_shard_carrying_a_code_payload_is_never_executed_and_is_regenerated(tmp_path):
    gauss = _gauss()
    teacher = gauss.model(RectifiedFlow(), "velocity")
    good = _gen(teacher, tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "pairs_000000.pt", "wb") as fh:
        pickle.dump({"noise": Payload()}, fh)
    resumed = _gen(teacher, tmp_path)
    assert not marker.exists() and resumed.generated == [0]
    assert torch.equal(resumed.endpoint, good.endpoint)


def test_generation_refuses_bad_settings(tmp_path):
    gauss = _gauss()
    teacher = gauss.model(RectifiedFlow(), "velocity")
    _gen(teacher, tmp_path)
    with pytest.raises(ValueError, match="different settings.*steps"):
        _gen(teacher, tmp_path, steps=9)
    with pytest.raises(ValueError, match="stochastic"):
        _gen(teacher, tmp_path / "x", method="ddpm")
    with pytest.raises(ValueError, match="no path metadata"):
        _gen(lambda x, t: x, tmp_path / "y", prediction="velocity")
    with pytest.raises(ValueError, match="num"):
        _gen(teacher, tmp_path / "z", num=0)
    with pytest.raises(ValueError, match="shape"):
        _gen(teacher, tmp_path / "w", shape=())
    with pytest.raises(ValueError, match="no reflow pairs"):
        PairDataset(tmp_path / "nothing")


# --- Gaussian to Gaussian: reflow gives the linear OT map ----------------------------------------------------
def test_exact_pairs_are_straight_and_the_teachers_flow_is_not():
    gauss = _gauss(seed=5)
    path = RectifiedFlow()
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    one = trajectory_stats(StraightField(gauss), path, noise, steps=16)
    zero = trajectory_stats(gauss.model(path, "velocity"), path, noise, steps=16)
    assert float(one.straightness) < 1e-20 and abs(float(one.energy) - 1.0) < 1e-12
    assert float(zero.straightness) > 1e-3 and float(zero.energy) > 1.0 + 1e-4
    # the straight field's endpoint is the linear OT map μ + Σ^{1/2} z (the independent coupling's flow too, in the limit)
    torch.testing.assert_close(one.end, gauss.mean + noise @ _sqrtm(gauss.cov).T, rtol=1e-10, atol=1e-10)
    # per sample: ∫‖Ż‖² = ‖Z1 − Z0‖² + S_i exactly on the Euler trajectory
    chord2 = (zero.end - zero.start).pow(2).sum(1)
    torch.testing.assert_close(zero.per_sample_energy, 1.0 + zero.per_sample_straightness / chord2, rtol=1e-10, atol=0)
    assert straightness(gauss.model(path, "velocity"), path, noise, 16) == pytest.approx(float(zero.straightness))
    assert path_energy(StraightField(gauss), path, noise, 16) == pytest.approx(1.0)
    # the reflow loss on exact pairs is zero at the straight field and positive at the teacher
    pairs_end = gauss.flow_map(noise, t=torch.ones(256, dtype=F64), s=torch.zeros(256, dtype=F64), path=path)
    t = torch.rand(256, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert float(reflow_loss(StraightField(gauss), noise=noise, endpoint=pairs_end, t=t, path=path, prediction="velocity").max()) < 1e-20
    assert float(reflow_loss(gauss.model(path, "velocity"), noise=noise, endpoint=pairs_end, t=t, path=path, prediction="velocity").mean()) > 1e-3


class LeastSquaresReflow(torch.nn.Module):
    """The minimiser of the reflow loss over affine fields ``v(x, t) = A_t x + b_t``, fitted at each ``t`` it is asked for."""

    def __init__(self, noise, endpoint, path):
        super().__init__()
        self.noise, self.endpoint, self.path, self.fits = noise, endpoint, path, {}

    def fit(self, t: float):
        if t not in self.fits:
            tt = torch.full((self.noise.shape[0],), t, dtype=F64)
            x_t = self.path.alpha(tt)[:, None] * self.endpoint + self.path.sigma(tt)[:, None] * self.noise
            target = self.path.d_alpha(tt)[:, None] * self.endpoint + self.path.d_sigma(tt)[:, None] * self.noise
            design = torch.cat([x_t, torch.ones_like(x_t[:, :1])], 1)
            self.fits[t] = torch.linalg.lstsq(design, target).solution
        return self.fits[t]

    def forward(self, x_t, t, cond=None):
        w = self.fit(float(t[0]))
        return torch.cat([x_t, torch.ones_like(x_t[:, :1])], 1) @ w


def test_reflow_of_a_gaussian_flow_converges_to_the_linear_ot_map(tmp_path):
    gauss = _gauss(seed=6)
    path = RectifiedFlow()
    teacher = gauss.model(path, "velocity")
    ds = generate_pairs(teacher, num=2000, batch_size=1000, shape=(2,), out_dir=tmp_path, method="rk4", steps=24, dtype=F64)
    # the teacher's coupling is the linear OT (Brenier) map z ↦ μ + Σ^{1/2} z
    design = torch.cat([ds.noise, torch.ones(len(ds), 1, dtype=F64)], 1)
    coef = torch.linalg.lstsq(design, ds.endpoint).solution
    torch.testing.assert_close(coef[:2].T, _sqrtm(gauss.cov), rtol=0, atol=1e-6)
    torch.testing.assert_close(coef[2], gauss.mean, rtol=0, atol=1e-6)
    # 1-rectified flow = the reflow-loss minimiser: straight (S ≈ 0), unlike the independent coupling's flow
    rect = LeastSquaresReflow(ds.noise, ds.endpoint, path)
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    s1 = straightness(rect, path, noise, 8)
    s0 = straightness(teacher, path, noise, 8)
    assert s1 < 1e-8 < 1e-3 < s0
    # its 1-step Euler sampler already is the OT map
    one_step = sample(rect, path, noise, prediction="velocity", method="euler", steps=1).samples
    torch.testing.assert_close(one_step, gauss.mean + noise @ _sqrtm(gauss.cov).T, rtol=0, atol=1e-5)
    # k-rectified flow: reflowing the straight 1-rectified flow again changes nothing (its coupling is a fixed point)
    ds2 = generate_pairs(rect, path, prediction="velocity", num=500, batch_size=250, shape=(2,), out_dir=tmp_path / "round2",
                         method="euler", steps=8, dtype=F64, seed=1)
    torch.testing.assert_close(ds2.endpoint, gauss.mean + ds2.noise @ _sqrtm(gauss.cov).T, rtol=0, atol=1e-5)
    # and no affine field has a lower reflow loss on the pairs
    t = torch.full((len(ds),), 0.37, dtype=F64)
    best = reflow_loss(rect, noise=ds.noise, endpoint=ds.endpoint, t=t, path=path, prediction="velocity").mean()
    w = rect.fit(0.37)
    for k in range(3):
        bump = torch.zeros(3, 2, dtype=F64)
        bump[k, k % 2] = 1e-3
        perturbed = lambda x, tt: torch.cat([x, torch.ones_like(x[:, :1])], 1) @ (w + bump)  # noqa: E731
        assert float(reflow_loss(perturbed, noise=ds.noise, endpoint=ds.endpoint, t=t, path=path, prediction="velocity").mean()) > float(best)


# --- losses -----------------------------------------------------------------------------------------------
def test_reflow_loss_is_the_velocity_regression_on_fixed_pairs():
    path = RectifiedFlow()
    g = torch.Generator().manual_seed(0)
    noise, endpoint = torch.randn(9, 3, generator=g, dtype=F64), torch.randn(9, 3, generator=g, dtype=F64)
    t = torch.rand(9, generator=g, dtype=F64)
    lin = torch.nn.Linear(3, 3).double()
    student = lambda x, tt: lin(x) * tt[:, None]  # noqa: E731
    got = reflow_loss(student, noise=noise, endpoint=endpoint, t=t, path=path, prediction="velocity")
    x_t = (1 - t)[:, None] * endpoint + t[:, None] * noise
    torch.testing.assert_close(got, (student(x_t, t) - (noise - endpoint)).pow(2).mean(1))
    rf = Reflow(path)
    out = rf.loss(student, noise, endpoint, generator=torch.Generator().manual_seed(1))
    assert out.per_sample.shape == (9,) and out.loss.requires_grad
    assert rf.next_round() == 2 and rf.state_dict()["round"] == 2
    other = Reflow(path)
    other.load_state_dict(rf.state_dict())
    assert other.round == 2
    assert rf.student_generator(student).supported_steps is None


def test_one_step_distillation_loss_is_zero_at_the_exact_map_and_trains_the_student():
    gauss = _gauss(seed=8)
    path = RectifiedFlow()
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    endpoint = gauss.mean + noise @ _sqrtm(gauss.cov).T
    for metric in ("l2", "pseudo_huber"):
        loss = one_step_distillation_loss(StraightField(gauss), noise=noise, endpoint=endpoint, path=path, metric=metric)
        assert float(loss.max()) < 1e-12
    lin = torch.nn.Linear(2, 2).double()
    student = lambda x, t: lin(x)  # noqa: E731
    osd = OneStepDistillation(path, "velocity")
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    first = float(osd(student, noise, endpoint).detach())
    for _ in range(300):
        opt.zero_grad()
        osd(student, noise, endpoint).backward()
        opt.step()
    assert float(osd(student, noise, endpoint).detach()) < 1e-4 * first
    with pytest.raises(ValueError, match="endpoint"):
        osd(student, noise, endpoint[:, :1])
