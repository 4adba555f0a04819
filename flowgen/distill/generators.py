r"""Few-step student generators: one protocol, one ``sample(noise, steps=k)``, plain-data metadata.

Every distilled student is a :class:`Generator`:

* ``generator.sample(noise, steps=k, cond=None, generator=None) → (B, *D)``;
* ``generator.supported_steps``: the step counts it was trained for (a tuple), or ``None``
  for "any ``k ≥ 1``"; an unsupported ``k`` raises ValueError naming ``steps`` and the set;
* ``generator.to_metadata()``: plain data (path config, prediction, method, supported steps,
  grid …) that a checkpoint stores; :func:`generator_from_metadata` rebuilds the generator
  around a loaded network.

Implementations:

* :class:`ProgressiveGenerator` — DDIM (η = 0) on the student's grid of ``N`` steps
  (Salimans & Ho 2022);
* :class:`ConsistencyGenerator` — ``f(σ(t_max)·noise, t_max)`` for one step, multistep
  consistency sampling for more (Song et al. 2023, Algorithm 1);
* :class:`ReflowGenerator` — Euler with ``k`` uniform steps (1 step is the distilled map)
  (Liu et al. 2022).

References:
    Salimans & Ho 2022, arXiv:2202.00512; Song et al. 2023, arXiv:2303.01469, Algorithm 1;
    Liu et al. 2022, arXiv:2209.03003.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from ..parameterization import Prediction
from ..paths import path_from_config, path_to_config
from ..paths.base import Path
from ..preconditioning import BoundaryConditioned
from ..samplers import check_grid, sample
from ._common import check_data, check_int
from .consistency import _check_step_times, check_spacing, consistency_grid, consistency_sample, default_spacing, default_t_max

__all__ = ["Generator", "ProgressiveGenerator", "ConsistencyGenerator", "ReflowGenerator", "generator_from_metadata", "GENERATORS"]


class Generator(ABC):
    """A few-step generator ``noise → samples``.

    Args:
        model: the network (for :class:`ConsistencyGenerator`, the consistency function).
        path: the path it lives on.
        prediction: what ``model`` predicts.
        event_shape: if given, ``noise`` must have shape ``(B, *event_shape)``.

    Subclasses set :attr:`kind` and :attr:`method` and implement :meth:`_sample`.
    """

    #: Registry name stored in the metadata.
    kind: str = ""
    #: The sampling method's name (metadata).
    method: str = ""

    def __init__(self, model, path: Path, prediction, *, event_shape=None):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x_t, t[, cond]), got {type(model).__name__}")
        if not isinstance(path, Path):
            raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
        self.model = model
        self.path = path
        self.prediction = Prediction.parse(prediction)
        self.event_shape = None if event_shape is None else tuple(int(d) for d in event_shape)

    # --- the protocol -----------------------------------------------------------------------------
    @property
    @abstractmethod
    def supported_steps(self) -> tuple[int, ...] | None:
        """The step counts this generator supports (``None``: any integer ``>= 1``)."""

    @property
    def default_steps(self) -> int:
        """The fewest supported steps (what ``sample`` uses when ``steps`` is not given)."""
        s = self.supported_steps
        return 1 if s is None else min(s)

    def check_steps(self, steps) -> int:
        """Return ``steps`` if supported, else raise ValueError naming the supported set."""
        if steps is None:
            return self.default_steps
        s = self.supported_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            expected = "any integer >= 1" if s is None else f"one of {list(s)}"
            raise ValueError(f"steps must be {expected}, got {steps!r}")
        if s is not None and steps not in s:
            raise ValueError(f"steps={steps} is not supported by this {type(self).__name__}; supported steps: {list(s)}")
        return steps

    def sample(self, noise: Tensor, *, steps: int | None = None, cond=None, generator: torch.Generator | None = None) -> Tensor:
        """Generate from standard normal ``noise`` ``(B, *D)`` in ``steps`` model evaluations.

        Args:
            noise: ``(B, *D)`` standard normal noise.
            steps: a supported number of steps (default :attr:`default_steps`).
            cond: optional condition passed to the model.
            generator: RNG for methods that draw fresh noise (multistep consistency sampling).

        Returns:
            ``(B, *D)`` samples in ``noise``'s dtype, without autograd graph. A model in training
            mode is switched to eval mode for the call (dropout off) and switched back after.

        Raises:
            ValueError: an unsupported ``steps`` (the message lists the supported ones) or noise of the wrong shape.
        """
        k = self.check_steps(steps)
        check_data(noise, "noise", event_shape=self.event_shape)
        was_training = isinstance(self.model, nn.Module) and self.model.training
        if was_training:
            self.model.eval()
        try:
            with torch.no_grad():
                return self._sample(noise, k, cond, generator)
        finally:
            if was_training:
                self.model.train()

    @abstractmethod
    def _sample(self, noise: Tensor, steps: int, cond, generator) -> Tensor: ...

    def __call__(self, noise: Tensor, **kwargs) -> Tensor:
        return self.sample(noise, **kwargs)

    # --- metadata -----------------------------------------------------------------------------------
    def _extra(self) -> dict:
        return {}

    def to_metadata(self) -> dict:
        """Plain data describing how to sample (JSON-compatible): kind, path config, prediction, method, steps …"""
        s = self.supported_steps
        meta = {
            "generator": self.kind,
            "path": path_to_config(self.path),
            "prediction": self.prediction.value,
            "method": self.method,
            "supported_steps": None if s is None else [int(k) for k in s],
            "default_steps": int(self.default_steps),
            "event_shape": None if self.event_shape is None else list(self.event_shape),
        }
        meta.update(self._extra())
        return meta

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, prediction={self.prediction.value!r}, supported_steps={self.supported_steps})"


class ProgressiveGenerator(Generator):
    """A progressive-distillation student: deterministic DDIM on its grid of ``N`` steps.

    Args:
        model: the student ``model(x_t, t[, cond])``.
        path, prediction: its path and prediction kind.
        grid: its ``(N + 1,)`` strictly decreasing grid (e.g. ``ProgressiveDistillation.student_grid``).
        event_shape: optional per-sample shape check.

    ``supported_steps == (N,)``.

    References:
        Salimans & Ho 2022, arXiv:2202.00512, Algorithm 2 (the student's DDIM sampler).
    """

    kind = "progressive"
    method = "ddim"

    def __init__(self, model, path: Path, prediction, *, grid, event_shape=None):
        super().__init__(model, path, prediction, event_shape=event_shape)
        self.grid = check_grid(grid)

    @property
    def supported_steps(self) -> tuple[int, ...]:
        return (self.grid.numel() - 1,)

    def _sample(self, noise, steps, cond, generator):
        return sample(self.model, self.path, noise, prediction=self.prediction, method="ddim", grid=self.grid, cond=cond).samples

    def _extra(self) -> dict:
        return {"grid": [float(v) for v in self.grid.tolist()]}


class ConsistencyGenerator(Generator):
    """A consistency model: 1 step ``f(σ(t_max)·noise, t_max)``, or multistep consistency sampling.

    Args:
        f: the consistency function ``f(x_t, t[, cond])`` (e.g. a
            :class:`~flowgen.preconditioning.BoundaryConditioned` network).
        path: the path.
        t_min, t_max: the boundary time and the start time (defaults: ``f.t_min`` or
            ``path.t_min``, and :func:`~flowgen.distill.default_t_max`).
        step_times: ``{k: [τ_0, …, τ_{k−1}]}`` explicit times for each supported ``k``; by default
            ``k`` times of the consistency grid (``consistency_grid(k + 1, spacing=spacing)`` without its last point,
            so ``τ_0 = t_max``) for ``k = 1 … max_steps``.
        max_steps: the largest default ``k`` (4).
        rho: ρ of the default times.
        spacing: the default times' grid (:func:`~flowgen.distill.consistency_grid`): ``None``
            (default, :func:`~flowgen.distill.default_spacing`: ``"uniform"`` on a rectified-flow path,
            as consistency distillation trains there, ``"karras"`` on any other), or ``"karras"``,
            ``"uniform"``, ``"log_snr"``, ``"shifted"``.
        sigma_data: σ_d of the boundary-condition preconditioning (metadata, to rebuild ``f``).
        event_shape: optional per-sample shape check.

    The consistency function is recorded with prediction ``"data"``: its output estimates the
    trajectory's point at ``t_min``, i.e. the data (up to ``σ(t_min)``).

    References:
        Song et al. 2023, arXiv:2303.01469, Algorithm 1.
    """

    kind = "consistency"
    method = "consistency"

    def __init__(self, f, path: Path, *, t_min: float | None = None, t_max: float | None = None, step_times: dict | None = None,
                 max_steps: int = 4, rho: float = 7.0, sigma_data: float = 0.5, event_shape=None,
                 spacing=None):
        super().__init__(f, path, Prediction.DATA, event_shape=event_shape)
        self.t_min = float(getattr(f, "t_min", path.t_min) if t_min is None else t_min)
        self.t_max = float(default_t_max(path) if t_max is None else t_max)
        if not (0.0 <= self.t_min < self.t_max <= 1.0):
            raise ValueError(f"t_min and t_max must satisfy 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")
        self.rho, self.sigma_data = float(rho), float(sigma_data)
        self.spacing = check_spacing(default_spacing(path) if spacing is None else spacing)
        if step_times is None:
            max_steps = check_int(max_steps, "max_steps")
            step_times = {k: consistency_grid(k + 1, path, t_min=self.t_min, t_max=self.t_max, rho=self.rho,
                                              spacing=self.spacing)[:-1].tolist() for k in range(1, max_steps + 1)}
        if not isinstance(step_times, dict) or not step_times:
            raise ValueError(f"step_times must be a non-empty dict {{k: [t_0, ..., t_(k-1)]}}, got {step_times!r}")
        self.step_times = {}
        for k, times in step_times.items():
            k = check_int(int(k) if isinstance(k, str) and k.isdigit() else k, "step_times key")
            ts = _check_step_times(times, path, self.t_min)
            if len(ts) != k:
                raise ValueError(f"step_times[{k}] must hold {k} times, got {len(ts)}")
            self.step_times[k] = ts

    @property
    def supported_steps(self) -> tuple[int, ...]:
        return tuple(sorted(self.step_times))

    def _sample(self, noise, steps, cond, generator):
        return consistency_sample(self.model, self.path, noise, times=self.step_times[steps], t_min=self.t_min, cond=cond,
                                  generator=generator)

    def _extra(self) -> dict:
        return {"t_min": self.t_min, "t_max": self.t_max, "rho": self.rho, "spacing": self.spacing, "sigma_data": self.sigma_data,
                "step_times": {str(k): list(v) for k, v in self.step_times.items()}}


class ReflowGenerator(Generator):
    """A (k-)rectified-flow or 1-step-distilled student: Euler with ``k`` uniform steps from ``σ(t_max)·noise``.

    Args:
        model: the student ``model(x_t, t[, cond])``.
        path, prediction: its path and prediction kind (velocity by default).
        t_max, t_min: the interval (default the path's).
        supported_steps: a tuple of step counts, or ``None`` (default) for any ``k >= 1``.
        event_shape: optional per-sample shape check.

    References:
        Liu et al. 2022, arXiv:2209.03003, Sec. 2.3.
    """

    kind = "reflow"
    method = "euler"

    def __init__(self, model, path: Path, prediction="velocity", *, t_max: float | None = None, t_min: float | None = None,
                 supported_steps=None, event_shape=None):
        super().__init__(model, path, prediction, event_shape=event_shape)
        self.t_max = float(path.t_max if t_max is None else t_max)
        self.t_min = float(path.t_min if t_min is None else t_min)
        if not (0.0 <= self.t_min < self.t_max <= 1.0):
            raise ValueError(f"t_min and t_max must satisfy 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")
        if supported_steps is not None:
            supported_steps = tuple(sorted({check_int(k, "supported_steps entry") for k in supported_steps}))
            if not supported_steps:
                raise ValueError("supported_steps must be None (any k) or a non-empty collection of integers >= 1")
        self._supported = supported_steps

    @property
    def supported_steps(self):
        return self._supported

    def _sample(self, noise, steps, cond, generator):
        return sample(self.model, self.path, noise, prediction=self.prediction, method="euler", steps=steps,
                      t_max=self.t_max, t_min=self.t_min, cond=cond).samples

    def _extra(self) -> dict:
        return {"t_max": self.t_max, "t_min": self.t_min}


#: ``kind`` → generator class.
GENERATORS = {cls.kind: cls for cls in (ProgressiveGenerator, ConsistencyGenerator, ReflowGenerator)}


def generator_from_metadata(model, metadata: dict) -> Generator:
    """Rebuild a :class:`Generator` around ``model`` from :meth:`Generator.to_metadata`'s output.

    For a consistency generator, a raw network (not a
    :class:`~flowgen.preconditioning.BoundaryConditioned`) is wrapped with the stored ``t_min``
    and ``sigma_data``.

    Raises:
        ValueError: metadata without ``generator``, ``path`` or ``prediction`` (e.g. a teacher
            checkpoint without path metadata), or an unknown generator kind.
    """
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict from Generator.to_metadata(), got {type(metadata).__name__}")
    missing = [k for k in ("generator", "path", "prediction") if metadata.get(k) in (None, "", {})]
    if missing:
        raise ValueError(f"generator metadata lacks {', '.join(missing)}; it cannot be sampled from (was it written by flowgen.distill?)")
    kind = metadata["generator"]
    if kind not in GENERATORS:
        raise ValueError(f"unknown generator kind {kind!r}; expected one of {sorted(GENERATORS)}")
    path = path_from_config(metadata["path"])
    shape = metadata.get("event_shape")
    if kind == "progressive":
        if "grid" not in metadata:
            raise ValueError("progressive generator metadata lacks its grid")
        return ProgressiveGenerator(model, path, metadata["prediction"], grid=metadata["grid"], event_shape=shape)
    if kind == "consistency":
        t_min = float(metadata["t_min"])
        sigma_data = float(metadata.get("sigma_data", 0.5))
        f = model if isinstance(model, BoundaryConditioned) else BoundaryConditioned(model, path, t_min=t_min, sigma_data=sigma_data)
        times = {int(k): v for k, v in metadata.get("step_times", {}).items()} or None
        return ConsistencyGenerator(f, path, t_min=t_min, t_max=float(metadata["t_max"]), step_times=times,
                                    rho=float(metadata.get("rho", 7.0)), sigma_data=sigma_data, event_shape=shape,
                                    spacing=metadata.get("spacing", "karras"))
    steps = metadata.get("supported_steps")
    return ReflowGenerator(model, path, metadata["prediction"], t_max=metadata.get("t_max"), t_min=metadata.get("t_min"),
                           supported_steps=steps, event_shape=shape)

