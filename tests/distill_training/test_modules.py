"""Distillation modules: student checkpoints that sample, exact resume, clear errors on bad input."""

import os

import lightning.pytorch as pl
import pytest
import torch

from flowgen.checkpoint import MissingMetadataError, atomic_save, safe_load
from flowgen.lightning import ToyDataModule
from flowgen.lightning.distill import (
    ConsistencyModule,
    DistillStateError,
    ProgressiveDistillModule,
    ReflowModule,
    load_student,
)
from flowgen.nn import MLP

from .conftest import MLP_SPEC, assert_same_state, state_of

REFLOW_KW = dict(num_pairs=192, pair_batch_size=64, pair_method="heun", pair_steps=4, stats_samples=32, stats_steps=4)

# method name → (constructor(teacher, **more arguments) → module, total steps, a crash step in the middle of a later phase)
METHODS = {
    "progressive": (lambda t, **kw: ProgressiveDistillModule(t, student_steps=4, steps_per_round=[3, 3, 4], lr=3e-3, **kw), 10, 5),
    "consistency_distillation": (lambda t, **kw: ConsistencyModule(t, num_scales=8, ema_decay=0.9, lr=3e-3, sigma_data=1.0, **kw), 8, 5),
    "consistency_training": (lambda t, **kw: ConsistencyModule(None, MLP(2, hidden=32, depth=2), mode="training",
                                                               path={"name": "RectifiedFlow", "sigma_min": 0.0}, curriculum="ict",
                                                               s0=2, s1=16, lr=3e-3, student_spec=MLP_SPEC, **kw), 8, 5),
    "reflow": (lambda t, **kw: ReflowModule(t, reflow_rounds=1, steps_per_round=3, distill_steps=5, lr=3e-3, **REFLOW_KW, **kw), 8, 5),
}


def _data(bs=64):
    # batches_per_epoch=4 makes the runs cross epoch boundaries (the data stream must resume too)
    return ToyDataModule("moons", batch_size=bs, val_size=128, batches_per_epoch=4)


