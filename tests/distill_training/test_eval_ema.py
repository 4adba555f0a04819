"""The distillers' evaluation EMA: ema-pytorch's average restarted every phase, for sampling only."""

import lightning.pytorch as pl
import pytest
import torch

from flowgen.checkpoint import safe_load
from flowgen.lightning.distill import ConsistencyModule, ProgressiveDistillModule, ReflowModule, load_student

from .conftest import assert_same_state, state_of
from .test_modules import METHODS, _run


class RecordStudent(pl.Callback):
    """The student's weights and the module's phase after every optimizer step."""

    def __init__(self):
        self.steps: list[tuple[int, dict]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps.append((module.phase, {k: v.detach().clone() for k, v in module.student.state_dict().items()}))


def _expected_ema(steps, phase, *, beta, power):
    """ema-pytorch's update rule by hand: the phase's first update copies, the n-th lerps with min(β, 1 − (1 + n)^−power)."""
    ema = None
    for n, (_, w) in enumerate(s for s in steps if s[0] == phase):
        if ema is None:
            ema = {k: v.clone() for k, v in w.items()}
            continue
        decay = min(beta, 1.0 - (1.0 + n) ** -power)
        ema = {k: e + (1.0 - decay) * (w[k] - e) for k, e in ema.items()}
    return ema


def test_each_rounds_snapshot_is_the_ema_of_that_round_alone(rf_teacher, tmp_path, trainer_factory):
    beta, power = 0.5, 0.75  # β binds from the 2nd update on: the warm-up and the cap are both exercised
    rec = RecordStudent()
    module = _run("progressive", rf_teacher, tmp_path, trainer_factory, module_kw={"eval_ema_decay": beta},
                  callbacks=[rec])
    assert [p for p, _ in rec.steps] == [0] * 3 + [1] * 3 + [2] * 4  # steps_per_round [3, 3, 4]
    for phase, n in enumerate((4, 2, 1)):
        ck = safe_load(tmp_path / "students" / f"progressive_N{n}.ckpt")
        meta = ck["flowgen"]
        assert meta["weights_prefix"] == meta["online_prefix"] == "student_ema.ema_model."
        got = {k[len(meta["weights_prefix"]):]: v for k, v in ck["state_dict"].items()}
        want = _expected_ema(rec.steps, phase, beta=beta, power=power)
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], msg=lambda m, k=k, n=n: f"N={n} {k}: {m}")
        last = [w for p, w in rec.steps if p == phase][-1]
        assert any(not torch.equal(got[k], last[k]) for k in got)  # an average, not the round's last iterate
    assert module.sampling_student is module.student_ema.ema_model


@pytest.mark.parametrize("method", ["progressive", "consistency_distillation", "reflow"])
def test_the_eval_ema_never_feeds_back_into_training(method, rf_teacher, tmp_path, trainer_factory):
    plain = _run(method, rf_teacher, tmp_path / "a", trainer_factory)
    averaged = _run(method, rf_teacher, tmp_path / "b", trainer_factory, module_kw={"eval_ema_decay": 0.9})
    a, b = state_of(plain), state_of(averaged)
    ema = {k: b.pop(k) for k in list(b) if k.startswith("student_ema.")}
    assert ema and not any(k.startswith("student_ema.") for k in a)
    # student, teacher, target network, round teacher, pair source: bitwise those of the run without the EMA
    assert_same_state(a, b)

    # the checkpoint samples with the EMA's weights, which are not the student's
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    meta = safe_load(last)["flowgen"]
    suffix = "net." if method.startswith("consistency") else ""
    assert meta["weights_prefix"] == "student_ema.ema_model." + suffix and meta["online_prefix"] == "student." + suffix
    gen, raw = load_student(last), plain.generator()
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    k = gen.default_steps
    x = gen.sample(noise, steps=k, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x, averaged.generator().sample(noise, steps=k, generator=torch.Generator().manual_seed(1)))
    assert not torch.allclose(x, raw.sample(noise, steps=k, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("cls", [ProgressiveDistillModule, ConsistencyModule, ReflowModule])
def test_bad_eval_ema_arguments_are_refused(cls, rf_teacher):
    for bad in (0.0, 1.0, -0.5, "0.9", True):
        with pytest.raises(ValueError, match="eval_ema_decay must be None or lie in"):
            cls(rf_teacher, eval_ema_decay=bad)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="eval_ema_power must be a positive finite number"):
            cls(rf_teacher, eval_ema_decay=0.9, eval_ema_power=bad)


def test_the_ema_copy_stays_in_eval_mode_and_out_of_the_optimizer(rf_teacher):
    make = METHODS["progressive"][0]
    module = make(rf_teacher, eval_ema_decay=0.9)
    module.train()
    assert module.student.training and not module.student_ema.ema_model.training
    opt = module.configure_optimizers()
    ema_params = {id(p) for p in module.student_ema.parameters()}
    assert not ema_params & {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(not p.requires_grad for p in module.student_ema.parameters())
