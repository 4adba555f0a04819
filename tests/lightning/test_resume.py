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
