"""The Lightning training layer (imports Lightning; the core does not).

* :class:`FlowModule` — an injected network and objective, EMA, sampling validation, safe checkpoints.
* Data modules drawing whole batches on the device: :class:`ToyDataModule`,
  :class:`DigitsDataModule`, :class:`TensorFileDataModule`, :class:`ImageFolderDataModule`.
* :class:`SafeCheckpointIO` — atomic writes, ``weights_only`` loads.
* :func:`make_trainer` — a Trainer with flowgen's defaults (safe checkpoint IO, step-based
  checkpoints with ``last.ckpt``, CSV logs, light progress bar).
* Callbacks: :class:`SamplePlotCallback`, :class:`TrainingClock` (training wall time across resumes).
"""

from .callbacks import SamplePlotCallback, TrainingClock
from .checkpoint_io import SafeCheckpointIO
from .data import (
    BatchRequest,
    DigitsDataModule,
    ImageFolderDataModule,
    TensorFileDataModule,
    ToyDataModule,
    WholeBatchDataModule,
)
from .module import FlowModule, NonFiniteLossError
from .trainer import default_callbacks, make_trainer

__all__ = [
    "FlowModule",
    "NonFiniteLossError",
    "ToyDataModule",
    "DigitsDataModule",
    "TensorFileDataModule",
    "ImageFolderDataModule",
    "WholeBatchDataModule",
    "BatchRequest",
    "SafeCheckpointIO",
    "SamplePlotCallback",
    "TrainingClock",
    "make_trainer",
    "default_callbacks",
]
