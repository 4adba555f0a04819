"""A Trainer with flowgen's defaults, for Python use (the CLI sets the same defaults)."""

from __future__ import annotations

import os

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from .callbacks import SamplePlotCallback, TrainingClock
from .checkpoint_io import SafeCheckpointIO

__all__ = ["make_trainer", "default_callbacks", "default_loggers"]


def default_loggers(root_dir: str, name: str = "logs") -> list:
    """CSV logs (metric curves as ``metrics.csv``), plus TensorBoard when it is installed."""
    loggers = [CSVLogger(save_dir=root_dir, name=name)]
    try:
        import tensorboard  # noqa: F401

        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=root_dir, name=name, version=loggers[0].version))
    except ImportError:
        pass
    return loggers


def default_callbacks(root_dir: str, *, checkpoint_every: int = 500, progress_every: int = 20,
                      plot_samples: bool = True) -> list:
    """``ModelCheckpoint`` (every ``checkpoint_every`` steps into ``<root>/checkpoints``, with ``last.ckpt``),
    a progress bar refreshed every ``progress_every`` steps, a :class:`TrainingClock` and sample figures at validation."""
    cbs = [
        ModelCheckpoint(dirpath=os.path.join(root_dir, "checkpoints"), filename="step={step}", save_last=True,
                        every_n_train_steps=checkpoint_every, save_top_k=1, auto_insert_metric_name=False),
        TQDMProgressBar(refresh_rate=progress_every),
        TrainingClock(),
    ]
    if plot_samples:
        cbs.append(SamplePlotCallback())
    return cbs


def make_trainer(root_dir: str = "flowgen_runs/run", *, max_steps: int = 1000, checkpoint_every: int = 500,
                 val_every: int | None = None, progress: bool = True, logger: bool = True,
                 plot_samples: bool = True, callbacks: list | None = None, **trainer_kwargs) -> pl.Trainer:
    """A ``lightning.Trainer`` with :class:`SafeCheckpointIO`, step checkpoints, CSV logs and a light progress bar.

    Args:
        root_dir: the run folder (checkpoints in ``checkpoints/``, logs in ``logs/version_N/``).
        max_steps: optimizer steps.
        checkpoint_every: steps between checkpoints (``last.ckpt`` is kept up to date).
        val_every: steps between validations (default: once at the end).
        progress: show a progress bar.
        logger: write CSV (and TensorBoard, if installed) logs.
        plot_samples: write sample figures after each validation.
        callbacks: extra callbacks.
        **trainer_kwargs: anything else for ``lightning.Trainer`` (``accelerator``, ``devices``,
            ``strategy``, ``deterministic``, ``precision``, ``log_every_n_steps``, …).
    """
    cbs = default_callbacks(root_dir, checkpoint_every=checkpoint_every, plot_samples=plot_samples)
    if not progress:
        cbs = [c for c in cbs if not isinstance(c, TQDMProgressBar)]
    cbs += list(callbacks or [])
    plugins = list(trainer_kwargs.pop("plugins", None) or [])
    if not any(isinstance(p, SafeCheckpointIO) for p in plugins):
        plugins.append(SafeCheckpointIO())
    kwargs = dict(
        default_root_dir=root_dir, max_steps=max_steps, max_epochs=-1,
        val_check_interval=val_every if val_every is not None else max_steps, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, log_every_n_steps=50, enable_progress_bar=progress, enable_model_summary=False,
        logger=default_loggers(root_dir) if logger else False,
    )
    kwargs.update(trainer_kwargs)
    return pl.Trainer(callbacks=cbs, plugins=plugins, **kwargs)
