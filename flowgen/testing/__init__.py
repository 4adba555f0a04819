"""Public test kit: exact oracles and hypothesis strategies for property-testing paths and models.

* :mod:`flowgen.testing.oracles` — :class:`GaussianData` and :class:`GaussianMixture` with
  closed-form posteriors, velocity, score and (Gaussian) flow map under any path.
* :mod:`flowgen.testing.strategies` — hypothesis strategies: every built-in path, random
  valid user schedules, times away from singular ends, shapes, predictions, data/noise.
* :class:`HostReads` — counts a block's host reads of tensor values (the device
  synchronisations it would make on a GPU), so a CPU test can pin a training step's.

The strategies need ``hypothesis`` (the ``test`` extra). This package imports without it:
the strategy names below (``paths``, ``times``, …) and the ``strategies`` submodule are loaded
lazily on first attribute access, which raises ``ImportError`` only then if hypothesis is missing.
"""

from __future__ import annotations

import importlib

from .host_reads import HostReads
from .oracles import GaussianData, GaussianMixture, OracleModel

_STRATEGY_NAMES = (
    "PATH_FAMILIES",
    "PathCase",
    "rectified_flows",
    "cosines",
    "vps",
    "discrete_ddpms",
    "edms",
    "builtin_paths",
    "user_paths",
    "paths",
    "predictions",
    "dtypes",
    "batch_shapes",
    "times",
    "seeds",
    "tensors",
    "data_noise",
    "path_cases",
)

# Only the eager names: ``from flowgen.testing import *`` must work without hypothesis too.
__all__ = ["GaussianData", "GaussianMixture", "OracleModel", "HostReads"]


def __getattr__(name: str):
    # Lazy: ``from flowgen.testing import paths`` imports hypothesis only when asked for.
    if name == "strategies" or name in _STRATEGY_NAMES:
        module = importlib.import_module(".strategies", __name__)
        return module if name == "strategies" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | {"strategies", *_STRATEGY_NAMES})
