"""The captured training step (``FlowModule(cuda_graph=True)``, :class:`flowgen.capture.StepGraph`).

On the CPU: argument checks, the optimizer preparation, and the clear refusal of a CPU run. On a
CUDA device (``-m gpu`` tests, skipped without one): the replayed step follows the eager trajectory
(scheduler changes included), FlowModule trains the same weights with and without the graph, a
resumed graph run matches an uninterrupted one, a non-finite step is still named, and an OT
coupling is paired eagerly before each replay.
"""

import lightning.pytorch as pl
import pytest
import torch

from flowgen.checkpoint import safe_load
from flowgen.lightning import FlowModule, NonFiniteLossError, ToyDataModule
from flowgen.capture import StepGraph, make_capturable, portable_optimizer_state
from flowgen.nn import MLP
from flowgen.objectives import flow_matching, rectified_flow
from test_resume import Crash  # (tests/lightning: the resume tests' crash callback)

SPEC = {"class_path": "flowgen.nn.MLP", "init_args": {"dim": 2, "hidden": 32, "depth": 2}}


def small(**kw):
    kw.setdefault("model_spec", SPEC)
    return FlowModule(MLP(2, hidden=32, depth=2), kw.pop("objective", rectified_flow()), **kw)


def _state(module):
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------- CPU: arguments and preparation
def test_cuda_graph_arguments_are_checked():
    with pytest.raises(ValueError, match="cuda_graph must be a bool or 'auto'"):
        small(cuda_graph="yes")
    with pytest.raises(ValueError, match="skip_nonfinite=False"):
        small(cuda_graph=True, skip_nonfinite=True)
    with pytest.raises(ValueError, match="warmup must be a positive int"):
        StepGraph(lambda: None, torch.optim.Adam([torch.zeros(1, requires_grad=True)]), [], warmup=0)


def test_a_cpu_run_with_cuda_graph_is_refused_naming_the_option(tiny_trainer):
    with pytest.raises(ValueError, match="cuda_graph=True needs training on one CUDA device"):
        tiny_trainer(2).fit(small(cuda_graph=True), ToyDataModule(batch_size=16))


def test_auto_trains_eagerly_where_it_cannot_capture(tiny_trainer, tmp_path):
    results = {}
    for mode in (False, "auto"):
        pl.seed_everything(0, verbose=False)
        module = small(cuda_graph=mode, skip_nonfinite=(mode == "auto"))  # auto: also allowed with skip_nonfinite
        tiny_trainer(6, root=tmp_path / str(mode)).fit(module, ToyDataModule(batch_size=16))
        results[mode] = _state(module)
        assert module.graph_stats is None
    for k in results[False]:
        torch.testing.assert_close(results["auto"][k], results[False][k], rtol=0, atol=0)


def test_make_capturable_gives_tensor_lrs_that_schedulers_update_and_checkpoints_save_as_numbers():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    make_capturable(opt)
    group = opt.param_groups[0]
    assert group["capturable"] is True and isinstance(group["lr"], torch.Tensor)
    lr_tensor = group["lr"]
    sched.step()  # (a capturable Adam steps only on an accelerator)
    assert opt.param_groups[0]["lr"] is lr_tensor  # updated in place: a captured step reads the new value
    assert float(lr_tensor) == pytest.approx(0.05)
    state = portable_optimizer_state(opt.state_dict())
    assert state["param_groups"][0]["lr"] == pytest.approx(0.05) and isinstance(state["param_groups"][0]["lr"], float)
    with pytest.raises(ValueError, match="no capturable option"):
        make_capturable(torch.optim.SGD([w], lr=0.1))


# ---------------------------------------------------------------- CUDA
@pytest.mark.gpu
def test_step_graph_replays_the_eager_trajectory_with_scheduler_and_odd_shapes():
    dev = torch.device("cuda")
    torch.manual_seed(0)
    net_a = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.SiLU(), torch.nn.Linear(64, 4)).to(dev)
    net_b = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.SiLU(), torch.nn.Linear(64, 4)).to(dev)
    net_b.load_state_dict(net_a.state_dict())
    batches = [(torch.randn(32 if i != 9 else 7, 4, device=dev), torch.randn(32 if i != 9 else 7, 4, device=dev))
               for i in range(14)]  # batch 9 has another shape: it runs eagerly between replays

    def setup(net):
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        make_capturable(opt)
        return opt, sched

    opt_a, sched_a = setup(net_a)
    for x, y in batches:
        opt_a.zero_grad()
        torch.nn.functional.mse_loss(net_a(x), y).backward()
        torch.nn.utils.clip_grad_norm_(net_a.parameters(), 0.5, foreach=True)
        opt_a.step()
        sched_a.step()

    opt_b, sched_b = setup(net_b)
    graph = StepGraph(lambda x, y: torch.nn.functional.mse_loss(net_b(x), y), opt_b, list(net_b.parameters()),
                      clip=lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.5, foreach=True), warmup=3)
    for x, y in batches:
        graph(x, y)
        sched_b.step()
    torch.cuda.synchronize()
    assert graph.graph is not None and graph.eager_calls == 4  # 3 warm-up steps + the odd-shaped batch
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("clip", [None, 0.05])
def test_flowmodule_with_cuda_graph_trains_the_eager_weights(tiny_trainer, tmp_path, clip):
    results = {}
    for graphed in (False, True):
        pl.seed_everything(0, verbose=False)
        module = small(cuda_graph=graphed, ema_warmup_steps=2, ema_decay=0.9)
        trainer = tiny_trainer(30, root=tmp_path / str(graphed), accelerator="gpu", gradient_clip_val=clip,
                               checkpoint_every=30)
        trainer.fit(module, ToyDataModule(batch_size=64))
        assert trainer.global_step == 30
        results[graphed] = _state(module)
    assert module.graph_stats == {"steps": 30, "eager_steps": 3, "captured": True}
    for k in results[False]:
        torch.testing.assert_close(results[True][k], results[False][k], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, k=k: f"{k}: {m}")
    saved = safe_load(tmp_path / "True" / "checkpoints" / "last.ckpt")
    assert all(isinstance(g["lr"], float) for g in saved["optimizer_states"][0]["param_groups"])


