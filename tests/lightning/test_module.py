"""FlowModule: injected objective, EMA, non-finite losses, validation metrics, checkpoint contents."""

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from flowgen.checkpoint import load_generator, safe_load
from flowgen.lightning import FlowModule, NonFiniteLossError, TensorFileDataModule, ToyDataModule
from flowgen.nn import MLP
from flowgen.objectives import Objective, ddpm, rectified_flow

SPEC = {"class_path": "flowgen.nn.MLP", "init_args": {"dim": 2, "hidden": 32, "depth": 2}}


def small(**kw):
    kw.setdefault("model_spec", SPEC)
    return FlowModule(MLP(2, hidden=32, depth=2), kw.pop("objective", rectified_flow()), **kw)


class SpyObjective(Objective):
    """Records every loss it returns."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.losses = []

    def compute(self, model, data, cond=None, *, generator=None):
        out = super().compute(model, data, cond, generator=generator)
        if torch.is_grad_enabled():
            self.losses.append(out.loss)
        return out


class LossRecorder(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"])


def test_training_uses_the_injected_objective(tiny_trainer):
    from flowgen.paths import RectifiedFlow

    spy = SpyObjective(RectifiedFlow(), "velocity")
    rec = LossRecorder()
    tiny_trainer(5, callbacks=[rec]).fit(small(objective=spy), ToyDataModule(batch_size=16))
    assert len(spy.losses) == 5
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(spy.losses, rec.losses))  # the objective's loss, untouched


class NaNAt(nn.Module):
    """An MLP whose output turns NaN from its ``k``-th training call on."""

    def __init__(self, k):
        super().__init__()
        self.net, self.k, self.calls = MLP(2, hidden=16, depth=2), k, 0

    def forward(self, x_t, t, cond=None):
        out = self.net(x_t, t)
        if self.training:
            self.calls += 1
            if self.calls >= self.k:
                return out * float("nan")
        return out


def test_nonfinite_loss_stops_training_naming_the_step(tiny_trainer, tmp_path):
    module = FlowModule(NaNAt(4), rectified_flow(), model_spec={"class_path": "x.Y", "init_args": {}})
    with pytest.raises(NonFiniteLossError, match="global step 3"):
        tiny_trainer(10, checkpoint_every=2).fit(module, ToyDataModule(batch_size=16))
    # the checkpoint written before the failure holds finite weights
    state = safe_load(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_skip_nonfinite_skips_and_counts(tiny_trainer, tmp_path):
    module = FlowModule(NaNAt(4), rectified_flow(), skip_nonfinite=True, model_spec={"class_path": "x.Y", "init_args": {}})
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    tiny_trainer(7).fit(module, ToyDataModule(batch_size=16))
    assert module.skipped_nonfinite == 4  # calls 4..7 were NaN
    after = module.model.state_dict()
    assert all(bool(torch.isfinite(v).all()) for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the first three steps trained
    meta = safe_load(tmp_path / "run" / "checkpoints" / "last.ckpt")["flowgen"]
    assert meta["skipped_nonfinite"] == 4


@pytest.mark.parametrize("decay,warmup,every,power", [(0.9, 3, 3, 1.0), (0.999, 5, 1, 0.75), (0.99, 0, 2, 2 / 3)])
def test_ema_update_schedule_matches_ema_pytorch_exactly(decay, warmup, every, power):
    from ema_pytorch import EMA

    torch.manual_seed(0)
    module = small(ema_decay=decay, ema_warmup_steps=warmup, ema_update_every=every, ema_power=power)
    ref = EMA(module.model, beta=decay, update_after_step=warmup, update_every=every, power=power, include_online_model=False)
    for _ in range(40):
        with torch.no_grad():
            for p in module.model.parameters():
                p.add_(torch.randn_like(p))
        module._update_ema()
        ref.update()
    assert module._hot["ema_pairs"][0] is not None  # the cached foreach lists did the averaging
    for a, b in zip(module.ema.ema_model.parameters(), ref.ema_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert int(module.ema.step) == int(ref.step) == 40


def test_ema_cached_lists_follow_a_move_of_the_module():
    module = small(ema_decay=0.5, ema_warmup_steps=0)
    for _ in range(3):
        module._update_ema()
    assert module._hot["ema_pairs"][0] is not None
    module.to(torch.float64)  # replaces every parameter tensor
    assert "ema_pairs" not in module._hot
    with torch.no_grad():
        for p in module.model.parameters():
            p.fill_(1.0)
    for _ in range(60):
        module._update_ema()
    for p in module.ema.ema_model.parameters():
        assert p.dtype == torch.float64
        torch.testing.assert_close(p, torch.ones_like(p), rtol=0, atol=1e-9)  # averaged the moved weights


def test_step_objective_skips_the_host_check_only_off_the_cpu():
    objective = rectified_flow()
    module = small(objective=objective)
    assert module._step_objective(torch.device("cpu")) is objective
    fast = module._step_objective(torch.device("cuda"))  # a device object only: nothing runs on it
    assert fast is not objective and fast.check_finite is False and objective.check_finite is True
    assert module._step_objective(torch.device("cuda")) is fast  # made once
    assert fast.path is objective.path and fast.coupling is objective.coupling


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_whole_batch_data_follows_the_precision_plugin(tiny_trainer, precision):
    """Lightning's precision plugins convert batches with apply_to_collection (which refuses frozen
    dataclasses): the batch token passes, and the tensors built from it get the plugin's dtype."""
    from flowgen.lightning.data import BatchRequest

    assert not hasattr(BatchRequest("train", 0), "__dataclass_fields__")
    pl.seed_everything(0, verbose=False)
    module = small(val_num_samples=32, sample_steps=4)
    seen = []
    step = module.training_step
    module.training_step = lambda batch, batch_idx=0: (seen.append(batch.dtype), step(batch, batch_idx))[1]
    tiny_trainer(3, precision=precision, limit_val_batches=None, val_every=3).fit(module, ToyDataModule(batch_size=16, val_size=32))
    want = torch.bfloat16 if precision == "bf16-true" else torch.float64
    assert seen == [want] * 3
    assert next(module.model.parameters()).dtype == want
    assert module.last_samples is not None and bool(torch.isfinite(module.last_samples).all())


