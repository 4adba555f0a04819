"""flowgen: flow matching, diffusion training and few-step distillation under one interface.

Convention: ``t ∈ [0, 1]``, ``t = 0`` is data, ``t = 1`` is noise,
``x_t = α(t)·data + σ(t)·noise``. See :mod:`flowgen.paths`, :mod:`flowgen.parameterization`,
:mod:`flowgen.objectives`.
"""

__version__ = "0.1.0.dev0"

from . import objectives, paths, samplers
from .parameterization import Prediction, convert, from_data_noise, to_data_noise

__all__ = ["__version__", "Prediction", "convert", "to_data_noise", "from_data_noise", "paths", "objectives", "samplers"]
