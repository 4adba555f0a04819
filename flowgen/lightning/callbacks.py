"""Callbacks: sample figures at validation time, and a training clock that survives resumes."""

from __future__ import annotations

import os
import time

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["SamplePlotCallback", "TrainingClock", "save_samples_figure"]


def save_samples_figure(path, samples, reference=None, *, title: str = "SAMPLES") -> str | None:
    """Write a PNG of samples: a scatter (next to the reference) for 2-D data, an image grid for images.

    Returns the file written, or ``None`` for shapes that have no figure (e.g. 5-D vectors).
    """
    from ..viz import image_grid_png, is_image_shape, scatter_png

    shape = tuple(samples.shape[1:])
    if shape == (2,):
        panels = [("DATA", [(reference, (0.45, 0.45, 0.45))])] if reference is not None else []
        panels.append((title, [(samples, (0.12, 0.47, 0.71))]))
        return scatter_png(path, panels)
    if is_image_shape(shape):
        return image_grid_png(path, samples[:100])
    return None


class SamplePlotCallback(pl.Callback):
    """After each validation, write the validation samples as ``<log dir>/samples/step_<N>.png``.

    Args:
        every_n_validations: write one figure every this many validations.
        dirpath: folder for the figures (default: ``samples/`` in the first logger's folder, else the
            trainer's ``default_root_dir``).
    """

    def __init__(self, every_n_validations: int = 1, dirpath: str | None = None):
        if not isinstance(every_n_validations, int) or every_n_validations < 1:
            raise ValueError(f"every_n_validations must be a positive int, got {every_n_validations!r}")
        self.every_n_validations, self.dirpath = every_n_validations, dirpath
        self._count = 0
        self.written: list[str] = []

    def _folder(self, trainer) -> str:
        if self.dirpath:
            return self.dirpath
        logger = trainer.loggers[0] if trainer.loggers else None
        base = getattr(logger, "log_dir", None) or trainer.default_root_dir
        return os.path.join(base, "samples")

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or getattr(pl_module, "last_samples", None) is None:
            return
        self._count += 1
        if (self._count - 1) % self.every_n_validations:
            return
        path = os.path.join(self._folder(trainer), f"step_{trainer.global_step:07d}.png")
        out = save_samples_figure(path, pl_module.last_samples.cpu(), getattr(pl_module, "last_reference", None))
        if out:
            self.written.append(out)


class TrainingClock(pl.Callback):
    """Wall-clock seconds spent in ``fit``, carried across resumes in the checkpoint.

    Each checkpoint stores the seconds spent up to its save (this callback's state), and a resumed
    run starts counting from that figure, so :attr:`seconds` is the time of the work that was kept:
    the time between the last checkpoint and an interruption, redone after the resume, counts once.
    The ``flowgen`` CLI and :func:`~flowgen.lightning.make_trainer` add one to every run.
    """

    def __init__(self):
        self.previous = 0.0  # seconds restored from the checkpoint a run resumed from
        self._start: float | None = None

    @property
    def seconds(self) -> float:
        """Seconds of ``fit`` so far, including those of the runs this one resumed."""
        running = time.perf_counter() - self._start if self._start is not None else 0.0
        return self.previous + running

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.previous, self._start = self.seconds, None

    def state_dict(self) -> dict:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        seconds = state_dict.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise ValueError(f"TrainingClock state must hold non-negative 'seconds', got {seconds!r}")
        self.previous = float(seconds)