def test_ema_decay_is_ema_pytorchs():
    from ema_pytorch import EMA

    from flowgen.lightning.module import ema_decay

    for after, power in ((0, 0.75), (10, 2 / 3), (100, 1.0)):
        ema = EMA(torch.nn.Linear(2, 2), beta=0.9999, update_after_step=after, power=power, include_online_model=False)
        for s in list(range(0, 130)) + [1000, 10**5]:
            ema.step.fill_(s + 1)  # EMA.update reads the decay after incrementing its step
            assert ema_decay(s, update_after_step=after, inv_gamma=1.0, power=power, min_value=0.0, beta=0.9999) \
                == ema.get_current_decay(), (after, power, s)


def test_ema_update_reads_nothing_back_from_the_device():
    """After initialisation an EMA step only queues device work: no host read of a device tensor
    (each would be a sync on an accelerator). On the meta device any such read raises."""
    module = small(ema_decay=0.99, ema_warmup_steps=2, ema_update_every=1)
    module._update_ema()  # initialisation may read
    module.to("meta")
    with pytest.raises(RuntimeError, match="meta"):
        module.ema.update()  # ema-pytorch's own update reads its step back
    for _ in range(6):  # through the warm-up copies and into the averaging
        module._update_ema()
    assert module._hot["ema_step"] == 7


def test_checkpoint_is_safe_and_samples_with_ema_weights(tiny_trainer, tmp_path):
    pl.seed_everything(0, verbose=False)
    module = small(objective=ddpm(prediction="v"), ema_decay=0.5, ema_warmup_steps=0)
    tiny_trainer(6, checkpoint_every=3).fit(module, ToyDataModule(batch_size=16))
    f = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ck = safe_load(f)  # weights_only=True
    for key in ("optimizer_states", "state_dict", "loops", "ToyDataModule", "flowgen"):
        assert key in ck
    meta = ck["flowgen"]
    assert meta["path"]["name"] == "DiscreteDDPM" and meta["prediction"] == "v"
    assert meta["data_shape"] == [2] and meta["model"] == SPEC and meta["weights_prefix"] == "ema.ema_model."
    assert set(meta["rng"]) >= {"torch", "numpy", "python"} and "generator" in ck["ToyDataModule"]
    net, path, prediction, _ = load_generator(f)
    for a, b, c in zip(net.parameters(), module.ema.ema_model.parameters(), module.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(b, c) for b, c in zip(module.ema.ema_model.parameters(), module.model.parameters()))


def test_validation_samples_and_logs_w2_without_touching_the_global_rng(tiny_trainer):
    module = small(val_num_samples=64, sample_steps=4)
    dm = ToyDataModule(batch_size=16, val_size=64)
    trainer = tiny_trainer(2, limit_val_batches=None, val_every=2)
    trainer.fit(module, dm)
    assert {"val/loss", "val/w2", "val/nfe"} <= set(trainer.callback_metrics)
    assert trainer.callback_metrics["val/nfe"] == 4
    assert module.last_samples.shape == (64, 2)
    state = torch.get_rng_state()
    trainer.validate(module, dm, verbose=False)
    assert torch.equal(state, torch.get_rng_state())


