"""EndpointDistillModule: fine-tunes a progressive student on the teacher's endpoints, resumes exactly, refuses bad input."""

import os

import lightning.pytorch as pl
import pytest
import torch

from flowgen.checkpoint import load_generator, safe_load
from flowgen.distill import ProgressiveGenerator
from flowgen.lightning import ToyDataModule
from flowgen.lightning.distill import EndpointDistillModule, ProgressiveDistillModule, load_student
from flowgen.samplers import sample

from .conftest import assert_same_state, state_of

PAIRS = dict(num_pairs=512, pair_batch_size=256, pair_method="heun", pair_steps=16)


def _data(bs=64):
    return ToyDataModule("moons", batch_size=bs, val_size=128, batches_per_epoch=4)


@pytest.fixture(scope="module")
def student_ckpt(rf_teacher, tmp_path_factory):
    """A 2-step progressive student of the moons teacher (rounds 4 → 2, short)."""
    from .conftest import make_trainer_

    root = tmp_path_factory.mktemp("pd")
    pl.seed_everything(0, verbose=False)
    module = ProgressiveDistillModule(rf_teacher, student_steps=4, final_steps=2, steps_per_round=[30, 30], lr=3e-3)
    make_trainer_(root, 60).fit(module, _data())
    return os.path.join(str(root), "students", "progressive_N2.ckpt")


def _make(teacher, student, **kw):
    return EndpointDistillModule(teacher, student, lr=3e-3, **{**PAIRS, **kw})


def test_fine_tuning_lowers_the_endpoint_error_and_the_snapshot_samples(rf_teacher, student_ckpt, tmp_path, trainer_factory):
    teacher, path, pred, _ = load_generator(rf_teacher)
    noise = torch.randn(1024, 2, generator=torch.Generator().manual_seed(123))
    target = sample(teacher, path, noise, prediction=pred, method="heun", steps=16).samples

    def rms(gen):
        return float((gen.sample(noise, steps=2) - target).pow(2).sum(1).mean().sqrt())

    before = rms(load_student(student_ckpt))
    pl.seed_everything(0, verbose=False)
    module = _make(rf_teacher, student_ckpt)
    trainer_factory(tmp_path, 150).fit(module, _data())
    snap = tmp_path / "students" / "endpoint_N2.ckpt"
    assert module.exported == [str(snap)]
    gen = load_student(snap)
    assert isinstance(gen, ProgressiveGenerator) and gen.supported_steps == (2,)
    torch.testing.assert_close(gen.grid, load_student(student_ckpt).grid)
    assert gen.metadata["distill_method"] == "endpoint" and gen.metadata["endpoint"]["steps"] == 2
    after = rms(gen)
    assert after < 0.7 * before, (before, after)
    # the pairs are cached under the teacher's fingerprint and reused by a second run
    folders = os.listdir(tmp_path / "pairs")
    assert len(folders) == 1 and folders[0].startswith("teacher_")


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(rf_teacher, student_ckpt, tmp_path, trainer_factory):
    from .test_modules import Crash

    pl.seed_everything(0, verbose=False)
    ref = _make(rf_teacher, student_ckpt, eval_ema_decay=0.5)
    trainer_factory(tmp_path / "a", 8, deterministic=True, checkpoint_every=100).fit(ref, _data())
    pl.seed_everything(0, verbose=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer_factory(tmp_path / "b", 8, deterministic=True, checkpoint_every=4, callbacks=[Crash(5)]).fit(
            _make(rf_teacher, student_ckpt, eval_ema_decay=0.5), _data())
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert safe_load(last)["flowgen"]["distill_state"]["method"] == "endpoint"
    pl.seed_everything(999, verbose=False)
    resumed = _make(rf_teacher, student_ckpt, eval_ema_decay=0.5)
    trainer_factory(tmp_path / "b", 8, deterministic=True, checkpoint_every=100).fit(resumed, _data(), ckpt_path=str(last))
    assert_same_state(state_of(ref), state_of(resumed))


def test_bad_input_is_refused(rf_teacher, eps_teacher, student_ckpt, tmp_path):
    with pytest.raises(ValueError, match="student_checkpoint"):
        EndpointDistillModule(rf_teacher)
    with pytest.raises(FileNotFoundError, match="student_checkpoint"):
        EndpointDistillModule(rf_teacher, str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="teacher"):
        EndpointDistillModule(None, student_ckpt)
    with pytest.raises(ValueError, match="path"):  # a student of another path's teacher
        EndpointDistillModule(eps_teacher, student_ckpt)
    with pytest.raises(ValueError, match="student_checkpoint"):
        EndpointDistillModule(rf_teacher, student_ckpt, student=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="pair_method"):
        EndpointDistillModule(rf_teacher, student_ckpt, pair_method="nonsense")
    with pytest.raises(ValueError, match="student_checkpoint.*DDIM student"):
        EndpointDistillModule(rf_teacher, rf_teacher)  # a teacher, not a distilled student
