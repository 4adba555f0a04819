r"""Capture a fixed-step sampler once as a CUDA graph and replay it.

:class:`CapturedSampler` plans the grid and coefficients (on the CPU), warms the model up on a
side stream, records the whole loop — every model call and update of every step — into one
``torch.cuda.CUDAGraph``, and replays it for each new batch of noise. A replay launches the
recorded kernels with no Python and no per-kernel launch cost; that is the "captured floor".

The captured object is explicit state owned by the caller (not a hidden cache): build it once
per (model, shape, grid, method) and call it many times. Only deterministic fixed-step methods
(``euler``, ``heun``, ``midpoint``, ``rk4``, ``ddim`` with ``eta = 0``, ``dpm_solver_pp_2m``)
can be captured. The model must be capturable (no host synchronisation, no data-dependent
control flow, static shapes).

On a machine without CUDA, or for a CPU device, the constructor raises a ValueError that says so;
use :func:`~flowgen.samplers.sample` there.

References:
    NVIDIA CUDA Programming Guide, "CUDA Graphs"; PyTorch docs, ``torch.cuda.graphs``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..parameterization import Prediction
from ..paths.base import Path
from .adapters import _Evaluator
from .api import SampleResult, _check_options, _resolve_grid, _diagnose
from .methods import METHODS, Method, _Run, is_stochastic

__all__ = ["CapturedSampler"]


class CapturedSampler:
    """A fixed-step sampler recorded once as a CUDA graph; ``sampler(noise)`` replays it.

    Args:
        model: ``model(x_t, t[, cond])`` on a CUDA device (capturable).
        path: the path.
        shape: the full noise shape ``(B, *D)``; every call must use this shape.
        prediction: the model's prediction kind.
        method: a deterministic fixed-step method.
        steps, grid, t_max, t_min: as in :func:`~flowgen.samplers.sample`.
        cond, guidance_scale, null_cond: fixed for the capture (tensors on the device).
        dtype: sampling dtype.
        device: a CUDA device (default ``"cuda"``).
        warmup: eager warm-up runs on a side stream before capture (cuBLAS/allocator init).
        **method_options: e.g. ``eta=0`` for ddim.

    Attributes:
        nfe: model evaluations per replay (counted while recording).
        grid: the grid.

    Raises:
        ValueError: no CUDA device, a CPU device, or a stochastic/adaptive method.
    """

    def __init__(self, model, path: Path, *, shape, prediction, method="euler", steps: int | None = None, grid=None,
                 t_max: float | None = None, t_min: float | None = None, cond=None, guidance_scale: float | None = None,
                 null_cond=None, dtype: torch.dtype = torch.float32, device="cuda", warmup: int = 3, **method_options):
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"CapturedSampler records a CUDA graph and needs a CUDA device, got device={device}; use sample() on {device.type}")
        if not torch.cuda.is_available():
            raise ValueError("CapturedSampler needs CUDA, but torch.cuda.is_available() is False; use sample() instead")
        if not isinstance(path, Path):
            raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
        self.path = path
        self.prediction = Prediction.parse(prediction)
        self.method = Method.parse(method)
        spec = METHODS[self.method]
        self.options = _check_options(self.method, method_options)
        if spec.adaptive or is_stochastic(self.method, self.options):
            raise ValueError(f"only deterministic fixed-step methods can be captured, got {self.method.value!r} with {self.options}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an integer >= 1, got {warmup!r}")
        self.grid = _resolve_grid(path, self.method, steps, grid, t_max, t_min, generation=True)
        shape = tuple(shape)
        self._model, self._cond, self._guidance, self._null = model, cond, guidance_scale, null_cond
        self._sigma0 = float(path._sigma(self.grid[:1])[0])
        self._static_in = torch.zeros(shape, dtype=dtype, device=device)
        self._loop = spec.loop

        # One run object for warm-up and capture: its time tensors are created (host-to-device
        # copies) during the eager warm-up and reused while recording, so the recorded graph
        # holds only device work.
        self._ev = _Evaluator(model, cond=cond, guidance_scale=guidance_scale, null_cond=null_cond, batch=shape[0]).bind(self._static_in)
        self._run = _Run(self._ev, path, self.prediction, self.grid, self._static_in, method=self.method.value)

        def run_once() -> tuple[Tensor, int]:
            before = self._ev.nfe
            x = self._static_in if self._sigma0 == 1.0 else self._static_in * self._sigma0
            out = self._loop(self._run, x, self.options)
            return out, self._ev.nfe - before

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                run_once()
        torch.cuda.current_stream(device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self._graph):
            self._static_out, self.nfe = run_once()
        self.device, self.dtype, self.shape = device, dtype, shape

    def __call__(self, noise: Tensor) -> SampleResult:
        """Replay on ``noise`` (shape ``shape``); returns a fresh copy of the samples."""
        if not isinstance(noise, Tensor) or tuple(noise.shape) != self.shape:
            raise ValueError(f"noise must have the captured shape {self.shape}, got {getattr(noise, 'shape', type(noise).__name__)}")
        self._static_in.copy_(noise)
        self._graph.replay()
        out = self._static_out.clone()
        if not bool(torch.isfinite(out).all()):
            x = noise.to(self.dtype) if self._sigma0 == 1.0 else noise.to(self.dtype) * self._sigma0
            _diagnose(self._model, self.path, x, self.prediction, self.method, self.grid, self.options, cond=self._cond,
                      guidance_scale=self._guidance, null_cond=self._null, generator=None, saved=None)
        return SampleResult(samples=out, nfe=self.nfe, grid=self.grid, method=self.method.value)
