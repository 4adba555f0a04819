"""Numerics of training through the Lightning layer: non-finite losses and bf16 mixed precision.

* A network that returns NaN on one training step stops training with an error naming that
  global step; with ``skip_nonfinite=True`` the batch is skipped (no optimizer update, no EMA
  update), counted, and training finishes with finite weights.
* Data holding NaN is refused with an error naming the data (not counted as a skippable loss).
* ``precision="bf16-mixed"`` trains on the CPU (and on CUDA with ``--device cuda``): finite loss,
  float32 weights that moved, finite.
"""

from __future__ import annotations

import pytest
import torch

from flowgen.lightning import (
    FlowModule,
    NonFiniteLossError,
    ToyDataModule,
    make_trainer,
)
from flowgen.nn import MLP
from flowgen.objectives import rectified_flow

pytestmark = pytest.mark.filterwarnings("ignore")

SPEC = {"class_path": "flowgen.nn.MLP", "init_args": {"dim": 2, "hidden": 16, "depth": 2}}


class NaNOnCall(torch.nn.Module):
    """Wraps a network; its training forward number ``bad`` (0-based) returns NaN."""

    def __init__(self, net, bad: int):
        super().__init__()
        self.net, self.bad, self.calls = net, bad, 0

    def forward(self, x_t, t, cond=None):
        out = self.net(x_t, t)
        if self.training:
            if self.calls == self.bad:
                out = out * float("nan")
            self.calls += 1
        return out


def _trainer(tmp_path, steps, **kw):
    kw.setdefault("accelerator", "cpu")
    return make_trainer(str(tmp_path / "run"), max_steps=steps, checkpoint_every=1000, progress=False, logger=False,
                        plot_samples=False, devices=1, limit_val_batches=0, **kw)


def _data():
    return ToyDataModule("moons", batch_size=32, val_size=32, batches_per_epoch=4, seed=3)


def test_nonfinite_loss_stops_training_naming_the_step(tmp_path):
    torch.manual_seed(0)
    module = FlowModule(NaNOnCall(MLP(2, hidden=16, depth=2), bad=3), rectified_flow(), lr=1e-3, model_spec=SPEC)
    with pytest.raises(NonFiniteLossError, match=r"global step 3\b") as err:
        _trainer(tmp_path, 6).fit(module, _data())
    assert "skip_nonfinite" in str(err.value)


def test_nonfinite_loss_is_skipped_and_counted(tmp_path):
    torch.manual_seed(0)
    net = NaNOnCall(MLP(2, hidden=16, depth=2), bad=2)
    module = FlowModule(net, rectified_flow(), lr=1e-3, model_spec=SPEC, skip_nonfinite=True)
    trainer = _trainer(tmp_path, 5)
    trainer.fit(module, _data())
    assert module.skipped_nonfinite == 1
    # Lightning counts the skipped batch as a step; the optimizer did not step on it
    assert trainer.global_step == 5 and net.calls == 5
    steps_taken = {int(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert steps_taken == {5 - 1}, steps_taken
    for p in list(module.parameters()):
        assert bool(torch.isfinite(p).all())


def test_nan_data_is_refused_naming_the_data(tmp_path):
    class BadData(ToyDataModule):
        def _train_batch(self, device):
            x = super()._train_batch(device)
            x[0, 0] = float("nan")
            return x

    module = FlowModule(MLP(2, hidden=16, depth=2), rectified_flow(), lr=1e-3, model_spec=SPEC, skip_nonfinite=True)
    with pytest.raises(ValueError, match=r"\bdata\b.*non-finite"):
        _trainer(tmp_path, 3).fit(module, BadData("moons", batch_size=16, val_size=16, batches_per_epoch=2, seed=1))


def test_bf16_mixed_precision_trains(tmp_path, device):
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    torch.manual_seed(0)
    module = FlowModule(MLP(2, hidden=16, depth=2), rectified_flow(), lr=1e-2, model_spec=SPEC)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    losses = []
    trainer = _trainer(tmp_path, 4, precision="bf16-mixed", accelerator=device.type)
    trainer.fit(module, _data())
    after = module.model.state_dict()
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in after.values())
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = module.objective(module.model.to(device), torch.randn(64, 2, device=device))
    losses.append(float(out))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses)