def test_class_conditional_training_and_guided_sampling(tiny_trainer, tmp_path):
    x = torch.randn(64, 2)
    y = (x[:, 0] > 0).long()
    torch.save({"data": x, "labels": y}, tmp_path / "d.pt")
    module = FlowModule(MLP(2, hidden=16, depth=2, num_classes=2), rectified_flow(), class_cond=True,
                        cond_drop_prob=0.2, guidance_scale=1.5, sample_steps=3)
    tiny_trainer(3).fit(module, TensorFileDataModule(str(tmp_path / "d.pt"), batch_size=16))
    assert module.model_spec["init_args"]["num_classes"] == 2
    out = module.sample(10, generator_seed=0)
    assert out.samples.shape == (10, 2) and out.nfe == 6  # guidance: 2 evaluations per step


def test_argument_errors_name_the_argument():
    with pytest.raises(TypeError, match="objective"):
        FlowModule(MLP(2), "rectified_flow")
    with pytest.raises(TypeError, match="model"):
        FlowModule(lambda x, t: x, rectified_flow())
    for kw, name in [({"lr": -1.0}, "lr"), ({"ema_decay": 1.5}, "ema_decay"), ({"val_metrics": ["fid"]}, "val_metrics"),
                     ({"sample_steps": 0}, "sample_steps"), ({"cond_drop_prob": 2.0}, "cond_drop_prob")]:
        with pytest.raises(ValueError, match=name):
            small(**kw)


def test_prefetch_pairs_trains_each_batch_with_its_ot_noise_one_step_later(tiny_trainer):
    from flowgen.objectives import ExactOTCoupling, flow_matching

    pl.seed_everything(0, verbose=False)
    objective = flow_matching(coupling="ot")
    module = small(objective=objective, prefetch_pairs=True, ema=False)
    paired, trained = [], []
    pair, compute = objective.pair, objective.compute

    def spy_pair(data, generator=None):  # runs on the worker thread, once per batch, in order
        noise = pair(data, generator)
        paired.append((data.clone(), noise.clone()))
        return noise

    def spy_compute(model, data, cond=None, **kw):
        trained.append((data.clone(), kw["noise"].clone()))
        return compute(model, data, cond, **kw)

    objective.pair, objective.compute = spy_pair, spy_compute
    before = [p.detach().clone() for p in module.model.parameters()]
    tiny_trainer(1).fit(module, ToyDataModule(batch_size=32))
    assert module.trainer.global_step == 1 and trained == []  # the first step only queues the pairing
    assert all(torch.equal(a, b) for a, b in zip(before, module.model.parameters()))

    paired.clear()
    tiny_trainer(6).fit(module, ToyDataModule(batch_size=32))
    assert len(paired) == 6 and len(trained) == 5
    for (data, noise), (d, n) in zip(paired, trained):
        assert torch.equal(data, d) and torch.equal(noise, n)
        assert torch.equal(ExactOTCoupling()(d, n), n)  # already the optimal pairing
    assert module._pair_pool is None  # the worker is stopped at the end of training


def test_prefetch_pairs_is_off_for_the_independent_coupling_and_checked():
    assert small(prefetch_pairs=True).prefetch_pairs is False
    with pytest.raises(ValueError, match="prefetch_pairs must be a bool"):
        small(prefetch_pairs="yes")


@pytest.mark.gpu
def test_cuda_training_uses_fused_adam_and_still_names_a_nonfinite_step(tiny_trainer):
    pl.seed_everything(0, verbose=False)
    module = small()
    tiny_trainer(3, accelerator="gpu").fit(module, ToyDataModule(batch_size=16))
    assert module.trainer.optimizers[0].param_groups[0]["fused"] is True  # (Lightning moves the module back to the CPU at the end)

    bad = small()
    step = bad.training_step

    def poisoned(batch, batch_idx=0):
        if bad.global_step == 2:
            batch = batch * float("nan")
        return step(batch, batch_idx)

    bad.training_step = poisoned
    with pytest.raises(NonFiniteLossError, match="global step 2"):
        tiny_trainer(5, accelerator="gpu").fit(bad, ToyDataModule(batch_size=16))


def test_ema_cached_lists_only_without_a_sharding_strategy(tiny_trainer):
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy

    module = small(ema_decay=0.5, ema_warmup_steps=0)
    for strategy, cached in ((SingleDeviceStrategy.__new__(SingleDeviceStrategy), True),
                             (DDPStrategy.__new__(DDPStrategy), True),
                             (DeepSpeedStrategy.__new__(DeepSpeedStrategy), False)):
        module._hot.pop("ema_pairs", None)
        module._trainer = type("T", (), {"strategy": strategy})()
        assert (module._ema_pairs() is not None) is cached, type(strategy).__name__
    module._trainer = None
