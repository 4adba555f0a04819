"""Fixtures for the distillation training tests: tiny teacher checkpoints and quiet CPU trainers."""

import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*modules? in eval mode.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
warnings.filterwarnings("ignore", ".*litlogger.*")

MLP_SPEC = {"class_path": "flowgen.nn.MLP", "init_args": {"dim": 2, "hidden": 32, "depth": 2}}
RECIPES = os.path.join(os.path.dirname(__file__), "..", "..", "recipes")


def make_trainer_(root, max_steps, **kw):
    from flowgen.lightning import make_trainer

    kw.setdefault("progress", False)
    kw.setdefault("logger", False)
    kw.setdefault("plot_samples", False)
    kw.setdefault("accelerator", "cpu")
    kw.setdefault("devices", 1)
    kw.setdefault("limit_val_batches", 0)
    return make_trainer(str(root), max_steps=max_steps, **kw)


@pytest.fixture
def trainer_factory():
    """``trainer_factory(root, max_steps, **kw)`` → a quiet CPU Trainer with flowgen's checkpointing."""
    return make_trainer_


def _train_teacher(root, objective, steps=60, seed=0):
    import lightning.pytorch as pl

    from flowgen.lightning import FlowModule, ToyDataModule
    from flowgen.nn import MLP

    pl.seed_everything(seed, verbose=False)
    module = FlowModule(MLP(2, hidden=32, depth=2), objective, lr=3e-3, ema_decay=0.9, ema_warmup_steps=5, model_spec=MLP_SPEC)
    make_trainer_(root, steps, checkpoint_every=steps).fit(module, ToyDataModule("moons", batch_size=128, val_size=256))
    return os.path.join(str(root), "checkpoints", "last.ckpt")


@pytest.fixture(scope="session")
def rf_teacher(tmp_path_factory):
    """A rectified-flow MLP teacher checkpoint on moons (60 steps: rough, but a real flowgen checkpoint)."""
    from flowgen.objectives import rectified_flow

    return _train_teacher(tmp_path_factory.mktemp("rf_teacher"), rectified_flow())


@pytest.fixture(scope="session")
def eps_teacher(tmp_path_factory):
    """A DDPM ε-prediction teacher on the cosine path (another path and prediction)."""
    from flowgen.objectives import ddpm
    from flowgen.paths import VP

    return _train_teacher(tmp_path_factory.mktemp("eps_teacher"), ddpm(VP(), "noise"), steps=40)


def state_of(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")