@pytest.mark.gpu
def test_a_resumed_graph_run_matches_the_uninterrupted_one(tiny_trainer, tmp_path):
    n, half = 16, 8
    data = lambda: ToyDataModule("moons", batch_size=64, val_size=64, batches_per_epoch=4)  # noqa: E731
    pl.seed_everything(5, verbose=False)
    ref = small(cuda_graph=True, ema_warmup_steps=2, ema_decay=0.9)
    tiny_trainer(n, root=tmp_path / "a", accelerator="gpu", checkpoint_every=100).fit(ref, data())

    pl.seed_everything(5, verbose=False)
    first = small(cuda_graph=True, ema_warmup_steps=2, ema_decay=0.9)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_trainer(n, root=tmp_path / "b", accelerator="gpu", checkpoint_every=half,
                     callbacks=[Crash(half + 1)]).fit(first, data())
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    pl.seed_everything(99, verbose=False)
    resumed = small(cuda_graph=True, ema_warmup_steps=2, ema_decay=0.9)
    tiny_trainer(n, root=tmp_path / "b", accelerator="gpu", checkpoint_every=half).fit(resumed, data(), ckpt_path=str(last))
    a, b = _state(ref), _state(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.gpu
def test_a_nonfinite_replayed_step_is_named(tiny_trainer):
    bad = small(cuda_graph=True)
    step = bad.training_step

    def poisoned(batch, batch_idx=0):
        if bad.global_step == 5:  # after the 3 warm-up steps and the capture: a replay
            batch = batch * float("nan")
        return step(batch, batch_idx)

    bad.training_step = poisoned
    with pytest.raises(NonFiniteLossError, match="global step 5"):
        tiny_trainer(8, accelerator="gpu").fit(bad, ToyDataModule(batch_size=16))


@pytest.mark.gpu
@pytest.mark.parametrize("prefetch", [False, True])
def test_an_ot_coupled_graph_step_pairs_each_batch_before_the_replay(tiny_trainer, prefetch):
    pl.seed_everything(0, verbose=False)
    module = small(cuda_graph=True, objective=flow_matching(coupling="sinkhorn"), prefetch_pairs=prefetch)
    trainer = tiny_trainer(12, accelerator="gpu")
    trainer.fit(module, ToyDataModule(batch_size=64))
    assert trainer.global_step == 12
    assert module.graph_stats["captured"] and module.graph_stats["eager_steps"] == 3
    assert all(torch.isfinite(p).all() for p in module.parameters())


class _EagerStandIn(StepGraph):
    """StepGraph's interface, every call eager: FlowModule's graph wiring tested on the CPU."""

    def __call__(self, *inputs):
        self.calls += 1
        return self._eager(inputs)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_the_graph_wiring_trains_the_eager_weights_on_the_cpu(tiny_trainer, tmp_path, monkeypatch, clip):
    """training_step replays, optimizer_step only runs the closure, zero_grad is left to the step, and the
    EMA and the loss log still run: bitwise the eager run."""

    def setup(self):
        opt = self.trainer.optimizers[0]  # (make_capturable's tensor lr changes Adam's rounding on the CPU)
        clip_fn = None if clip is None else (lambda ps: torch.nn.utils.clip_grad_norm_(ps, clip, foreach=True))
        params = [p for g in opt.param_groups for p in g["params"]]

        self._hot["graph"] = _EagerStandIn(self._compute_loss, opt, params, clip=clip_fn)

    results = {}
    for graphed in (False, True):
        pl.seed_everything(0, verbose=False)
        module = small(ema_warmup_steps=2, ema_decay=0.9)
        if graphed:
            module.cuda_graph = True
            monkeypatch.setattr(FlowModule, "_setup_graph", setup)
        trainer = tiny_trainer(12, root=tmp_path / str(graphed), gradient_clip_val=clip, checkpoint_every=12,
                               log_every_n_steps=4)
        trainer.fit(module, ToyDataModule(batch_size=32))
        assert trainer.global_step == 12
        results[graphed] = (_state(module), float(trainer.logged_metrics["train/loss"]))
    assert module.graph_stats == {"steps": 12, "eager_steps": 12, "captured": False}
    (eager, eager_loss), (wired, wired_loss) = results[False], results[True]
    assert wired_loss == eager_loss
    for k in eager:
        torch.testing.assert_close(wired[k], eager[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")
