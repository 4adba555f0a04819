r"""Public sampling entry points: :func:`sample`, :func:`integrate`, :func:`invert`, :func:`sample_stream`.

Generation integrates the probability-flow ODE (or a stochastic sampler) from ``t_max`` down
to ``t_min``. :func:`sample` starts from ``σ(t_max)·noise``, i.e. from the prior
``N(0, σ(t_max)² I)``; it ignores ``α(t_max)·data``, which is exactly 0 for rectified flow and
cosine at ``t = 1`` and small for VP/DDPM (e.g. ``α(1) ≈ 0.0066`` for VP(0.1, 20)). To start
from an exact state (e.g. the oracle's marginal) use :func:`integrate`, which takes ``x`` at
``grid[0]`` as given.

Invariants:

* stateless: nothing is kept between calls; randomness comes only from ``generator``
  (``None`` = torch's global RNG);
* ``result.nfe`` counts model evaluations by wrapping the call (the guided pair counts 2;
  adaptive solvers' rejected steps and step-size probes count);
* the model is never evaluated where its prediction's conversion is singular
  (:func:`~flowgen.parameterization.singular_at`): such a grid raises ValueError, except
  that a final step to a singular ``t_min`` uses a formula that needs no evaluation there;
* the loops do no per-step validation or device synchronisation: the output is checked for
  NaN/Inf once at the end, and only if that fails the run is repeated with per-step checks
  (same state, same RNG state) to name the step and ``t`` where it broke;
* no autograd graph is recorded (``torch.no_grad``); differentiate through the per-sample
  step functions in :mod:`flowgen.samplers.steps` instead.

References:
    Song et al. 2021, arXiv:2011.13456, Sec. 4.3 and Appendix D (probability-flow ODE, inversion);
    Karras et al. 2022, arXiv:2206.00364, Sec. 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from .._validation import check_batch, check_finite
from ..parameterization import Prediction
from ..paths.base import Path
from .adapters import _describe_singular, _Evaluator, conversion_coefficients, singular_for
from .grids import Grid, check_grid, make_grid
from .methods import METHODS, Method, _Run, is_stochastic
from .noise import seeded_noise

__all__ = [
    "SampleResult",
    "sample",
    "integrate",
    "invert",
    "sample_stream",
    "euler",
    "heun",
    "midpoint",
    "rk4",
    "ddim",
    "ddpm",
    "dpm_solver_pp_2m",
    "edm_stochastic",
    "adaptive",
]


@dataclass(frozen=True)
class SampleResult:
    """What a sampler returns.

    Attributes:
        samples: ``(B, *D)`` the state at the end of the grid (data for :func:`sample`, noise for :func:`invert`).
        nfe: exact number of model evaluations (a guided evaluation counts 2).
        grid: ``(N + 1,)`` float64 CPU tensor, the times integrated over (adaptive: its two ends).
        method: the method's name.
    """

    samples: Tensor
    nfe: int
    grid: Tensor
    method: str


# --- argument handling ----------------------------------------------------------------------
def _check_path(path) -> Path:
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    return path


def _check_options(method: Method, options: dict) -> dict:
    allowed = METHODS[method].options
    bad = sorted(set(options) - set(allowed))
    if bad:
        hint = sorted(allowed) if allowed else "none"
        raise TypeError(f"method {method.value!r} got unexpected option(s) {bad}; it accepts {hint}")
    merged = dict(allowed)
    merged.update(options)
    if method is Method.DDIM:
        eta = merged["eta"]
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {eta!r}")
    if METHODS[method].adaptive:
        for k in ("atol", "rtol"):
            v = merged[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{k} must be a finite number > 0, got {v!r}")
        eg = merged["end_gap"]
        if isinstance(eg, bool) or not isinstance(eg, (int, float)) or not (0 < eg < 0.5):
            raise ValueError(f"end_gap must be a number in (0, 0.5), got {eg!r}")
    return merged


def _resolve_grid(path: Path, method: Method, steps, grid, t_max, t_min, *, generation: bool) -> Tensor:
    """The grid to integrate over (float64 CPU), from ``steps``/``grid``/``t_max``/``t_min``."""
    spec = METHODS[method]
    if spec.adaptive:
        if steps is not None:
            raise ValueError(f"adaptive method {method.value!r} chooses its own steps; drop steps and set atol/rtol")
        if grid is not None and not isinstance(grid, (str, Grid)):
            g = check_grid(grid, increasing=not generation)
            if g.numel() != 2:
                raise ValueError(f"adaptive method {method.value!r} takes a grid of its two ends only, got {g.numel()} times")
            if t_max is not None or t_min is not None:
                raise ValueError("pass either grid or t_max/t_min, not both")
            return g
        if isinstance(grid, (str, Grid)):
            raise ValueError(f"adaptive method {method.value!r} chooses its own steps; a named grid {grid!r} is not used")
        tmax = path.t_max if t_max is None else t_max
        tmin = path.t_min if t_min is None else t_min
        from .grids import _check_interval

        tmax, tmin = _check_interval(tmax, tmin)
        g = torch.tensor([tmax, tmin], dtype=torch.float64)
        return g if generation else g.flip(0)
    if grid is None or isinstance(grid, (str, Grid)):
        if steps is None:
            raise ValueError(f"method {method.value!r} needs steps (an integer >= 1) or an explicit grid")
        g = make_grid(Grid.UNIFORM if grid is None else grid, steps, path, t_max=t_max, t_min=t_min)
        return g if generation else g.flip(0)
    if t_max is not None or t_min is not None:
        raise ValueError("pass either an explicit grid or t_max/t_min, not both (the grid's ends are t_max and t_min)")
    g = check_grid(grid, increasing=not generation)
    if steps is not None and (isinstance(steps, bool) or steps != g.numel() - 1):
        raise ValueError(f"steps={steps!r} does not match the grid's {g.numel() - 1} steps; pass one or the other")
    return g


def _check_state(x, name: str) -> Tensor:
    check_batch(x, name)
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (B, *D) with at least one event dimension, got shape {tuple(x.shape)}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (a shape without values); samplers need a tensor with values")
    return x


class _SolverFailure(Exception):
    """The adaptive solver handed the field a non-finite time (its error estimate broke down)."""


def _save_rng(generator, device) -> object:
    if generator is None:
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return ("global", cpu, cuda)
    if isinstance(generator, torch.Generator):
        return ("one", generator.get_state())
    return ("many", [g.get_state() for g in generator])


def _restore_rng(generator, device, saved) -> None:
    kind = saved[0]
    if kind == "global":
        torch.set_rng_state(saved[1])
        if saved[2] is not None:
            torch.cuda.set_rng_state(saved[2], device)
    elif kind == "one":
        generator.set_state(saved[1])
    else:
        for g, s in zip(generator, saved[1]):
            g.set_state(s)


def _check_generator(generator, batch: int) -> None:
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch:
            raise ValueError(f"generator is a list of {len(generator)} per-sample generators but the batch has {batch} samples")
        return
    raise TypeError(f"generator must be None, a torch.Generator or a list of one per sample, got {type(generator).__name__}")


# --- the core -------------------------------------------------------------------------------
def _adaptive_run(ev: _Evaluator, path: Path, prediction: Prediction, method: Method, grid: Tensor, x: Tensor, opts: dict) -> Tensor:
    """Integrate with a torchdiffeq solver from ``grid[0]`` to ``grid[-1]``."""
    from torchdiffeq import odeint

    t0, t1 = float(grid[0]), float(grid[-1])
    if bool(singular_for(path, grid[:1], prediction, Prediction.VELOCITY)[0]):
        raise ValueError(f"{method.value} would evaluate the model at its start, where " + _describe_singular(path, t0, prediction, Prediction.VELOCITY))
    t_stop, finish = t1, False
    if bool(singular_for(path, grid[-1:], prediction, Prediction.VELOCITY)[0]):
        # The solver evaluates its end point; stop short and finish with one DDIM step, which
        # needs no evaluation at the end (error O(σ̃(t_stop)²) for smooth data).
        t_stop = t1 + float(opts["end_gap"]) * (t0 - t1)
        finish = True
        for target in (Prediction.VELOCITY, Prediction.DATA):
            if bool(singular_for(path, torch.tensor([t_stop], dtype=torch.float64), prediction, target)[0]):
                raise ValueError(f"{method.value} cannot stop at t={t_stop:.6g}: " + _describe_singular(path, t_stop, prediction, target))
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    dtype, batch = x.dtype, x.shape[0]
    counter = [0]

    lo, hi = min(t0, t_stop), max(t0, t_stop)

    def field(t: Tensor, y: Tensor) -> Tensor:
        # Steps are clipped to land on t_stop (step_t below); only torchdiffeq's initial
        # step-size probe can fall outside the interval, and it is evaluated at the clamped time.
        tf = float(t)
        if not math.isfinite(tf):  # a NaN/Inf state makes torchdiffeq's step size NaN
            raise _SolverFailure(f"the solver proposed t={tf} after {counter[0]} evaluations (its error estimate is not finite)")
        tf = min(max(tf, lo), hi)
        counter[0] += 1
        tt = torch.tensor([tf], dtype=torch.float64)
        c_x, c_p = conversion_coefficients(path, tt, src=prediction, dst=Prediction.VELOCITY)
        p = ev(y.to(dtype), torch.full((batch,), tf, dtype=dtype, device=y.device), f"{counter[0]} (adaptive evaluation)", tf)
        cx, cp = float(c_x[0]), float(c_p[0])
        out = p.to(work) * cp
        return out if cx == 0.0 else out + cx * y

    times = torch.tensor([t0, t_stop], dtype=work, device=x.device)
    solver_options = dict(opts["options"] or {})
    solver_options.setdefault("step_t", torch.tensor([t_stop], dtype=work))
    sol = odeint(field, x.to(work), times, method=method.value, atol=float(opts["atol"]), rtol=float(opts["rtol"]), options=solver_options)
    y = sol[-1].to(dtype)
    if finish:
        tt = torch.tensor([t_stop, t1], dtype=torch.float64)
        a1, s1 = float(path._alpha(tt[1:])[0]), float(path._sigma(tt[1:])[0])
        dx, dp = (float(c[0]) for c in conversion_coefficients(path, tt[:1], src=prediction, dst=Prediction.DATA))
        nx, np_ = (float(c[0]) for c in conversion_coefficients(path, tt[:1], src=prediction, dst=Prediction.NOISE))
        p = ev(y, torch.full((batch,), t_stop, dtype=dtype, device=y.device), "final (DDIM step to the singular end)", t_stop)
        y = (a1 * dx + s1 * nx) * y + (a1 * dp + s1 * np_) * p
    return y


def _integrate(model, path: Path, x: Tensor, prediction: Prediction, method: Method, grid: Tensor, opts: dict, *,
               cond, guidance_scale, null_cond, generator, progress: bool, callback, x_name: str = "x") -> SampleResult:
    """Validated core: run once; if the result is not finite, rerun with per-step checks to say where."""
    spec = METHODS[method]
    _check_generator(generator, x.shape[0])
    ev = _Evaluator(model, cond=cond, guidance_scale=guidance_scale, null_cond=null_cond, batch=x.shape[0]).bind(x)
    if x.shape[0] == 0:  # an empty batch: nothing to integrate (adaptive solvers cannot take a norm of nothing)
        return SampleResult(samples=x.clone(), nfe=0, grid=grid, method=method.value)
    stochastic = is_stochastic(method, opts)
    saved = _save_rng(generator, x.device) if stochastic else None
    with torch.no_grad():
        failure = None
        if spec.adaptive:
            try:
                out = _adaptive_run(ev, path, prediction, method, grid, x, opts)
            except (AssertionError, _SolverFailure) as err:  # torchdiffeq asserts on a non-finite state or an underflowing step
                out, failure = None, err
        else:
            run = _Run(ev, path, prediction, grid, x, method=method.value, generator=generator, progress=progress, callback=callback)
            out = spec.loop(run, x, opts)
        if failure is not None or not bool(torch.isfinite(out).all()):
            check_finite(x, x_name)  # NaN/Inf given as input (checked here, off the happy path)
            _diagnose(model, path, x, prediction, method, grid, opts, cond=cond, guidance_scale=guidance_scale,
                      null_cond=null_cond, generator=generator, saved=saved, failure=failure, x_name=x_name)
    return SampleResult(samples=out, nfe=ev.nfe, grid=grid, method=method.value)


def _diagnose(model, path, x, prediction, method, grid, opts, *, cond, guidance_scale, null_cond, generator, saved, failure=None,
              x_name: str = "x"):
    """Repeat the run with per-step checks (same RNG state) and raise naming the step and t."""
    spec = METHODS[method]
    if saved is not None:
        _restore_rng(generator, x.device, saved)
    ev = _Evaluator(model, cond=cond, guidance_scale=guidance_scale, null_cond=null_cond).bind(x)
    ev.check_each = True
    ev.x_name = x_name

    def check_state(i, t, state):
        if not bool(torch.isfinite(state).all()):
            raise ValueError(
                f"the sampler state became non-finite at step {i} (reaching t={t:.6g}) although the model outputs were finite; "
                f"the update overflowed in {state.dtype} (give {x_name} in float32/float64, or use a finer grid)"
            )

    if spec.adaptive:
        try:
            out = _adaptive_run(ev, path, prediction, method, grid, x, opts)
        except (AssertionError, _SolverFailure) as err:
            raise ValueError(f"{method.value} (torchdiffeq) failed on {x_name} {tuple(x.shape)}: {err}") from None
    else:
        run = _Run(ev, path, prediction, grid, x, method=method.value, generator=generator, callback=check_state)
        out = spec.loop(run, x, opts)
    if failure is not None:
        raise ValueError(f"{method.value} (torchdiffeq) failed on {x_name} {tuple(x.shape)}: {failure}")
    bad = int((~torch.isfinite(out)).sum())
    raise ValueError(
        f"{method.value} produced {bad} non-finite value(s) from {x_name} {tuple(x.shape)} in {x.dtype} although every model "
        f"output was finite: the solver's state or error estimate overflowed (check the scale of {x_name}, or sample in "
        "float64), or the model is not deterministic"
    )


def integrate(model, path: Path, x: Tensor, *, prediction, method="euler", steps: int | None = None, grid=None,
              t_max: float | None = None, t_min: float | None = None, cond=None, guidance_scale: float | None = None,
              null_cond=None, generator=None, progress: bool = False, callback: Callable | None = None,
              **method_options) -> SampleResult:
    """Integrate from the given state ``x`` at ``grid[0]`` to ``grid[-1]``.

    Like :func:`sample` but ``x`` is the state itself (no ``σ(t_max)`` scaling), and the grid
    may also be strictly increasing (deterministic methods only), which integrates the ODE
    upward (inversion).

    Args:
        model: ``model(x_t, t[, cond])`` → prediction of kind ``prediction``, shape of ``x_t``; ``t`` is ``(B,)``.
        path: the path the model was trained on.
        x: ``(B, *D)`` the state at ``grid[0]``.
        prediction: the model's :class:`~flowgen.parameterization.Prediction` (or its value).
        method: a :class:`~flowgen.samplers.Method` or its name (see :data:`~flowgen.samplers.METHODS`).
        steps: number of steps for a generated grid.
        grid: ``None`` (uniform), a grid name (``"uniform"``, ``"karras"``, ``"log_snr"``,
            ``"shifted"``) used with ``steps``, or an explicit 1-D grid of times.
        t_max, t_min: the interval for a generated grid (default the path's).
        cond, guidance_scale, null_cond: condition and classifier-free guidance (see
            :func:`~flowgen.samplers.as_velocity`).
        generator: for stochastic methods: ``None`` (global RNG), a ``torch.Generator`` on
            ``x``'s device, or a list of one generator per sample.
        progress: show a tqdm bar over the steps.
        callback: ``callback(step, t_next, x)`` after each fixed-grid step.
        **method_options: the method's options, e.g. ``eta`` (ddim), ``S_churn`` (edm_stochastic),
            ``atol``/``rtol`` (adaptive).

    Returns:
        :class:`SampleResult`.

    Raises:
        ValueError: bad ``steps``/``grid``, a singular evaluation time, a model output of the
            wrong shape or non-finite (naming the step and ``t``), ``cond`` of the wrong batch,
            an unknown method.
        TypeError: an option the method does not take.
    """
    path = _check_path(path)
    prediction = Prediction.parse(prediction)
    method = Method.parse(method)
    opts = _check_options(method, method_options)
    _check_state(x, "x")
    generation = True
    if grid is not None and not isinstance(grid, (str, Grid)):
        g = check_grid(grid) if _looks_decreasing(grid) else check_grid(grid, increasing=True)
        generation = bool(g[0] > g[-1])
    if not generation and is_stochastic(method, opts):
        raise ValueError(f"method {method.value!r} with these options is stochastic and cannot integrate upward (inversion); use a deterministic method")
    g = _resolve_grid(path, method, steps, grid, t_max, t_min, generation=generation)
    return _integrate(model, path, x, prediction, method, g, opts, cond=cond, guidance_scale=guidance_scale,
                      null_cond=null_cond, generator=generator, progress=progress, callback=callback)


def _looks_decreasing(grid) -> bool:
    try:
        first, last = float(grid[0]), float(grid[-1])
    except (TypeError, ValueError, IndexError):
        return True  # let check_grid raise the precise error
    return not (first < last)


def _slice_cond(c, lo: int, hi: int, batch: int):
    if isinstance(c, Tensor) and c.dim() > 0 and c.shape[0] == batch:
        return c[lo:hi]
    return c


def sample(model, path: Path, noise: Tensor, *, prediction, method="euler", steps: int | None = None, grid=None,
           cond=None, guidance_scale: float | None = None, null_cond=None, generator=None, progress: bool = False,
           dtype: torch.dtype | None = None, t_max: float | None = None, t_min: float | None = None,
           batch_size: int | None = None, callback: Callable | None = None, **method_options) -> SampleResult:
    """Generate samples from noise with any model, path, prediction and method.

    Starts from ``x = σ(t_max)·noise`` (the prior ``N(0, σ(t_max)² I)``, ignoring
    ``α(t_max)·data``) and integrates down to ``t_min``.

    Args:
        model: ``model(x_t, t[, cond])`` → prediction of kind ``prediction``; ``t`` is ``(B,)``.
        path: the path the model was trained on.
        noise: ``(B, *D)`` standard normal noise (see :func:`~flowgen.samplers.seeded_noise`).
        prediction: the model's prediction kind.
        method: ``"euler"``, ``"heun"``, ``"midpoint"``, ``"rk4"``, ``"ddim"``, ``"ddpm"``,
            ``"dpm_solver_pp_2m"``, ``"edm_stochastic"``, or a torchdiffeq adaptive method
            (``"dopri5"``, ``"bosh3"``, …).
        steps: number of steps (fixed-step methods).
        grid: ``None`` (uniform), a grid name used with ``steps``, or a strictly decreasing 1-D grid.
        cond: condition passed to the model as its third argument (``(B, ...)`` if a tensor).
        guidance_scale: classifier-free guidance weight (0 unconditional, 1 conditional); needs ``null_cond``.
        null_cond: the unconditional input (``cond``'s shape, its per-sample shape, or a scalar).
        generator: RNG for stochastic methods (see :func:`integrate`).
        progress: tqdm progress bar.
        dtype: sample in this floating dtype (default ``noise.dtype``); coefficients are float64.
        t_max, t_min: the interval for a generated grid (default the path's).
        batch_size: integrate at most this many samples at a time (bounded memory for large
            ``B``); results are concatenated and ``nfe`` summed over chunks.
        callback: ``callback(step, t_next, x)`` after each step (per chunk).
        **method_options: e.g. ``eta``, ``S_churn``, ``atol``, ``rtol``.

    Returns:
        :class:`SampleResult` with ``samples`` ``(B, *D)`` in ``dtype``.

    Example:
        >>> import torch, flowgen
        >>> from flowgen.samplers import sample
        >>> model = lambda x_t, t: -x_t  # a velocity field
        >>> out = sample(model, flowgen.paths.RectifiedFlow(), torch.randn(4, 2), prediction="velocity", steps=8)
        >>> out.samples.shape, out.nfe
        (torch.Size([4, 2]), 8)
    """
    path = _check_path(path)
    prediction = Prediction.parse(prediction)
    method = Method.parse(method)
    opts = _check_options(method, method_options)
    _check_state(noise, "noise")
    if dtype is not None:
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        noise = noise.to(dtype)
    g = _resolve_grid(path, method, steps, grid, t_max, t_min, generation=True)
    sigma0 = float(path._sigma(g[:1])[0])
    x = noise if sigma0 == 1.0 else noise * sigma0
    batch = x.shape[0]
    kw = dict(cond=cond, guidance_scale=guidance_scale, null_cond=null_cond, progress=progress, callback=callback)
    if batch_size is None or batch <= batch_size:
        return _integrate(model, path, x, prediction, method, g, opts, generator=generator, x_name="noise", **kw)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    _check_generator(generator, batch)
    from .adapters import _check_cond

    _check_cond(cond, batch)
    # The output is allocated once and filled chunk by chunk: keeping many small chunk tensors
    # alive between the large, short-lived activation buffers fragments the C heap (measured:
    # +1.1 GB for 10^6 2-D samples with a list of chunks, +56 MB with this, noise and output included).
    out, nfe = None, 0
    for lo in range(0, batch, batch_size):
        hi = min(lo + batch_size, batch)
        gen = generator[lo:hi] if isinstance(generator, (list, tuple)) else generator
        kw_c = dict(kw, cond=_slice_cond(cond, lo, hi, batch), null_cond=_slice_cond(null_cond, lo, hi, batch))
        res = _integrate(model, path, x[lo:hi], prediction, method, g, opts, generator=gen, x_name="noise", **kw_c)
        if out is None:
            out = torch.empty((batch, *res.samples.shape[1:]), dtype=res.samples.dtype, device=res.samples.device)
        out[lo:hi] = res.samples
        nfe += res.nfe
        del res
    return SampleResult(samples=out, nfe=nfe, grid=g, method=method.value)


def sample_stream(model, path: Path, *, num_samples: int, shape, batch_size: int, prediction, method="euler",
                  steps: int | None = None, grid=None, seed: int | None = None, generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float32, device=None, cond=None, guidance_scale: float | None = None,
                  null_cond=None, t_max: float | None = None, t_min: float | None = None,
                  **method_options) -> Iterator[SampleResult]:
    """Yield ``num_samples`` samples in chunks of ``batch_size``, holding one chunk at a time.

    Memory is bounded by one chunk (noise, model activations, output), whatever ``num_samples``.

    Args:
        num_samples: total number of samples ``N``.
        shape: per-sample event shape ``D``.
        batch_size: chunk size.
        seed: if given, sample ``i`` uses the per-sample seed ``seed + i`` (:func:`seeded_noise`):
            the stream is the same whatever ``batch_size`` (slower: one generator per sample).
        generator: otherwise noise is drawn chunk by chunk from this generator (or the global
            RNG): reproducible for a fixed ``batch_size``.
        cond, null_cond: ``(N, ...)`` tensors are sliced per chunk; anything else is passed as is.
        Other arguments as in :func:`sample`.

    Yields:
        :class:`SampleResult` per chunk (``samples`` ``(≤ batch_size, *D)``).
    """
    for name, v in (("num_samples", num_samples), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    stochastic = is_stochastic(Method.parse(method), method_options)
    for lo in range(0, num_samples, batch_size):
        hi = min(lo + batch_size, num_samples)
        gen = generator
        if seed is not None:
            from .noise import seeded_generators

            gens = seeded_generators(list(range(seed + lo, seed + hi)))
            noise = seeded_noise(gens, shape, dtype=dtype, device=device)
            gen = gens if stochastic else None
        else:
            gdev = generator.device if generator is not None else device
            noise = torch.randn((hi - lo, *shape), generator=generator, dtype=dtype if dtype in (torch.float32, torch.float64) else torch.float32, device=gdev)
            noise = noise.to(dtype=dtype, device=device)
        yield sample(model, path, noise, prediction=prediction, method=method, steps=steps, grid=grid,
                     cond=_slice_cond(cond, lo, hi, num_samples), guidance_scale=guidance_scale,
                     null_cond=_slice_cond(null_cond, lo, hi, num_samples), generator=gen,
                     t_max=t_max, t_min=t_min, **method_options)


def invert(model, path: Path, data: Tensor, *, prediction, method="euler", steps: int | None = None, grid=None,
           t_max: float | None = None, t_min: float | None = None, cond=None, guidance_scale: float | None = None,
           null_cond=None, progress: bool = False, **method_options) -> SampleResult:
    """Map data to noise by integrating the probability-flow ODE upward (``t_min → t_max``).

    The inverse of :func:`sample` with the same ``method``/``steps``/``grid`` (given here in
    generation order, strictly decreasing; it is run reversed): ``result.samples`` is
    ``x_{t_max} / σ(t_max)``, the noise that :func:`sample` maps back to ``data`` up to the
    discretisation error. Deterministic methods only.

    Args:
        data: ``(B, *D)`` the states at ``t_min``.
        Other arguments as in :func:`sample`.

    Returns:
        :class:`SampleResult` with ``samples`` the noise ``(B, *D)``.

    References:
        Song et al. 2021, arXiv:2010.02502, Sec. 4.3 (DDIM inversion); Song et al. 2021,
        arXiv:2011.13456, Appendix D.2 (encoding with the probability-flow ODE).
    """
    path = _check_path(path)
    prediction = Prediction.parse(prediction)
    method = Method.parse(method)
    opts = _check_options(method, method_options)
    if is_stochastic(method, opts):
        raise ValueError(f"method {method.value!r} with these options is stochastic; inversion needs a deterministic method")
    _check_state(data, "data")
    check_finite(data, "data")
    g = _resolve_grid(path, method, steps, grid, t_max, t_min, generation=True).flip(0)
    res = _integrate(model, path, data, prediction, method, g, opts, cond=cond, guidance_scale=guidance_scale,
                     null_cond=null_cond, generator=None, progress=progress, callback=None)
    sigma_end = float(path._sigma(g[-1:])[0])
    if sigma_end == 0.0:
        raise ValueError("invert needs sigma(t_max) > 0 to express the end state as noise")
    noise = res.samples if sigma_end == 1.0 else res.samples / sigma_end
    return SampleResult(samples=noise, nfe=res.nfe, grid=g, method=method.value)


# --- the methods as plain functions with one signature ----------------------------------------
def _method_fn(method: Method):
    def fn(model, path: Path, x: Tensor, grid=None, *, prediction, steps: int | None = None, cond=None,
           guidance_scale: float | None = None, null_cond=None, generator=None, progress: bool = False,
           callback: Callable | None = None, **options) -> SampleResult:
        return integrate(model, path, x, prediction=prediction, method=method, steps=steps, grid=grid, cond=cond,
                         guidance_scale=guidance_scale, null_cond=null_cond, generator=generator, progress=progress,
                         callback=callback, **options)

    fn.__name__ = fn.__qualname__ = method.value
    fn.__doc__ = (
        f"Integrate with ``{method.value}`` from the state ``x`` ``(B, *D)`` at ``grid[0]``.\n\n"
        f"``integrate(model, path, x, method='{method.value}', ...)``; see :func:`integrate` and the\n"
        "math in :mod:`flowgen.samplers.methods`. ``grid`` is a 1-D grid, a grid name with ``steps``,\n"
        "or ``None`` (uniform, with ``steps``). Returns :class:`SampleResult`."
    )
    return fn


euler = _method_fn(Method.EULER)
heun = _method_fn(Method.HEUN)
midpoint = _method_fn(Method.MIDPOINT)
rk4 = _method_fn(Method.RK4)
ddim = _method_fn(Method.DDIM)
ddpm = _method_fn(Method.DDPM)
dpm_solver_pp_2m = _method_fn(Method.DPM_SOLVER_PP_2M)
edm_stochastic = _method_fn(Method.EDM_STOCHASTIC)


def adaptive(model, path: Path, x: Tensor, grid=None, *, prediction, method="dopri5", cond=None,
             guidance_scale: float | None = None, null_cond=None, t_max: float | None = None,
             t_min: float | None = None, **options) -> SampleResult:
    """Integrate from ``x`` at ``t_max`` with a torchdiffeq adaptive solver (``atol``, ``rtol``, ``end_gap``).

    ``nfe`` counts every evaluation, including rejected steps and the initial step-size probes.
    If ``t_min`` is singular for the prediction (e.g. a data prediction at ``σ = 0``), the solver
    stops at ``t_min + end_gap·(t_max − t_min)`` and one DDIM step (1 NFE) reaches ``t_min``.
    """
    m = Method.parse(method)
    if not METHODS[m].adaptive:
        raise ValueError(f"method {m.value!r} is not adaptive; expected one of {[a.value for a in METHODS if METHODS[a].adaptive]}")
    return integrate(model, path, x, prediction=prediction, method=m, grid=grid, t_max=t_max, t_min=t_min, cond=cond,
                     guidance_scale=guidance_scale, null_cond=null_cond, **options)
