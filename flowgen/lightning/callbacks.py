"""Callbacks: sample figures at validation time."""

from __future__ import annotations

import os

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["SamplePlotCallback", "save_samples_figure"]


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
