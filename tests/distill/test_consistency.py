"""Consistency distillation/training: exact boundary condition, zero loss at the exact flow map,
exact EMA, curricula, iCT's schedule, shared dropout masks, multistep sampling."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import norm
from torch import nn

from flowgen.distill import (
    CMCurriculum,
    ConsistencyDistillation,
    ConsistencyTraining,
    ConstantCurriculum,
    ICTCurriculum,
    cm_ema_decay,
    cm_num_scales,
    consistency_distillation_loss,
    consistency_function,
    consistency_grid,
    consistency_sample,
    consistency_training_loss,
    curriculum_from_config,
    default_spacing,
    default_t_max,
    ema_update_,
    ict_num_scales,
    lognormal_index_probabilities,
    paired_passes,
    teacher_ode_step,
)
from flowgen.nn import MLP
from flowgen.paths import EDM, RectifiedFlow
from flowgen.testing import GaussianData
from flowgen.testing import strategies as fst

from _distill_helpers import F64, PATHS, ExactConsistency, RandomLinearTeacher


# --- boundary condition ------------------------------------------------------------------------------
class _Wild(nn.Module):
    """A random network with large, finite outputs."""

    def __init__(self, dim, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(100 * torch.randn(dim, dim, generator=g))

    def forward(self, x, t, cond=None):
        return torch.tanh(x @ self.w.to(x.dtype)) * 1e3 + t.to(x.dtype)[:, None] * 50


@given(path=fst.paths(), seed=fst.seeds(), dtype=st.sampled_from([torch.float32, torch.float64]), batch=st.integers(1, 5))
def test_boundary_condition_is_exact_for_random_nets_on_every_path(path, seed, dtype, batch):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(batch, 3, generator=g, dtype=dtype)
    f = consistency_function(_Wild(3, seed), path)
    t = torch.full((batch,), path.t_min, dtype=dtype)
    assert torch.equal(f(x, t), x)


@pytest.mark.parametrize("path_name", sorted(PATHS))
def test_boundary_condition_with_the_distillers_t_min_and_an_mlp(path_name):
    path = PATHS[path_name]()
    ct = ConsistencyTraining(path, total_steps=100, t_min=max(path.t_min, 0.002) if path_name != "edm" else None)
    f = ct.consistency_function(MLP(2, hidden=16, depth=2))
    x = torch.randn(4, 2)
    assert torch.equal(f(x, torch.full((4,), ct.t_min)), x)
    assert not torch.equal(f(x, torch.full((4,), ct.t_max)), x)  # the network matters elsewhere


# --- zero loss at the exact flow map -----------------------------------------------------------------------
@pytest.mark.parametrize("path_name", ["rf", "cosine", "vp", "edm", "ddpm_cosine", "affine"])
def test_cd_loss_is_zero_at_the_exact_flow_map(path_name):
    path = PATHS[path_name]()
    gauss = GaussianData.random(3, generator=torch.Generator().manual_seed(1))
    flow = lambda x, t, s: gauss.flow_map(x, t=t, s=s, path=path)  # noqa: E731 - the exact teacher "step"
    cd = ConsistencyDistillation(gauss.model(path, "noise"), solver=flow, curriculum=ConstantCurriculum(12, 0.0))
    f_star = ExactConsistency(gauss, path, cd.t_min)
    data = gauss.sample(256, generator=torch.Generator().manual_seed(2))
    out = cd.loss(f_star, data, generator=torch.Generator().manual_seed(3))
    scale = float(data.pow(2).mean())
    assert float(out.per_sample.max()) < 1e-24 * scale
    # an inconsistent "student" is not at zero: the test can fail
    wrong = lambda x, t: f_star(x, t) + 0.5 * t.to(x.dtype)[:, None]  # noqa: E731
    assert float(cd.loss(wrong, data, generator=torch.Generator().manual_seed(3)).loss) > 1e-4 * scale


@pytest.mark.parametrize("prediction", ["noise", "velocity", "v", "data"])
def test_cd_loss_with_heun_teacher_is_near_zero_and_far_below_euler(prediction):
    path = PATHS["vp"]()
    gauss = GaussianData.random(2, generator=torch.Generator().manual_seed(4))
    teacher = gauss.model(path, prediction)
    data = gauss.sample(256, generator=torch.Generator().manual_seed(5))
    losses = {}
    for solver in ("euler", "heun"):
        cd = ConsistencyDistillation(teacher, solver=solver, curriculum=ConstantCurriculum(200, 0.0))
        f_star = ExactConsistency(gauss, path, cd.t_min)
        losses[solver] = float(cd.loss(f_star, data, generator=torch.Generator().manual_seed(6)).loss)
    scale = float(data.pow(2).mean())
    assert losses["heun"] < 1e-8 * scale
    assert losses["heun"] < 1e-2 * losses["euler"]


def test_functional_losses_match_the_objects():
    path = PATHS["edm"]()
    gauss = GaussianData.random(2, generator=torch.Generator().manual_seed(7))
    teacher = gauss.model(path, "data")
    cd = ConsistencyDistillation(teacher, weighting="inverse_gap", index_distribution="lognormal", metric="pseudo_huber")
    f = cd.consistency_function(MLP(2, hidden=8, depth=1).double())
    data = gauss.sample(32)
    t, s, noise, w = cd.draw(data, 0, torch.Generator().manual_seed(1))
    out = cd.loss(f, data, generator=torch.Generator().manual_seed(1))
    ref = consistency_distillation_loss(f, teacher_step=teacher_ode_step(teacher, path, "data", solver="heun"), data=data,
                                        noise=noise, t=t, s=s, path=path, metric="pseudo_huber", weight=w)
    torch.testing.assert_close(out.per_sample, ref, rtol=0, atol=0)
    ct = ConsistencyTraining(path, total_steps=1000)
    t, s, noise, w = ct.draw(data, 500, torch.Generator().manual_seed(2))
    out = ct.loss(f, data, step=500, generator=torch.Generator().manual_seed(2))
    ref = consistency_training_loss(f, data=data, noise=noise, t=t, s=s, path=path, weight=w)
    torch.testing.assert_close(out.per_sample, ref, rtol=0, atol=0)


def test_ct_target_pass_sees_the_same_noise_at_the_lower_time():
    path = RectifiedFlow()
    seen = []

    class Rec(nn.Module):
        def forward(self, x, t, cond=None):
            seen.append((x.clone(), t.clone()))
            return x

    data = torch.randn(5, 2, dtype=F64)
    noise = torch.randn(5, 2, dtype=F64)
    t, s = torch.full((5,), 0.6, dtype=F64), torch.full((5,), 0.4, dtype=F64)
    consistency_training_loss(Rec(), data=data, noise=noise, t=t, s=s, path=path)
    (x_target, t_target), (x_student, t_student) = seen  # the target pass runs first
    torch.testing.assert_close(x_target, 0.6 * data + 0.4 * noise)
    torch.testing.assert_close(x_student, 0.4 * data + 0.6 * noise)
    assert torch.equal(t_target, s) and torch.equal(t_student, t)


# --- target network --------------------------------------------------------------------------------------
def test_ema_update_is_exact():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    online[1].running_mean.normal_()
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.data.normal_()
    before = [p.detach().clone() for p in target.parameters()]
    mu = 0.9
    ema_update_(target, online, mu)
    for b, p, q in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(p, mu * b + (1 - mu) * q, rtol=1e-15, atol=1e-15)
    assert torch.equal(target[1].running_mean, online[1].running_mean)
    frozen = [p.detach().clone() for p in target.parameters()]
    ema_update_(target, online, 1.0)
    assert all(torch.equal(p, f) for p, f in zip(target.parameters(), frozen))
    ema_update_(target, online, 0.0)
    assert all(torch.equal(p, q) for p, q in zip(target.parameters(), online.parameters()))
    with pytest.raises(ValueError, match="decay"):
        ema_update_(target, online, 1.5)
    with pytest.raises(ValueError, match="different parameters"):
        ema_update_(nn.Linear(3, 4), nn.Linear(3, 4, bias=False), 0.5)


def test_update_target_uses_the_curriculum_decay():
    cd = ConsistencyTraining(RectifiedFlow(), curriculum=CMCurriculum(1000, mu0=0.95))
    online, target = nn.Linear(2, 2).double(), nn.Linear(2, 2).double()
    t0 = target.weight.detach().clone()
    mu = cd.update_target(target, online, 123)
    assert mu == cm_ema_decay(123, total_steps=1000, mu0=0.95)
    torch.testing.assert_close(target.weight, mu * t0 + (1 - mu) * online.weight, rtol=1e-15, atol=1e-15)


# --- curricula and iCT's schedule --------------------------------------------------------------------------
@pytest.mark.parametrize("s0,s1,K", [(2, 150, 1000), (2, 150, 37), (5, 40, 200)])
def test_cm_curriculum(s0, s1, K):
    ns = [cm_num_scales(k, total_steps=K, s0=s0, s1=s1) for k in range(K + 3)]
    assert ns[0] == s0 and ns[K] == s1 + 1 and ns[-1] == s1 + 1
    assert all(a <= b for a, b in zip(ns, ns[1:]))
    for k in (0, K // 3, K // 2, K):  # the equation, written independently
        assert ns[k] == math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1
    mu0 = 0.9
    assert cm_ema_decay(0, total_steps=K, s0=s0, s1=s1, mu0=mu0) == pytest.approx(mu0 ** (s0 / ns[0]))
    mus = [cm_ema_decay(k, total_steps=K, s0=s0, s1=s1, mu0=mu0) for k in range(0, K, max(1, K // 10))]
    assert all(a <= b for a, b in zip(mus, mus[1:])) and mus[0] == pytest.approx(0.9)


@pytest.mark.parametrize("K", [800, 10, 8001])
def test_ict_curriculum_doubles_every_k_prime_steps_up_to_the_cap(K):
    s0, s1 = 10, 1280
    k_prime = max(1, K // 8)  # log2(1280/10) + 1 = 8
    ns = [ict_num_scales(k, total_steps=K) for k in range(0, K + 1)]
    assert ns[0] == s0 + 1 and max(ns) <= s1 + 1
    for k in range(0, K + 1 - k_prime, max(1, k_prime // 3)):
        a, b = ns[k] - 1, ns[k + k_prime] - 1
        assert b == min(2 * a, s1)
    if K >= 8 * k_prime:
        assert ns[-1] == s1 + 1
    assert ICTCurriculum(K).ema_decay(5) == 0.0


def test_curricula_round_trip_as_plain_data():
    for c in (ConstantCurriculum(18, 0.95), CMCurriculum(100, s0=3), ICTCurriculum(50, s1=640)):
        d = curriculum_from_config(c.to_config())
        assert d.to_config() == c.to_config()
        assert [d.num_scales(k) for k in range(0, 60, 7)] == [c.num_scales(k) for k in range(0, 60, 7)]


def test_lognormal_index_probabilities_are_lognormal_masses():
    path = EDM()
    grid = consistency_grid(41, path, t_min=path.t_min, t_max=1.0)
    p = lognormal_index_probabilities(grid, path, p_mean=-1.1, p_std=2.0)
    sig = (grid * 80.0).numpy()
    mass = norm.cdf((torch.log(torch.tensor(sig)).numpy() + 1.1) / 2.0)
    want = (mass[:-1] - mass[1:]) / (mass[0] - mass[-1])
    torch.testing.assert_close(p, torch.tensor(want, dtype=F64), rtol=1e-9, atol=1e-12)


def test_consistency_grid_spacing_uniform_in_t_and_draw_uses_it():
    path = RectifiedFlow()
    grid = consistency_grid(6, path, t_min=0.002, t_max=0.98, spacing="uniform")
    torch.testing.assert_close(grid, torch.linspace(0.98, 0.002, 6, dtype=F64), rtol=0, atol=1e-12)
    assert torch.equal(consistency_grid(6, path, t_min=0.002, t_max=0.98, spacing="karras"),
                       consistency_grid(6, path, t_min=0.002, t_max=0.98))
    log_snr = consistency_grid(5, path, t_min=0.01, t_max=0.98, spacing="log_snr")
    gaps = torch.diff(path._log_snr(log_snr))
    torch.testing.assert_close(gaps, gaps[:1].expand_as(gaps), rtol=1e-9, atol=0)  # equal log-SNR steps
    cd = ConsistencyDistillation(RandomLinearTeacher(2, seed=0), path=path, teacher_prediction="velocity",
                                 curriculum=ConstantCurriculum(9), t_min=0.002, t_max=0.98, spacing="uniform")
    assert cd.spacing == "uniform" and cd.config()["spacing"] == "uniform"
    t, s, _, _ = cd.draw(torch.randn(500, 2), 0, torch.Generator().manual_seed(0))
    g32 = torch.linspace(0.98, 0.002, 9, dtype=F64).to(torch.float32)
    j = (t[:, None] == g32[None, :]).nonzero()[:, 1]
    assert j.numel() == 500 and torch.equal(s, g32[j + 1])
    for bad in ("bogus", 3, None):
        with pytest.raises(ValueError, match="spacing must be one of"):
            consistency_grid(6, path, t_min=0.002, t_max=0.98, spacing=bad)
        with pytest.raises(ValueError, match="spacing must be one of"):
            ConsistencyTraining(path, total_steps=10, spacing=bad)


def test_distillation_defaults_to_the_uniform_grid_on_linear_interpolant_paths_only():
    from flowgen.paths import VP, AffinePath, Cosine, DiscreteDDPM

    linear = AffinePath(alpha=lambda t: 1 - t, sigma=lambda t: t)
    assert default_spacing(RectifiedFlow()) == "uniform" and default_spacing(linear) == "uniform"
    curved = AffinePath(alpha=lambda t: 1 - t ** 2, sigma=lambda t: t)
    for path in (EDM(), VP(), Cosine(), DiscreteDDPM.linear(1000), curved):
        assert default_spacing(path) == "karras", type(path).__name__
    teacher = RandomLinearTeacher(2, seed=0)
    kw = dict(teacher_prediction="velocity", curriculum=ConstantCurriculum(9), t_min=0.002, t_max=0.98)
    cd = ConsistencyDistillation(teacher, path=RectifiedFlow(), **kw)
    assert cd.spacing == "uniform" and cd.config()["spacing"] == "uniform"
    torch.testing.assert_close(cd.grid(0), torch.linspace(0.98, 0.002, 9, dtype=F64), rtol=0, atol=1e-12)
    assert ConsistencyDistillation(teacher, path=RectifiedFlow(), spacing="karras", **kw).spacing == "karras"
    assert ConsistencyDistillation(teacher, path=curved, **kw).spacing == "karras"
    # the student's default multistep times follow the same grid
    gen = cd.student_generator(cd.consistency_function(nn.Linear(2, 2)))
    assert gen.spacing == "uniform" and gen.step_times[2] == pytest.approx([0.98, 0.491], abs=1e-12)
    # consistency training keeps improved CT's ρ-schedule on every path
    assert ConsistencyTraining(RectifiedFlow(), total_steps=10).spacing == "karras"


def test_draw_gives_adjacent_grid_times_and_ict_weights():
    path = PATHS["cosine"]()
    ct = ConsistencyTraining(path, total_steps=100)
    assert ct.t_max == pytest.approx(default_t_max(path)) and ct.t_max < 1.0
    data = torch.randn(4000, 2)
    t, s, noise, w = ct.draw(data, 40, torch.Generator().manual_seed(0))
    grid = ct.grid(40)
    assert grid.numel() == ct.num_scales(40) == ict_num_scales(40, total_steps=100)
    g32 = grid.to(torch.float32)
    j = (t[:, None] == g32[None, :]).nonzero()[:, 1]
    assert j.numel() == 4000 and torch.equal(s, g32[j + 1])
    sig = torch.tan(0.5 * math.pi * grid)  # σ̃ = σ/α on the cosine path
    torch.testing.assert_close(w, (1.0 / (sig[j] - sig[j + 1])).to(torch.float32), rtol=1e-5, atol=0)
    freq = torch.bincount(j, minlength=grid.numel() - 1).double() / 4000
    p = lognormal_index_probabilities(grid, path)
    assert float((freq - p).abs().max()) < 0.04


# --- shared dropout masks ------------------------------------------------------------------------------------
class _DropNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1, self.drop, self.lin2 = nn.Linear(2, 64), nn.Dropout(0.5), nn.Linear(64, 2)
        self.drop.masks = []
        self.drop.register_forward_hook(lambda m, i, o: m.masks.append((o != 0).clone()))

    @property
    def masks(self):
        return self.drop.masks

    def forward(self, x, t, cond=None):
        return self.lin2(self.drop(torch.relu(self.lin1(x)) + 1.0))


def test_paired_passes_share_dropout_masks(device):
    torch.manual_seed(0)
    student = _DropNet().to(device)
    target = copy.deepcopy(student)
    for p in target.parameters():  # an EMA target: different weights, same architecture
        p.data.mul_(0.5)
    x_s, x_t = torch.randn(8, 2, device=device), torch.randn(8, 2, device=device)
    t = torch.full((8,), 0.5, device=device)
    devices = [x_t.device.index or 0] if x_t.is_cuda else []
    s_out, t_out = paired_passes(lambda: student(x_t, t), lambda: target(x_s, t), devices=devices)
    (m_target,), (m_student,) = target.masks, student.masks
    assert torch.equal(m_target, m_student) and not bool(m_student.all())
    assert s_out.requires_grad and not t_out.requires_grad
    # without sharing, two passes draw different masks
    student.masks.clear()
    student(x_t, t)
    student(x_t, t)
    assert not torch.equal(student.masks[0], student.masks[1])


def test_consistency_losses_share_masks_between_student_and_stop_gradient_target():
    torch.manual_seed(1)
    net = _DropNet()
    path = RectifiedFlow()
    ct = ConsistencyTraining(path, total_steps=100, metric="l2")
    ct.loss(net, torch.randn(16, 2), generator=torch.Generator().manual_seed(0))
    assert len(net.masks) == 2 and torch.equal(net.masks[0], net.masks[1])
    # the RNG advanced by exactly one pass: the same as a single student pass from the same state
    torch.manual_seed(2)
    net.masks.clear()
    ct.loss(net, torch.randn(16, 2), generator=torch.Generator().manual_seed(0))
    after_pair = torch.rand(3)
    torch.manual_seed(2)
    net(torch.randn(16, 2), torch.zeros(16))
    assert torch.equal(after_pair, torch.rand(3))


# --- multistep sampling -----------------------------------------------------------------------------------------
def test_one_step_sampling_is_f_at_t_max():
    path = PATHS["vp"]()
    f = consistency_function(MLP(2, hidden=8, depth=1), path)
    noise = torch.randn(6, 2)
    out = consistency_sample(f, path, noise, times=[1.0])
    with torch.no_grad():
        want = f(float(path.sigma(torch.ones(1, dtype=torch.float64))[0]) * noise, torch.ones(6))
    # equal up to float32 rounding: on some CPUs (seen on a 16-core GPU host) the library's call and this one
    # take different BLAS kernels and differ in the last bit
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_multistep_sampling_with_the_exact_consistency_function_hits_the_data_distribution(k):
    path = PATHS["vp"]()
    gauss = GaussianData.random(2, generator=torch.Generator().manual_seed(11))
    t_min = 0.2  # a boundary well inside the path, so that the re-noising must undo its noise level exactly
    f = ExactConsistency(gauss, path, t_min)
    times = [1.0, 0.6, 0.45, 0.3][:k]
    noise = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    x = consistency_sample(f, path, noise, times=times, generator=torch.Generator().manual_seed(2))
    mean, cov = gauss.marginal(t_min, path)
    assert float((x.mean(0) - mean).abs().max()) < 0.05
    assert float((torch.cov(x.T) - cov).abs().max()) < 0.04  # seeded: deterministic; a wrong re-noising misses by > 0.06
    again = consistency_sample(f, path, noise, times=times, generator=torch.Generator().manual_seed(2))
    other = consistency_sample(f, path, noise, times=times, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, again) and not torch.equal(x, other)


def test_sampling_and_config_errors():
    path = RectifiedFlow()
    f = consistency_function(MLP(2, hidden=8, depth=1), path)
    noise = torch.randn(3, 2)
    with pytest.raises(ValueError, match="strictly decreasing"):
        consistency_sample(f, path, noise, times=[0.9, 0.95])
    with pytest.raises(ValueError, match="infinite"):
        consistency_sample(f, path, noise, times=[1.0])
    with pytest.raises(ValueError, match="t_min"):
        consistency_sample(f, path, noise, times=[0.9, 0.0])
    with pytest.raises(ValueError, match="infinite"):
        ConsistencyTraining(path, total_steps=10, t_max=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        ConsistencyTraining(path)
    with pytest.raises(ValueError, match="no path metadata"):
        ConsistencyDistillation(lambda x, t: x, teacher_prediction="velocity")
    with pytest.raises(ValueError, match="solver"):
        ConsistencyDistillation(GaussianData.random(2).model(path, "velocity"), solver="dopri5")
    with pytest.raises(ValueError, match="t > s"):
        consistency_training_loss(f, data=noise, noise=noise, t=torch.full((3,), 0.2), s=torch.full((3,), 0.5), path=path)
    ct = ConsistencyTraining(path, total_steps=10, event_shape=(2,))
    with pytest.raises(ValueError, match="per-sample shape"):
        ct.loss(f, torch.randn(3, 5))
