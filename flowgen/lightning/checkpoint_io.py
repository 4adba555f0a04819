"""A Lightning CheckpointIO plugin: atomic writes of plain-data checkpoints, ``weights_only`` loads.

:class:`SafeCheckpointIO` replaces Lightning's default ``TorchCheckpointIO`` so that every
checkpoint the Trainer writes (periodic, ``last.ckpt``, ``trainer.save_checkpoint``) goes through
:func:`flowgen.checkpoint.atomic_save` (temporary file, fsync, ``os.replace``; a kill during the
write leaves the previous file intact) after being reduced to plain containers, and every
checkpoint it reads (``--ckpt_path``) goes through :func:`flowgen.checkpoint.safe_load`
(``torch.load(weights_only=True)``; pickled code is refused, a truncated file is a clear error).
"""

from __future__ import annotations

import os
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ..checkpoint import atomic_save, safe_load, to_plain

__all__ = ["SafeCheckpointIO"]


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic, plain-data checkpoint writes and ``weights_only=True`` reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        atomic_save(to_plain(checkpoint), os.fspath(path))

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        return safe_load(path, map_location="cpu" if map_location is None or callable(map_location) else map_location)