class Crash(pl.Callback):
    """Raise at the start of a step, after the previous step's checkpoint was written."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def _run(method, teacher, root, trainer_factory, steps=None, seed=0, module_kw=None, **kw):
    make, total, _ = METHODS[method]
    pl.seed_everything(seed, verbose=False)
    module = make(teacher, **(module_kw or {}))
    trainer_factory(root, steps or total, **kw).fit(module, _data())
    return module


@pytest.mark.parametrize("method", sorted(METHODS))
def test_student_checkpoint_carries_its_metadata_and_samples_with_flowgen_sample(method, rf_teacher, tmp_path, trainer_factory, capsys):
    from flowgen.cli import main as flowgen_main

    module = _run(method, rf_teacher, tmp_path, trainer_factory, checkpoint_every=4)
    last = tmp_path / "checkpoints" / "last.ckpt"
    ck = safe_load(last)
    meta = ck["flowgen"]
    assert ck["global_step"] == METHODS[method][1]  # the final state, not the last periodic one
    assert meta["kind"] == "student" and meta["distill_method"] == method
    assert meta["path"]["name"] == "RectifiedFlow" and meta["prediction"] in ("velocity", "data")
    assert meta["model"]["class_path"] == "flowgen.nn.MLP" and meta["data_shape"] == [2]
    assert meta["generator"] == meta["distill"] and meta["generator"]["generator"] in ("progressive", "consistency", "reflow")
    gen = load_student(last)
    k = gen.default_steps
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    x = gen.sample(noise, steps=k, generator=torch.Generator().manual_seed(1))
    assert x.shape == (16, 2) and torch.isfinite(x).all()
    # the same samples as the module's own generator (the checkpoint holds the final weights)
    torch.testing.assert_close(x, module.generator().sample(noise, steps=k, generator=torch.Generator().manual_seed(1)))
    out = tmp_path / "s.npy"
    assert flowgen_main(["sample", "--ckpt", str(last), "--steps", str(k), "--num", "20", "--out", str(out), "--no-progress"]) == 0
    import numpy as np

    assert np.load(out).shape == (20, 2)
    # an unsupported number of steps is a one-line error listing the supported ones
    bad = 3 if gen.supported_steps is not None and 3 not in gen.supported_steps else 7
    if gen.supported_steps is not None:
        capsys.readouterr()
        assert flowgen_main(["sample", "--ckpt", str(last), "--steps", str(bad), "--num", "4", "--out", str(out), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert f"steps={bad}" in err and "supported steps" in err
        with pytest.raises(ValueError, match="supported steps"):
            gen.sample(noise, steps=bad)
    assert module.exported and all(os.path.isfile(f) for f in module.exported)


@pytest.mark.parametrize("eval_ema", [None, 0.5], ids=["no_ema", "eval_ema"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(method, eval_ema, rf_teacher, tmp_path, trainer_factory):
    make, total, crash = METHODS[method]
    more = {} if eval_ema is None else {"eval_ema_decay": eval_ema}
    ref = _run(method, rf_teacher, tmp_path / "a", trainer_factory, deterministic=True, checkpoint_every=100, module_kw=more)

    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(method, rf_teacher, tmp_path / "b", trainer_factory, deterministic=True, checkpoint_every=crash - 1,
             callbacks=[Crash(crash)], module_kw=more)
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    saved = safe_load(last)
    assert saved["global_step"] == crash - 1
    state = saved["flowgen"]["distill_state"]
    assert state["method"] == method and state["phase"] >= (1 if method in ("progressive", "reflow") else 0)

    pl.seed_everything(999, verbose=False)  # another seed: everything must come from the checkpoint
    resumed = make(rf_teacher, **more)
    trainer_factory(tmp_path / "b", total, deterministic=True, checkpoint_every=100).fit(resumed, _data(), ckpt_path=str(last))
    assert_same_state(state_of(ref), state_of(resumed))
    assert any(k.startswith("student_ema.ema_model.") for k in state_of(ref)) == (eval_ema is not None)
    assert ref.phase == resumed.phase


def test_progressive_round_n_and_grid_live_in_the_checkpoint(rf_teacher, tmp_path, trainer_factory):
    with pytest.raises(RuntimeError):
        _run("progressive", rf_teacher, tmp_path, trainer_factory, checkpoint_every=4, callbacks=[Crash(5)])
    meta = safe_load(tmp_path / "checkpoints" / "last.ckpt")["flowgen"]
    prog = meta["distill_state"]["method_state"]["distiller"]
    # steps_per_round [3, 3, 4]: step 4 is in round 1 (N = 2), whose teacher grid (2N steps) is the round-0 student grid
    assert prog["round"] == 1 and prog["student_steps"] == 2 and prog["teacher_grid"] == [1.0, 0.75, 0.5, 0.25, 0.0]
    sd = safe_load(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    # from round 1 on the teacher is the previous student: its weights are in the checkpoint
    assert any(k.startswith("round_teacher.") for k in sd) and any(k.startswith("teacher.") for k in sd)
    assert meta["generator"]["grid"] == [1.0, 0.5, 0.0]


def test_progressive_module_takes_an_explicit_first_grid(rf_teacher, tmp_path, trainer_factory):
    grid = [1.0, 0.8, 0.55, 0.3, 0.12, 0.0]  # factor 5, one student step: every fifth point
    with pytest.raises(ValueError, match="grid"):
        ProgressiveDistillModule(rf_teacher, student_steps=1, final_steps=1, factor=5, steps_per_round=2, grid=grid[:-1])
    m = ProgressiveDistillModule(rf_teacher, student_steps=2, final_steps=1, factor=[2, 2], steps_per_round=2,
                                 grid=[1.0, 0.9, 0.6, 0.25, 0.0])
    assert m.distiller.teacher_grid.tolist() == [1.0, 0.9, 0.6, 0.25, 0.0] and m.distiller.student_grid.tolist() == [1.0, 0.6, 0.0]
    trainer_factory(tmp_path, 4).fit(m, _data())
    assert m.generator().grid.tolist() == [1.0, 0.0]
    one = ProgressiveDistillModule(rf_teacher, student_steps=1, final_steps=1, factor=5, steps_per_round=2, grid=grid)
    assert one.distiller.teacher_grid.tolist() == grid and one.distiller.student_grid.tolist() == [1.0, 0.0]


def test_a_teacher_initialised_student_with_another_prediction_is_warned_about(rf_teacher):
    import warnings

    with pytest.warns(UserWarning, match="trained to predict 'velocity', but student_prediction is 'data'"):
        ProgressiveDistillModule(rf_teacher, student_steps=2, steps_per_round=2, student_prediction="data")
    with pytest.warns(UserWarning, match="trained to predict 'velocity', but student_prediction is 'noise'"):
        ReflowModule(rf_teacher, student_prediction="noise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the teacher's own prediction, or fresh weights: no warning
        ProgressiveDistillModule(rf_teacher, student_steps=2, steps_per_round=2, student_prediction="velocity")
        ProgressiveDistillModule(rf_teacher, student_steps=2, steps_per_round=2, student_prediction="data", init_from_teacher=False)
        ReflowModule(rf_teacher)


def test_progressive_factor_rounds_snapshot_and_resume_mid_round(rf_teacher, tmp_path, trainer_factory):
    """factor=[2, 4, 2]: N = 8 (teacher 16 steps) → 2 (4 steps of the N = 8 student each) → 1; resumes in round 1."""
    def make():
        return ProgressiveDistillModule(rf_teacher, student_steps=8, factor=[2, 4, 2], steps_per_round=[3, 3, 4], lr=3e-3)

    pl.seed_everything(0, verbose=False)
    ref = make()
    trainer_factory(tmp_path / "a", 10, deterministic=True, checkpoint_every=100).fit(ref, _data())
    assert [os.path.basename(f) for f in ref.exported] == ["progressive_N8.ckpt", "progressive_N2.ckpt", "progressive_N1.ckpt"]
    assert (ref.distiller.student_steps, ref.distiller.factor) == (1, 2)

    pl.seed_everything(0, verbose=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer_factory(tmp_path / "b", 10, deterministic=True, checkpoint_every=4, callbacks=[Crash(5)]).fit(make(), _data())
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    prog = safe_load(last)["flowgen"]["distill_state"]["method_state"]["distiller"]
    assert (prog["round"], prog["student_steps"], prog["factor"]) == (1, 2, 4)
    assert prog["teacher_grid"] == [1.0 - i / 8 for i in range(9)]  # the round-0 student's grid: every 2nd of 16 steps
    pl.seed_everything(999, verbose=False)
    resumed = make()
    trainer_factory(tmp_path / "b", 10, deterministic=True, checkpoint_every=100).fit(resumed, _data(), ckpt_path=str(last))
    assert_same_state(state_of(ref), state_of(resumed))


def test_reflow_resumes_after_a_crash_during_pair_generation(rf_teacher, tmp_path, trainer_factory, monkeypatch):
    import flowgen.distill.reflow as reflow_mod

    ref = _run("reflow", rf_teacher, tmp_path / "a", trainer_factory, deterministic=True, checkpoint_every=100)
    real, calls = reflow_mod.sample, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # round 1 wrote its 3 shards; the crash hits the 2nd shard of the distillation pairs
            raise RuntimeError("simulated crash in pair generation")
        return real(*args, **kwargs)

    monkeypatch.setattr(reflow_mod, "sample", flaky)
    with pytest.raises(RuntimeError, match="pair generation"):
        _run("reflow", rf_teacher, tmp_path / "b", trainer_factory, deterministic=True, checkpoint_every=1)
    monkeypatch.setattr(reflow_mod, "sample", real)
    folders = sorted(d for d in os.listdir(tmp_path / "b" / "pairs"))
    assert len(folders) == 2 and len(os.listdir(tmp_path / "b" / "pairs" / folders[1])) == 2  # manifest + 1 shard
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    pl.seed_everything(5, verbose=False)
    resumed = METHODS["reflow"][0](rf_teacher)
    trainer_factory(tmp_path / "b", 8, deterministic=True, checkpoint_every=100).fit(resumed, _data(), ckpt_path=str(last))
    assert_same_state(state_of(ref), state_of(resumed))
    assert set(resumed.stats) == {"teacher", "reflow_round1"}
    assert resumed.stats["reflow_round1"]["path_energy"] >= 1.0 - 1e-6


def _strip_metadata(src, dst, *keys):
    ck = safe_load(src)
    for k in keys:
        ck["flowgen"].pop(k)
    atomic_save(ck, dst)
    return str(dst)


@pytest.mark.parametrize("missing", ["path", "prediction"])
@pytest.mark.parametrize("cls", [ProgressiveDistillModule, ConsistencyModule, ReflowModule])
def test_teacher_checkpoint_without_path_or_prediction_is_refused(cls, missing, rf_teacher, tmp_path):
    bad = _strip_metadata(rf_teacher, tmp_path / "bad.ckpt", missing)
    with pytest.raises(MissingMetadataError, match=f"teacher.*lacks the {missing} metadata"):
        cls(bad)


def test_checkpoint_without_flowgen_metadata_and_missing_files_are_refused(rf_teacher, tmp_path):
    ck = safe_load(rf_teacher)
    ck.pop("flowgen")
    atomic_save(ck, tmp_path / "plain.ckpt")
    with pytest.raises(MissingMetadataError, match="no flowgen metadata"):
        ProgressiveDistillModule(str(tmp_path / "plain.ckpt"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ReflowModule(str(tmp_path / "nope.ckpt"))
    with pytest.raises(ValueError, match="needs a teacher"):
        ProgressiveDistillModule(None)
    with pytest.raises(ValueError, match="needs a teacher"):
        ConsistencyModule(None, MLP(2, hidden=8, depth=1))


def test_a_network_teacher_needs_path_and_prediction():
    net = MLP(2, hidden=8, depth=1)
    with pytest.raises(ValueError, match="no path metadata"):
        ProgressiveDistillModule(net, student_steps=2)
    from flowgen.paths import RectifiedFlow

    with pytest.raises(ValueError, match="no prediction metadata"):
        ReflowModule(net, teacher_path=RectifiedFlow())
    m = ProgressiveDistillModule(net, student_steps=2, teacher_path=RectifiedFlow(), teacher_prediction="velocity")
    assert m.distiller.student_steps == 2


def test_bad_schedules_are_refused(rf_teacher):
    with pytest.raises(ValueError, match="power of two"):
        ProgressiveDistillModule(rf_teacher, student_steps=6)
    with pytest.raises(ValueError, match="one per phase"):
        ProgressiveDistillModule(rf_teacher, student_steps=4, steps_per_round=[10, 10])
    with pytest.raises(ValueError, match="times a power of factor=4"):
        ProgressiveDistillModule(rf_teacher, student_steps=8, factor=4)
    with pytest.raises(ValueError, match="must reach final_steps=1"):
        ProgressiveDistillModule(rf_teacher, student_steps=8, factor=[2, 4])
    with pytest.raises(ValueError, match="factor must be an integer >= 2"):
        ProgressiveDistillModule(rf_teacher, student_steps=4, factor=1)
    with pytest.raises(ValueError, match="nothing to train"):
        ReflowModule(rf_teacher, reflow_rounds=0, distill=False)
    with pytest.raises(ValueError, match="pair_method"):  # at construction, not when the pairs are due
        ReflowModule(rf_teacher, pair_method="bogus")
    with pytest.raises(ValueError, match="mode"):
        ConsistencyModule(rf_teacher, mode="teacherless")


def test_data_of_the_wrong_shape_is_refused(rf_teacher, tmp_path, trainer_factory):
    import numpy as np

    from flowgen.lightning import TensorFileDataModule

    np.save(tmp_path / "x3.npy", np.random.default_rng(0).normal(size=(256, 3)).astype(np.float32))
    module = ProgressiveDistillModule(rf_teacher, student_steps=2, steps_per_round=2)
    with pytest.raises(ValueError, match=r"per-sample shape \(3,\) but the teacher was trained on \(2,\)"):
        trainer_factory(tmp_path / "run", 2).fit(module, TensorFileDataModule(str(tmp_path / "x3.npy"), batch_size=32))
    with pytest.raises(ValueError, match=r"per-sample shape \(3,\), expected \(2,\)"):
        module.training_step(torch.randn(8, 3), 0)


def test_resuming_with_another_method_is_refused(rf_teacher, tmp_path, trainer_factory):
    _run("progressive", rf_teacher, tmp_path, trainer_factory)
    last = str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(DistillStateError, match="'progressive' distillation, not 'reflow'"):
        trainer_factory(tmp_path / "c", 8).fit(METHODS["reflow"][0](rf_teacher), _data(), ckpt_path=last)
    with pytest.raises(DistillStateError, match="no distillation state"):
        trainer_factory(tmp_path / "d", 8).fit(METHODS["reflow"][0](rf_teacher), _data(), ckpt_path=rf_teacher)


def test_resuming_a_consistency_run_on_another_grid_is_refused(rf_teacher, tmp_path, trainer_factory):
    pl.seed_everything(0, verbose=False)
    trainer_factory(tmp_path / "a", 3).fit(ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0, spacing="karras"), _data())
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(DistillStateError, match="spacing='karras'.*spacing='uniform'"):
        trainer_factory(tmp_path / "b", 6).fit(ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0), _data(), ckpt_path=str(last))
    # a checkpoint written before the spacing was part of the run state: its hyperparameters tell
    ck = torch.load(last, weights_only=False)
    ck["flowgen"]["distill_state"]["method_state"].pop("spacing")
    assert ck["hyper_parameters"]["spacing"] == "karras"
    old = tmp_path / "old.ckpt"
    torch.save(ck, old)
    with pytest.raises(DistillStateError, match="resume with spacing='karras'"):
        trainer_factory(tmp_path / "c", 6).fit(ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0), _data(), ckpt_path=str(old))
    # the same grid resumes
    trainer_factory(tmp_path / "d", 6).fit(ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0, spacing="karras"), _data(),
                                           ckpt_path=str(old))


def test_other_path_and_prediction_teacher(eps_teacher, tmp_path, trainer_factory):
    """A DDPM ε teacher on the VP path: progressive keeps ε, consistency predicts data; both checkpoints sample."""
    pl.seed_everything(0, verbose=False)
    prog = ProgressiveDistillModule(eps_teacher, student_steps=2, steps_per_round=2, lr=1e-3)
    trainer_factory(tmp_path / "p", 4).fit(prog, _data())
    cd = ConsistencyModule(eps_teacher, num_scales=6, lr=1e-3)
    trainer_factory(tmp_path / "c", 3).fit(cd, _data())
    for root, pred in ((tmp_path / "p", "noise"), (tmp_path / "c", "data")):
        gen = load_student(root / "checkpoints" / "last.ckpt")
        assert gen.path.__class__.__name__ == "VP" and gen.prediction.value == pred
        assert torch.isfinite(gen.sample(torch.randn(8, 2), steps=gen.default_steps)).all()


def test_validation_logs_the_distance_at_each_supported_step_count(rf_teacher, tmp_path, trainer_factory):
    pl.seed_everything(0, verbose=False)
    module = ConsistencyModule(rf_teacher, num_scales=6, val_steps=[1, 2], val_num_samples=64)
    trainer_factory(tmp_path, 2, limit_val_batches=1.0, val_every=2).fit(module, _data())
    assert set(module.last_metrics) == {"val/w2_1step", "val/w2_2step"}
    assert module.last_samples.shape == (64, 2) and module.last_reference.shape == (64, 2)


def test_multistep_candidates_are_training_grid_times_thinned_evenly(rf_teacher):
    from flowgen.distill import consistency_grid

    m = ConsistencyModule(rf_teacher, num_scales=30, sigma_data=1.0, tune_candidates=5)
    d = m.distiller
    grid = consistency_grid(30, d.path, t_min=d.t_min, t_max=d.t_max, rho=d.rho, spacing=d.spacing)[1:-1].tolist()
    cands = m._tune_candidates_from_grid()
    assert len(cands) == 5 and all(c in grid for c in cands) and cands[0] == grid[0] and cands[-1] == grid[-1]
    assert ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0)._tune_candidates_from_grid() == \
        consistency_grid(6, d.path, t_min=d.t_min, t_max=d.t_max, rho=d.rho, spacing=d.spacing)[1:-1].tolist()
    u = ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0, spacing="uniform")
    assert u.distiller.spacing == "uniform" and u.distiller.config()["spacing"] == "uniform"
    want = torch.linspace(u.distiller.t_max, u.distiller.t_min, 6, dtype=torch.float64)[1:-1].tolist()
    assert u._tune_candidates_from_grid() == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="spacing must be one of"):
        ConsistencyModule(rf_teacher, num_scales=6, spacing="ρ")


def test_consistency_module_grid_default_follows_the_teachers_path(rf_teacher, eps_teacher):
    assert ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0).distiller.spacing == "uniform"
    assert ConsistencyModule(eps_teacher, num_scales=6, sigma_data=1.0).distiller.spacing == "karras"  # a VP path
    assert ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0, spacing="karras").distiller.spacing == "karras"
    assert ConsistencyModule(rf_teacher, mode="training", sigma_data=1.0, total_steps=10).distiller.spacing == "karras"


def test_consistency_time_search_scores_the_mean_over_independent_draws(rf_teacher):
    from flowgen.distill import ConsistencyGenerator, consistency_grid
    from flowgen.metrics.distances import w2_squared
    from flowgen.samplers import sample

    with pytest.raises(ValueError, match="tune_repeats"):
        ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0, tune_repeats=0)
    pl.seed_everything(0, verbose=False)
    m = ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0, tune_num=64, tune_candidates=5, max_sample_steps=2,
                          tune_repeats=3)
    m.data_shape = (2,)
    times, d = m.tune_times(), m.distiller
    g = torch.Generator().manual_seed(m.val_seed + 12345)
    draws = []
    for _ in range(3):  # per repeat: the student's noise, then the teacher reference's independent noise
        noise = torch.randn((64, 2), generator=g)
        ref_noise = torch.randn((64, 2), generator=g)
        draws.append((noise, sample(m.teacher, m.teacher_flow_path, ref_noise, prediction=m.teacher_pred, method="heun",
                                    steps=32).samples))
    cands = consistency_grid(6, d.path, t_min=d.t_min, t_max=d.t_max, rho=d.rho, spacing=d.spacing)[1:-1].tolist()
    scores, first = {}, {}
    for tau in cands:
        gen = ConsistencyGenerator(m.student, d.path, t_min=d.t_min, t_max=d.t_max, step_times={2: [d.t_max, tau]},
                                   sigma_data=d.sigma_data)
        per = [w2_squared(gen.sample(n, steps=2, generator=torch.Generator().manual_seed(m.val_seed + 2 + 1000 * r)).double(),
                          ref.double()) for r, (n, ref) in enumerate(draws)]
        scores[tau], first[tau] = sum(per) / 3, per[0]
    assert times[2] == [d.t_max, min(scores, key=scores.get)]
    assert m.tuned_scores[2] == pytest.approx(min(scores.values()), rel=1e-6)
    # one draw alone is the old search: its own argmin
    m1 = ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0, tune_num=64, tune_candidates=5, max_sample_steps=2)
    m1.student.load_state_dict(m.student.state_dict())
    m1.data_shape = (2,)
    assert m1.tune_times()[2] == [d.t_max, min(first, key=first.get)]


def test_consistency_time_search_can_score_with_sliced_w2(rf_teacher):
    from flowgen.distill import ConsistencyGenerator, consistency_grid
    from flowgen.metrics.distances import sliced_w2_squared, w2_squared
    from flowgen.samplers import sample

    with pytest.raises(ValueError, match="tune_metric"):
        ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0, tune_metric="w1")
    pl.seed_everything(0, verbose=False)
    m = ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0, tune_num=256, tune_candidates=5, max_sample_steps=2,
                          tune_metric="sliced_w2", tune_reference_method="dopri5")
    m.data_shape = (2,)
    times, d = m.tune_times(), m.distiller
    g = torch.Generator().manual_seed(m.val_seed + 12345)
    noise, ref_noise = torch.randn((256, 2), generator=g), torch.randn((256, 2), generator=g)
    ref = sample(m.teacher, m.teacher_flow_path, ref_noise, prediction=m.teacher_pred, method="dopri5").samples.double()
    sliced, exact = {}, {}
    for tau in consistency_grid(6, d.path, t_min=d.t_min, t_max=d.t_max, rho=d.rho, spacing=d.spacing)[1:-1].tolist():
        gen = ConsistencyGenerator(m.student, d.path, t_min=d.t_min, t_max=d.t_max, step_times={2: [d.t_max, tau]},
                                   sigma_data=d.sigma_data)
        x = gen.sample(noise, steps=2, generator=torch.Generator().manual_seed(m.val_seed + 2)).double()
        # the same 256 directions for every candidate
        sliced[tau] = sliced_w2_squared(x, ref, projections=256, generator=torch.Generator().manual_seed(m.val_seed + 54321))
        exact[tau] = w2_squared(x, ref)
    assert times[2] == [d.t_max, min(sliced, key=sliced.get)]
    assert m.tuned_scores[2] == pytest.approx(min(sliced.values()), rel=1e-9)
    assert min(sliced.values()) < min(exact.values())  # a different distance (sliced W2² ≤ W2²), not W2's scores


def test_consistency_time_search_reference_can_be_the_teachers_adaptive_solve(rf_teacher):
    from flowgen.samplers import sample

    with pytest.raises(ValueError, match="tune_reference_method"):
        ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0, tune_reference_method="bogus")
    seen = []

    def spy(model, path, noise, **kw):
        seen.append((kw["method"], kw.get("steps")))
        return sample(model, path, noise, **kw)

    import flowgen.samplers as samplers

    for method, steps in (("dopri5", None), ("heun", 32)):
        m = ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0, tune_num=32, tune_candidates=3, max_sample_steps=2,
                              tune_reference_method=method)
        m.data_shape = (2,)
        seen.clear()
        original = samplers.sample
        samplers.sample = spy
        try:
            m.tune_times()
        finally:
            samplers.sample = original
        assert seen == [(method, steps)]


def test_consistency_multistep_times_are_chosen_greedily_and_stored(rf_teacher, tmp_path, trainer_factory):
    from flowgen.distill import ConsistencyGenerator
    from flowgen.metrics.distances import w2_squared
    from flowgen.samplers import sample

    pl.seed_everything(0, verbose=False)
    m = ConsistencyModule(rf_teacher, num_scales=6, sigma_data=1.0, tune_sample_times=True, tune_num=64, tune_candidates=5,
                          max_sample_steps=3)
    trainer_factory(tmp_path, 3, checkpoint_every=3).fit(m, _data())
    times, d = m.sample_times, m.distiller
    assert sorted(times) == [1, 2, 3] and times[1] == [d.t_max]
    for k in (2, 3):  # greedy: each count extends the previous one with a strictly lower time
        assert times[k][:-1] == times[k - 1] and times[k][-1] < times[k - 1][-1] and times[k][-1] > d.t_min
    # τ_1 is the candidate whose 2-step samples are closest (squared W2) to the teacher's (Heun) samples
    g = torch.Generator().manual_seed(m.val_seed + 12345)
    noise = torch.randn((64, 2), generator=g)
    ref_noise = torch.randn((64, 2), generator=g)  # the reference comes from independent noise
    ref = sample(m.teacher, m.teacher_flow_path, ref_noise, prediction=m.teacher_pred, method="heun", steps=32).samples
    from flowgen.distill import consistency_grid

    # the candidates are the training grid's interior times (N = 6): the student is trained only there
    cands = consistency_grid(6, d.path, t_min=d.t_min, t_max=d.t_max, rho=d.rho, spacing=d.spacing)[1:-1].tolist()
    assert all(times[k][-1] in cands for k in (2, 3))
    scores = {}
    for tau in cands:
        gen = ConsistencyGenerator(m.student, d.path, t_min=d.t_min, t_max=d.t_max, step_times={2: [d.t_max, tau]},
                                   sigma_data=d.sigma_data)
        scores[tau] = w2_squared(gen.sample(noise, steps=2, generator=torch.Generator().manual_seed(m.val_seed + 2)).double(),
                                 ref.double())
    assert times[2][1] == min(scores, key=scores.get)
    meta = safe_load(tmp_path / "checkpoints" / "last.ckpt")["flowgen"]
    assert meta["generator"]["step_times"] == {str(k): v for k, v in times.items()}
    assert load_student(tmp_path / "checkpoints" / "last.ckpt").step_times == times



# --- the accelerator path (no host reads per step), exercised on the CPU ---------------------------------------------
def _device_path(monkeypatch):
    """Make the modules take the path they take on an accelerator: value checks off, non-finite losses deferred."""
    from flowgen.lightning.distill import DistillModule

    monkeypatch.setattr(DistillModule, "_reads_are_free", staticmethod(lambda data: False))


@pytest.mark.parametrize("method", ["progressive", "consistency_distillation", "reflow"])
def test_the_accelerator_path_trains_bitwise_as_the_cpu_path(method, rf_teacher, tmp_path, trainer_factory, monkeypatch):
    more = {"eval_ema_decay": 0.5}
    ref = _run(method, rf_teacher, tmp_path / "a", trainer_factory, deterministic=True, module_kw=more)
    _device_path(monkeypatch)
    dev = _run(method, rf_teacher, tmp_path / "b", trainer_factory, deterministic=True, module_kw=more)
    assert_same_state(state_of(ref), state_of(dev))


def test_a_training_step_on_the_accelerator_path_reads_nothing_on_the_host(rf_teacher, monkeypatch):
    from flowgen.data.toys import moons

    from flowgen.testing import HostReads

    _device_path(monkeypatch)
    module = ProgressiveDistillModule(rf_teacher, student_steps=4, steps_per_round=[3, 3, 4], lr=3e-3, eval_ema_decay=0.5)
    module._should_log = lambda: False  # not a log step (those read the window's mean once)
    data = moons(32, generator=torch.Generator().manual_seed(0))
    module.training_step(data, 0)  # the first step sets up the tracker
    module._update_eval_ema()  # the first update initialises the EMA (reads its flags once)
    with HostReads() as reads:
        for _ in range(3):
            module.training_step(data, 0).backward()
    assert reads.count == 0, dict(reads.where)
    with HostReads() as ema_reads:
        module._update_eval_ema()
    # the decay is a host scalar computed on the CPU (flowgen.lightning.module.ema_decay), no device value
    assert ema_reads.count == 1 and all(k.startswith("lightning/module.py:") and k.endswith("__float__") for k in ema_reads.where)


def test_a_non_finite_loss_on_the_accelerator_path_stops_the_run_naming_its_step(rf_teacher, tmp_path, trainer_factory,
                                                                                monkeypatch):
    from flowgen.lightning.module import NonFiniteLossError

    class Poison(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4:  # round 1 (N = 2): the student's weights blow up
                with torch.no_grad():
                    next(pl_module.student.parameters()).fill_(float("nan"))

    _device_path(monkeypatch)
    with pytest.raises(NonFiniteLossError, match="global step 4 \\(round 1"):
        _run("progressive", rf_teacher, tmp_path, trainer_factory, checkpoint_every=100, callbacks=[Poison()])
    students = os.listdir(tmp_path / "students") if os.path.isdir(tmp_path / "students") else []
    assert "progressive_N2.ckpt" not in students  # raised at the round's end, before its student was exported


def test_progressive_trajectory_inputs_apply_from_their_round_on_and_resume(rf_teacher, tmp_path, trainer_factory):
    more = {"trajectory_fraction": 0.5, "trajectory_max_steps": 2}
    first = METHODS["progressive"][0](rf_teacher, **more)
    assert first.distiller.student_steps == 4 and first.distiller.trajectory_fraction == 0.0  # N = 4 > 2
    ref = _run("progressive", rf_teacher, tmp_path / "a", trainer_factory, deterministic=True, module_kw=more)
    assert ref.distiller.trajectory_fraction == 0.5  # rounds N = 2 and 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run("progressive", rf_teacher, tmp_path / "b", trainer_factory, deterministic=True, checkpoint_every=4,
             callbacks=[Crash(5)], module_kw=more)
    pl.seed_everything(999, verbose=False)
    resumed = METHODS["progressive"][0](rf_teacher, **more)
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    trainer_factory(tmp_path / "b", 10, deterministic=True, checkpoint_every=100).fit(resumed, _data(), ckpt_path=str(last))
    assert_same_state(state_of(ref), state_of(resumed))
    plain = _run("progressive", rf_teacher, tmp_path / "c", trainer_factory, deterministic=True)
    assert any(not torch.equal(a, b) for a, b in zip(state_of(ref).values(), state_of(plain).values()))
    with pytest.raises(ValueError, match="trajectory_fraction"):
        METHODS["progressive"][0](rf_teacher, trajectory_fraction=-0.1)
