"""Probability paths ``x_t = α(t)·data + σ(t)·noise`` with ``t = 0`` data and ``t = 1`` noise.

Built-ins: :class:`RectifiedFlow`, :class:`Cosine`, :class:`VP`, :class:`DiscreteDDPM`,
:class:`EDM`; user schedules via :class:`AffinePath`. :func:`path_to_config` and
:func:`path_from_config` turn a built-in path into plain data (for checkpoints) and back.
"""

from __future__ import annotations

from .affine import AffinePath
from .base import Path, PathSample
from .builtin import EDM, VP, Cosine, RectifiedFlow
from .discrete import DiscreteDDPM

__all__ = [
    "Path",
    "PathSample",
    "RectifiedFlow",
    "Cosine",
    "VP",
    "EDM",
    "DiscreteDDPM",
    "AffinePath",
    "path_to_config",
    "path_from_config",
    "BUILTIN_PATHS",
]

#: name → class of every built-in path that can be stored as config.
BUILTIN_PATHS = {cls.__name__: cls for cls in (RectifiedFlow, Cosine, VP, EDM, DiscreteDDPM)}


def path_to_config(path: Path) -> dict:
    """Plain-data description of a built-in path: ``{"name": ..., **arguments}``."""
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    return {"name": type(path).__name__, **path._config()}


def path_from_config(config: dict) -> Path:
    """Rebuild a path from :func:`path_to_config`'s output.

    Raises:
        ValueError: if the name is unknown or the arguments do not fit.
    """
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"path config must be a dict with a 'name' key, got {config!r}")
    cfg = dict(config)
    name = cfg.pop("name")
    if name not in BUILTIN_PATHS:
        raise ValueError(f"unknown path name {name!r}; expected one of {sorted(BUILTIN_PATHS)}")
    try:
        if name == "DiscreteDDPM":
            schedule = cfg.pop("schedule", None)
            if schedule is None:
                if set(cfg) != {"betas"}:
                    raise TypeError(f"a DiscreteDDPM config without 'schedule' takes exactly one key, 'betas'; got {sorted(cfg)}")
                return DiscreteDDPM(cfg["betas"])
            if schedule not in ("linear", "scaled_linear", "cosine"):
                raise ValueError(f"unknown DiscreteDDPM schedule {schedule!r}; expected 'linear', 'scaled_linear' or 'cosine'")
            return getattr(DiscreteDDPM, schedule)(**cfg)
        return BUILTIN_PATHS[name](**cfg)
    except TypeError as err:  # unknown or missing keys, or values of the wrong type
        raise ValueError(f"bad arguments for path {name}: {err}") from err
