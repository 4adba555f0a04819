"""Progressive distillation: the target is exact against two teacher DDIM steps, on every path and prediction pair."""

from __future__ import annotations

import json

import pytest
import torch

import flowgen
from flowgen.distill import ProgressiveDistillation, TruncatedSNRWeight, progressive_distillation_loss, progressive_target
from flowgen.parameterization import Prediction, prediction_error_scale
from flowgen.paths import RectifiedFlow
from flowgen.testing import GaussianData

from _distill_helpers import F64, PATHS, PREDICTIONS, RandomLinearTeacher


def _ddim_reference(model, path, x, t, s, prediction):
    """One deterministic DDIM step written independently: x_s = α_s D + σ_s ε̂ through the conversion hub."""
    data, noise = flowgen.to_data_noise(model(x, t), src=prediction, x_t=x, t=t, path=path)
    return path.alpha(s)[:, None] * data + path.sigma(s)[:, None] * noise


def _times(path, batch, g, *, final: bool):
    lo, hi = max(path.t_min, 0.05), min(path.t_max, 0.95)
    t = lo + 0.3 * (hi - lo) + 0.7 * (hi - lo) * torch.rand(batch, generator=g, dtype=F64)
    t_next = torch.zeros(batch, dtype=F64) if final else t - (t - lo) * (0.2 + 0.6 * torch.rand(batch, generator=g, dtype=F64))
    t_mid = t_next + (t - t_next) * (0.2 + 0.6 * torch.rand(batch, generator=g, dtype=F64))
    return t, t_mid, t_next


# the final step to σ = 0 exists on every path with σ(0) = 0 (all but rectified flow with sigma_min > 0)
_CASES = [(name, False) for name in sorted(PATHS)] + [(name, True) for name in sorted(PATHS) if name != "rf_sigma_min"]


@pytest.mark.parametrize("path_name,final", _CASES, ids=[f"{n}-{'to_sigma0' if f else 'inner'}" for n, f in _CASES])
def test_one_student_step_lands_on_two_teacher_steps(path_name, final):
    path = PATHS[path_name]()
    assert not final or float(path.sigma(torch.zeros(1, dtype=F64))[0]) == 0.0
    dim, batch = 3, 6
    teacher = RandomLinearTeacher(dim, seed=1)
    g = torch.Generator().manual_seed(hash(path_name) % 2**31)
    x_t = 2.0 * torch.randn(batch, dim, generator=g, dtype=F64)
    t, t_mid, t_next = _times(path, batch, g, final=final)
    for tp in PREDICTIONS:
        x_mid = _ddim_reference(teacher, path, x_t, t, t_mid, tp)
        x_two = _ddim_reference(teacher, path, x_mid, t_mid, t_next, tp)
        for sp in PREDICTIONS:
            target = progressive_target(teacher, x_t=x_t, t=t, t_mid=t_mid, t_next=t_next, path=path,
                                        teacher_prediction=tp, student_prediction=sp)
            assert target.dtype == F64 and not target.requires_grad
            x_one = _ddim_reference(lambda x, tt: target, path, x_t, t, t_next, sp)
            err = (x_one - x_two).abs().max() / (1.0 + x_two.abs().max())
            assert float(err) < 1e-11, (path_name, tp, sp, float(err))


def test_target_is_in_the_students_parameterization():
    """For a data-predicting student the target is D̃; for others it is D̃ converted at (x_t, t)."""
    path = PATHS["cosine"]()
    teacher = RandomLinearTeacher(2, seed=3)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(5, 2, generator=g, dtype=F64)
    t, t_mid, t_next = _times(path, 5, g, final=False)
    kw = dict(x_t=x_t, t=t, t_mid=t_mid, t_next=t_next, path=path, teacher_prediction="noise")
    d = progressive_target(teacher, student_prediction="data", **kw)
    for sp in PREDICTIONS:
        got = progressive_target(teacher, student_prediction=sp, **kw)
        want = flowgen.convert(d, src="data", dst=sp, x_t=x_t, t=t, path=path)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_truncated_snr_weight_is_the_same_data_space_loss_in_every_parameterization():
    path = PATHS["vp"]()
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(7, 3, generator=g, dtype=F64)
    t = 0.05 + 0.9 * torch.rand(7, generator=g, dtype=F64)
    d_hat, d_tgt = torch.randn(7, 3, generator=g, dtype=F64), torch.randn(7, 3, generator=g, dtype=F64)
    snr = torch.exp(path.log_snr(t))
    want = torch.clamp(snr, min=1.0) * (d_hat - d_tgt).pow(2).mean(1)
    w = TruncatedSNRWeight()
    for sp in PREDICTIONS:
        p_hat = flowgen.convert(d_hat, src="data", dst=sp, x_t=x_t, t=t, path=path)
        p_tgt = flowgen.convert(d_tgt, src="data", dst=sp, x_t=x_t, t=t, path=path)
        got = w(path, t, Prediction.parse(sp)) * (p_hat - p_tgt).pow(2).mean(1)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    assert torch.equal(w.data_weight(path, t), torch.clamp(snr, min=1.0))
    assert bool((prediction_error_scale(path, t, "data") == 1).all())


