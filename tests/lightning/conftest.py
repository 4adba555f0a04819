"""Shared helpers for the Lightning-layer tests: tiny, fast trainers on the CPU."""

import warnings

import pytest

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*modules? in eval mode.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
warnings.filterwarnings("ignore", ".*litlogger.*")


@pytest.fixture
def tiny_trainer(tmp_path):
    """``tiny_trainer(max_steps, **kw)`` → a quiet CPU Trainer with flowgen's defaults rooted in tmp_path."""
    from flowgen.lightning import make_trainer

    def make(max_steps=4, root=None, **kw):
        kw.setdefault("progress", False)
        kw.setdefault("logger", False)
        kw.setdefault("plot_samples", False)
        kw.setdefault("accelerator", "cpu")
        kw.setdefault("devices", 1)
        kw.setdefault("limit_val_batches", 0)
        return make_trainer(str(root or tmp_path / "run"), max_steps=max_steps, **kw)

    return make
