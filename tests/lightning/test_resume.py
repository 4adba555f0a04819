"""An interrupted run resumes from its last checkpoint with bit-identical weights (CPU, deterministic)."""

import lightning.pytorch as pl
import pytest
import torch

from flowgen.checkpoint import safe_load
from flowgen.lightning import FlowModule, ToyDataModule
from flowgen.nn import MLP
from flowgen.objectives import flow_matching, rectified_flow

SPEC = {"class_path": "flowgen.nn.MLP", "init_args": {"dim": 2, "hidden": 32, "depth": 2}}


class Crash(pl.Callback):
    """Raise at the start of a given step (after the previous step's checkpoint was written)."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def _module(objective, prefetch=False):
    return FlowModule(MLP(2, hidden=32, depth=2), objective, lr=3e-3, ema_decay=0.9, ema_warmup_steps=2,
                      ema_update_every=2, model_spec=SPEC, prefetch_pairs=prefetch)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("make_objective,prefetch", [
    (rectified_flow, False),
    (lambda: flow_matching(coupling="sinkhorn"), False),
    (lambda: flow_matching(coupling="sinkhorn"), True),  # the queued pair and its generator are in the checkpoint
    (lambda: flow_matching(coupling="ot"), True),
], ids=["rf", "sinkhorn_ot", "sinkhorn_ot_prefetch", "exact_ot_prefetch"])
def test_resume_matches_uninterrupted_run(tmp_path, tiny_trainer, make_objective, prefetch):
    n, half = 12, 5
    # bpe=4 so the crash lands mid-epoch and the run crosses epoch boundaries
    data = lambda: ToyDataModule("moons", batch_size=64, val_size=64, batches_per_epoch=4)  # noqa: E731

    pl.seed_everything(123, verbose=False)
    ref = _module(make_objective(), prefetch)
    tiny_trainer(n, root=tmp_path / "a", deterministic=True, checkpoint_every=100).fit(ref, data())

    pl.seed_everything(123, verbose=False)
    first = _module(make_objective(), prefetch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_trainer(n, root=tmp_path / "b", deterministic=True, checkpoint_every=half,
                     callbacks=[Crash(half + 1)]).fit(first, data())
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert safe_load(last)["global_step"] == half

    pl.seed_everything(999, verbose=False)  # a different seed: everything must come from the checkpoint
    resumed = _module(make_objective(), prefetch)
    tiny_trainer(n, root=tmp_path / "b", deterministic=True, checkpoint_every=half).fit(resumed, data(), ckpt_path=str(last))

    a, b = _state(ref), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")
    assert ref.trainer.global_step == resumed.trainer.global_step == n


class Slow(pl.Callback):
    """Make every training step take at least ``seconds`` of wall time."""

    def __init__(self, seconds):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time

        time.sleep(self.seconds)


def test_training_clock_counts_the_kept_work_across_a_resume(tmp_path, tiny_trainer):
    from flowgen.lightning import TrainingClock

    data = lambda: ToyDataModule("moons", batch_size=16, val_size=16)  # noqa: E731
    first = tiny_trainer(6, root=tmp_path / "b", checkpoint_every=3, callbacks=[Crash(4), Slow(0.05)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.fit(_module(rectified_flow()), data())
    saved = safe_load(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 3
    state = next(v for k, v in saved["callbacks"].items() if "TrainingClock" in k)
    assert state["seconds"] >= 3 * 0.05  # the three kept steps (the fourth, lost in the crash, is not counted)

    resumed = tiny_trainer(6, root=tmp_path / "b", checkpoint_every=3, callbacks=[Slow(0.05)])
    resumed.fit(_module(rectified_flow()), data(), ckpt_path=str(tmp_path / "b" / "checkpoints" / "last.ckpt"))
    clock = next(c for c in resumed.callbacks if isinstance(c, TrainingClock))
    assert clock.previous >= state["seconds"] + 3 * 0.05  # the resumed run's three steps on top of the saved time
    assert clock.seconds == clock.previous  # stopped at the end of fit
    final = safe_load(tmp_path / "b" / "checkpoints" / "last.ckpt")
    last_state = next(v for k, v in final["callbacks"].items() if "TrainingClock" in k)
    assert state["seconds"] < last_state["seconds"] <= clock.seconds


def test_training_clock_refuses_a_bad_state():
    from flowgen.lightning import TrainingClock

    clock = TrainingClock()
    for bad in ({}, {"seconds": -1.0}, {"seconds": float("nan")}, {"seconds": "3"}, {"seconds": True}):
        with pytest.raises(ValueError, match="seconds"):
            clock.load_state_dict(bad)
    clock.load_state_dict({"seconds": 2.5})
    assert clock.seconds == 2.5 and clock.state_dict() == {"seconds": 2.5}