def _oracle_teacher(path, prediction="v", dim=2):
    gauss = GaussianData.random(dim, generator=torch.Generator().manual_seed(5))
    return gauss, gauss.model(path, prediction)


def test_loss_object_draws_adjacent_grid_points_and_matches_the_functional_loss():
    path = PATHS["cosine"]()
    gauss, teacher = _oracle_teacher(path)
    pd = ProgressiveDistillation(teacher, student_steps=4, t_max=0.999, student_prediction="noise")
    assert pd.teacher_prediction is Prediction.V and pd.student_prediction is Prediction.NOISE
    tg, sg = pd.teacher_grid, pd.student_grid
    assert tg.numel() == 9 and torch.equal(sg, tg[::2]) and float(tg[0]) == 0.999 and float(tg[-1]) == 0.0
    data = gauss.sample(64, generator=torch.Generator().manual_seed(1))
    t, t_mid, t_next, noise = pd.draw(data, torch.Generator().manual_seed(3))
    idx = (t[:, None] == sg[None, :]).nonzero()[:, 1]
    assert idx.numel() == 64 and int(idx.max()) < 4
    assert torch.equal(t_next, sg[idx + 1]) and torch.equal(t_mid, tg[2 * idx + 1])
    student = RandomLinearTeacher(2, seed=9)
    out = pd.loss(student, data, generator=torch.Generator().manual_seed(3))
    ref = progressive_distillation_loss(student, teacher, data=data, noise=noise, t=t, t_mid=t_mid, t_next=t_next, path=path,
                                        teacher_prediction="v", student_prediction="noise")
    torch.testing.assert_close(out.per_sample, ref, rtol=0, atol=0)
    assert out.loss.shape == () and out.per_sample.shape == (64,)
    assert torch.equal(out.loss, out.per_sample.mean())


def test_loss_is_differentiable_in_the_student_only():
    path = RectifiedFlow()
    gauss, teacher = _oracle_teacher(path, "velocity")
    student = torch.nn.Linear(2, 2).double()
    model = lambda x, t: student(x)  # noqa: E731
    pd = ProgressiveDistillation(teacher, student_steps=2)
    out = pd.loss(model, gauss.sample(16), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert student.weight.grad is not None and bool(torch.isfinite(student.weight.grad).all())
    assert not out.target.requires_grad


def test_rounds_halve_the_steps_and_state_resumes_mid_round():
    path = PATHS["vp"]()
    gauss, teacher = _oracle_teacher(path, "noise")
    pd = ProgressiveDistillation(teacher, student_steps=8, grid="karras", student_prediction="v")
    grids = [pd.student_grid]
    assert pd.rounds_left == 3
    state0 = pd.state_dict()
    json.dumps(state0)  # plain data
    pd.next_round()
    assert (pd.round, pd.student_steps) == (1, 4) and torch.equal(pd.teacher_grid, grids[0])
    assert pd.teacher_prediction is Prediction.V
    pd.next_round(teacher=RandomLinearTeacher(2))
    pd.next_round()
    assert (pd.round, pd.student_steps, pd.rounds_left) == (3, 1, 0)
    with pytest.raises(ValueError, match="finished"):
        pd.next_round()
    # resume: a fresh object loaded with round-1 state gives the same loss as the original at round 1
    a = ProgressiveDistillation(teacher, student_steps=8, grid="karras", student_prediction="v")
    a.next_round()
    b = ProgressiveDistillation(teacher, student_steps=8, grid="karras", student_prediction="v")
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    data, student = gauss.sample(32), RandomLinearTeacher(2, seed=4)
    la = a.loss(student, data, generator=torch.Generator().manual_seed(7)).per_sample
    lb = b.loss(student, data, generator=torch.Generator().manual_seed(7)).per_sample
    assert torch.equal(la, lb)
    assert (b.round, b.student_steps) == (1, 4)


def test_bad_input_gives_clear_errors():
    path = RectifiedFlow()
    gauss, teacher = _oracle_teacher(path, "velocity")
    bare = lambda x, t: x  # noqa: E731 - a teacher without metadata
    with pytest.raises(ValueError, match="no path metadata"):
        ProgressiveDistillation(bare, student_steps=2, teacher_prediction="velocity")
    with pytest.raises(ValueError, match="no prediction metadata"):
        ProgressiveDistillation(bare, student_steps=2, path=path)
    with pytest.raises(ValueError, match="student_steps"):
        ProgressiveDistillation(teacher, student_steps=0)
    with pytest.raises(ValueError, match="singular"):  # an ε student cannot take a DDIM step from t = 1 on RF
        ProgressiveDistillation(teacher, student_steps=2, student_prediction="noise")
    with pytest.raises(ValueError, match="2\\*student_steps \\+ 1"):
        ProgressiveDistillation(teacher, student_steps=2, grid=[1.0, 0.5, 0.0])
    pd = ProgressiveDistillation(teacher, student_steps=3, event_shape=(2,))
    with pytest.raises(ValueError, match="odd"):
        pd.next_round()
    with pytest.raises(ValueError, match="per-sample shape"):
        pd.loss(bare, torch.randn(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="event dimension"):
        pd.loss(bare, torch.randn(4, dtype=F64))
    with pytest.raises(ValueError, match="non-finite"):
        pd.loss(bare, torch.full((4, 2), float("nan"), dtype=F64))
    wrong = lambda x, t: x[:, :1]  # noqa: E731 - student output of the wrong shape
    with pytest.raises(ValueError, match="shape"):
        pd.loss(wrong, gauss.sample(4))
    x = torch.randn(3, 2, dtype=F64)
    t = torch.full((3,), 0.5, dtype=F64)
    with pytest.raises(ValueError, match="t > t_mid > t_next"):
        progressive_target(teacher, x_t=x, t=t, t_mid=t, t_next=t * 0, path=path, teacher_prediction="velocity",
                           student_prediction="data")
    with pytest.raises(ValueError, match="state"):
        pd.load_state_dict({"round": 0})


# --- k teacher steps per student step (factor > 2, TRACT-style rounds) ---------------------------------------------
@pytest.mark.parametrize("path_name", sorted(PATHS))
def test_one_student_step_lands_on_k_teacher_steps(path_name):
    path = PATHS[path_name]()
    dim, batch, k = 3, 5, 4
    teacher = RandomLinearTeacher(dim, seed=2)
    g = torch.Generator().manual_seed(11)
    x_t = 2.0 * torch.randn(batch, dim, generator=g, dtype=F64)
    t, _, t_next = _times(path, batch, g, final=False)
    # k - 1 intermediate times, decreasing along each row
    frac = torch.sort(torch.rand(batch, k - 1, generator=g, dtype=F64), dim=1, descending=True).values
    t_mid = t_next[:, None] + (t - t_next)[:, None] * (0.05 + 0.9 * frac)
    for tp, sp in (("noise", "v"), ("velocity", "data"), ("data", "noise")):
        x = x_t
        for a, b in zip([t, *t_mid.unbind(1)], [*t_mid.unbind(1), t_next]):
            x = _ddim_reference(teacher, path, x, a, b, tp)
        target = progressive_target(teacher, x_t=x_t, t=t, t_mid=t_mid, t_next=t_next, path=path,
                                    teacher_prediction=tp, student_prediction=sp)
        x_one = _ddim_reference(lambda xx, tt: target, path, x_t, t, t_next, sp)
        err = (x_one - x).abs().max() / (1.0 + x.abs().max())
        assert float(err) < 1e-11, (path_name, tp, sp, float(err))
    # a (B, 1) t_mid is the paper's two steps
    one = progressive_target(teacher, x_t=x_t, t=t, t_mid=t_mid[:, 1], t_next=t_next, path=path,
                             teacher_prediction="v", student_prediction="v")
    col = progressive_target(teacher, x_t=x_t, t=t, t_mid=t_mid[:, 1:2], t_next=t_next, path=path,
                             teacher_prediction="v", student_prediction="v")
    assert torch.equal(one, col)


def test_factor_grids_draws_rounds_and_state():
    path = PATHS["cosine"]()
    gauss, teacher = _oracle_teacher(path)
    pd = ProgressiveDistillation(teacher, student_steps=4, t_max=0.999, factor=4)
    tg, sg = pd.teacher_grid, pd.student_grid
    assert (pd.factor, tg.numel(), sg.numel()) == (4, 17, 5) and torch.equal(sg, tg[::4])
    data = gauss.sample(64, generator=torch.Generator().manual_seed(1))
    t, t_mid, t_next, noise = pd.draw(data, torch.Generator().manual_seed(3))
    assert t_mid.shape == (64, 3)
    idx = (t[:, None] == sg[None, :]).nonzero()[:, 1]
    assert idx.numel() == 64 and set(idx.tolist()) == {0, 1, 2, 3}
    assert torch.equal(t_next, sg[idx + 1])
    assert torch.equal(t_mid, tg[4 * idx[:, None] + torch.arange(1, 4)])
    student = RandomLinearTeacher(2, seed=9)
    out = pd.loss(student, data, generator=torch.Generator().manual_seed(3))
    ref = progressive_distillation_loss(student, teacher, data=data, noise=noise, t=t, t_mid=t_mid, t_next=t_next, path=path,
                                        teacher_prediction="v", student_prediction="v")
    torch.testing.assert_close(out.per_sample, ref, rtol=0, atol=0)
    # the next round divides N by its own factor; the state carries it and resumes
    pd.next_round(factor=2)
    assert (pd.round, pd.student_steps, pd.factor) == (1, 2, 2) and torch.equal(pd.teacher_grid, sg)
    b = ProgressiveDistillation(teacher, student_steps=4, t_max=0.999, factor=4)
    b.load_state_dict(json.loads(json.dumps(pd.state_dict())))
    assert (b.round, b.student_steps, b.factor) == (1, 2, 2) and torch.equal(b.teacher_grid, pd.teacher_grid)
    old = pd.state_dict()
    del old["factor"]  # a checkpoint written before the factor existed is a halving run
    b.load_state_dict(old)
    assert b.factor == 2
    with pytest.raises(ValueError, match="not divisible by factor=4"):
        ProgressiveDistillation(teacher, student_steps=6, factor=2).next_round(factor=4)
    with pytest.raises(ValueError, match="factor must be an integer >= 2"):
        ProgressiveDistillation(teacher, student_steps=4, factor=1)
    with pytest.raises(ValueError, match="4\\*student_steps \\+ 1"):
        ProgressiveDistillation(teacher, student_steps=2, factor=4, grid=[1.0, 0.5, 0.25, 0.0])
    x = torch.randn(3, 2, dtype=F64)
    t3 = torch.full((3,), 0.8, dtype=F64)
    with pytest.raises(ValueError, match="columns decreasing"):
        progressive_target(teacher, x_t=x, t=t3, t_mid=torch.tensor([[0.3, 0.5]] * 3, dtype=F64), t_next=t3 * 0.1,
                           path=path, teacher_prediction="v", student_prediction="v")
    with pytest.raises(ValueError, match="\\(B, k - 1\\)"):
        progressive_target(teacher, x_t=x, t=t3, t_mid=torch.full((2, 2), 0.5, dtype=F64), t_next=t3 * 0.1,
                           path=path, teacher_prediction="v", student_prediction="v")


# --- inputs from the teacher's own trajectories ---------------------------------------------------------------------
@pytest.mark.parametrize("factor", [2, 4])
def test_trajectory_states_are_the_teachers_ddim_sampler_states(factor):
    path = PATHS["cosine"]()
    teacher = RandomLinearTeacher(3, seed=6)
    pd = ProgressiveDistillation(teacher, path=path, teacher_prediction="v", student_steps=4, t_max=0.99, factor=factor)
    noise = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    i = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    got = pd.trajectory_states(noise, i)
    g = pd.teacher_grid
    for m in range(8):
        steps = factor * int(i[m])
        if steps == 0:
            want = path.sigma(g[:1])[0] * noise[m:m + 1]
        else:  # flowgen's own DDIM sampler on the teacher grid's first k·i steps
            want = flowgen.samplers.sample(teacher, path, noise[m:m + 1], prediction="v", method="ddim", grid=g[:steps + 1]).samples
        torch.testing.assert_close(got[m:m + 1], want, rtol=1e-12, atol=1e-12)


def test_trajectory_fraction_replaces_the_first_inputs_only():
    path = PATHS["cosine"]()
    gauss, teacher = _oracle_teacher(path)
    data = gauss.sample(16, generator=torch.Generator().manual_seed(1))
    student = RandomLinearTeacher(2, seed=9)
    plain = ProgressiveDistillation(teacher, student_steps=4, t_max=0.999)
    mixed = ProgressiveDistillation(teacher, student_steps=4, t_max=0.999, trajectory_fraction=0.25)
    a = plain.loss(student, data, generator=torch.Generator().manual_seed(3))
    b = mixed.loss(student, data, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.x_t[4:], b.x_t[4:]) and torch.equal(a.per_sample[4:], b.per_sample[4:])
    i, _, _, _, noise = plain._draw(data, torch.Generator().manual_seed(3))
    torch.testing.assert_close(b.x_t[:4], plain.trajectory_states(noise[:4], i[:4]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="trajectory_fraction"):
        ProgressiveDistillation(teacher, student_steps=4, trajectory_fraction=1.5)
