r"""Reflow (rectified flow on a teacher's coupling), one-step distillation, straightness.

**Pairs.** The teacher's ODE sampler maps noise ``z`` to an endpoint ``x = Φ(z)``; the pairs
``(z, x)`` form a deterministic coupling. :func:`generate_pairs` writes them to disk in shards
(``torch.save`` of plain tensors, written to a temporary file and moved into place with
``os.replace``, read back with ``weights_only=True``). Shard ``i`` draws its noise from its own
seed, derived from ``(seed, i)``, so generation can stop anywhere and resume: complete shards are
kept, missing or damaged ones are regenerated, and the result is identical to an uninterrupted run.

**Reflow** (Liu et al. 2022, eq. 1 with the teacher's coupling): train a velocity field on the
fixed pairs, ``x_t = α(t)·x + σ(t)·z``, target ``α'(t)·x + σ'(t)·z`` (on rectified flow,
``z − x``), in any prediction kind through :func:`~flowgen.objectives.prediction_loss`.
Repeating (pairs from the new model, train again) gives the k-rectified flow; each round's
trajectories are straighter, and its 1-step Euler sampler better.

**One-step distillation** (Liu et al. 2022, Sec. 2.3): the student's single Euler step from
``σ(t_max)·z`` at ``t_max`` to ``t_min`` is regressed onto the endpoint ``x`` (squared L2 or
pseudo-Huber). On rectified flow this step is ``z − v(z, 1)``.

**Straightness** (Liu et al. 2022, Definition / eq. 4): with ``τ = (t_max − t)/(t_max − t_min) ∈ [0, 1]``
and the trajectory ``Z_τ`` of the model's own ODE,
``S = ∫₀¹ E‖(Z_1 − Z_0) − dZ/dτ‖² dτ`` (0 iff the trajectories are straight lines at constant
speed), and the **normalised path energy** ``E = E[∫₀¹ ‖dZ/dτ‖² dτ / ‖Z_1 − Z_0‖²] ≥ 1`` (1 iff
straight). Both are computed on the Euler trajectory of the samplers' :func:`~flowgen.samplers.integrate`,
where per sample ``∫‖dZ/dτ‖² = ‖Z_1 − Z_0‖² + S_i`` exactly.

References:
    Liu, Gong & Liu 2022, arXiv:2209.03003, eq. (1), Sec. 2.2–2.3 (reflow, k-rectified flow,
    distillation), Definition of straightness; Lee et al. 2023, arXiv:2301.12003 (reflow with a
    1-step target).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .._validation import check_batch, check_finite, check_same_shape, check_time, expand_like
from ..checkpoint import CheckpointError, atomic_save, safe_load
from ..objectives.functional import _loss, _loss_singular
from ..objectives.metrics import get_metric
from ..objectives.objective import call_model
from ..objectives.time import TimeDistribution, get_time_distribution
from ..objectives.weighting import UniformWeight, Weighting, get_weighting
from ..parameterization import Prediction
from ..paths import path_from_config, path_to_config
from ..paths.base import Path
from ..samplers import METHODS, Method, integrate, sample, uniform_grid
from ..samplers.steps import _step
from ._common import DistillOutput, check_data, check_int, check_loss, check_model, resolve_teacher, time_dtype

__all__ = [
    "shard_seed",
    "generate_pairs",
    "PairDataset",
    "pair_loader",
    "reflow_loss",
    "Reflow",
    "one_step_distillation_loss",
    "OneStepDistillation",
    "TrajectoryStats",
    "trajectory_stats",
    "straightness",
    "path_energy",
]

MANIFEST = "manifest.json"
FORMAT = "flowgen-reflow-pairs"
FORMAT_VERSION = 1


# --- pair generation --------------------------------------------------------------------------------
def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard ``shard``: a 63-bit integer from :class:`numpy.random.SeedSequence` ``([seed, shard])``.

    Independent of the batch size of the other shards and of the order they are generated in.
    """
    seed = check_int(seed, "seed", low=0)
    shard = check_int(shard, "shard", low=0)
    return int(np.random.SeedSequence([seed, shard]).generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)


def _shard_name(i: int) -> str:
    return f"pairs_{i:06d}.pt"


def _write_json_atomic(obj: dict, dest: str) -> None:
    tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)


def _read_manifest(out_dir: str) -> dict | None:
    f = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(f):
        return None
    try:
        with open(f) as fh:
            m = json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f"pair cache manifest {f!r} is unreadable ({err}); delete the folder to start over") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"{f!r} is not a flowgen reflow-pair manifest")
    return m


def _shard_rows(m: dict, i: int) -> int:
    return min(m["batch_size"], m["num"] - i * m["batch_size"])


def _dtype_of(name: str) -> torch.dtype:
    dt = getattr(torch, name.replace("torch.", ""), None)
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise ValueError(f"unknown floating dtype {name!r} in the pair manifest")
    return dt


def _load_shard(out_dir: str, m: dict, i: int, why: list | None = None) -> dict | None:
    """The shard's tensors if the file is complete and consistent with the manifest, else ``None``.

    The file is read with :func:`~flowgen.checkpoint.safe_load` (``weights_only=True``): a shard that
    carries pickled code is never executed, only treated as damaged. ``why`` collects the reason.
    """
    f = os.path.join(out_dir, _shard_name(i))
    reason = None
    if not os.path.exists(f):
        reason = "it is missing"
    else:
        try:
            obj = safe_load(f)
        except (CheckpointError, OSError) as err:
            reason = str(err)
        else:
            rows, shape, dtype = _shard_rows(m, i), tuple(m["shape"]), _dtype_of(m["dtype"])
            for key in ("noise", "endpoint"):
                x = obj.get(key)
                if not isinstance(x, Tensor) or tuple(x.shape) != (rows, *shape) or x.dtype != dtype or not bool(torch.isfinite(x).all()):
                    reason = f"its {key!r} entry is not a finite {dtype} tensor of shape {(rows, *shape)}"
                    break
            if reason is None and (int(obj.get("shard", torch.tensor(-1))) != i
                                   or int(obj.get("seed", torch.tensor(-1))) != shard_seed(m["seed"], i)):
                reason = "it belongs to another shard or seed"
            if reason is None:
                return obj
    if why is not None:
        why.append(reason)
    return None


def generate_pairs(teacher, path: Path | None = None, *, num: int, batch_size: int, shape, out_dir, prediction=None,
                   method="heun", steps: int | None = None, grid=None, seed: int = 0, dtype: torch.dtype = torch.float32,
                   device=None, t_max: float | None = None, t_min: float | None = None, **method_options) -> "PairDataset":
    r"""Write ``num`` noise → teacher-endpoint pairs to ``out_dir`` in shards of ``batch_size``; resumable.

    Shard ``i`` holds rows ``[i·batch_size, min((i+1)·batch_size, num))``: noise drawn in float64 on
    the CPU from ``torch.Generator().manual_seed(shard_seed(seed, i))`` and cast to ``dtype``, and
    the teacher's endpoint ``sample(teacher, path, noise, prediction, method, steps, grid)`` (which
    starts from ``σ(t_max)·noise``). Each shard is written atomically (temporary file, fsync,
    ``os.replace``) as a dict of tensors ``{"noise", "endpoint", "shard", "seed"}``.

    On a second call with the same arguments, complete shards are skipped; missing, truncated or
    corrupted ones (and stale temporary files) are regenerated from their own seeds, so the
    final contents equal those of an uninterrupted run (for a deterministic sampler). A call with
    different arguments on the same folder is refused.

    Args:
        teacher: ``teacher(x_t, t[, cond])``, unconditional; put it in eval mode first.
        path: the teacher's path (default ``teacher.path``).
        num: number of pairs.
        batch_size: pairs per shard (one teacher sampling call per shard).
        shape: per-sample event shape ``D``.
        out_dir: the folder (created if needed).
        prediction: the teacher's prediction (default ``teacher.prediction``).
        method, steps, grid, t_max, t_min, **method_options: the teacher's sampler (see
            :func:`~flowgen.samplers.sample`); deterministic methods only.
        seed: base seed of the per-shard seeds.
        dtype: dtype of the stored tensors.
        device: where the teacher runs (default CPU); stored tensors are on the CPU.

    Returns:
        :class:`PairDataset` over the finished folder; ``.generated`` lists the shards written by this call.

    Raises:
        ValueError: bad sizes, a stochastic sampler, or a folder holding pairs made with other settings.

    References:
        Liu et al. 2022, arXiv:2209.03003, Algorithm 1 (the coupling ``(Z_0, ODE[v](Z_0))``).
    """
    path, prediction = resolve_teacher(teacher, path, prediction)
    num = check_int(num, "num")
    batch_size = check_int(batch_size, "batch_size")
    seed = check_int(seed, "seed", low=0)
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(shape)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ValueError(f"shape must be the per-sample event shape, a non-empty tuple of positive ints, got {shape!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    m_enum = Method.parse(method)
    spec = METHODS[m_enum]
    if spec.stochastic or (m_enum is Method.DDIM and float(method_options.get("eta", 0.0)) != 0.0):
        raise ValueError(f"method {m_enum.value!r} is stochastic; reflow pairs need a deterministic ODE sampler (euler, heun, rk4, ddim, dpm_solver_pp_2m, dopri5 …)")
    if isinstance(grid, Tensor):
        grid = [float(v) for v in grid.tolist()]
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    settings = {
        "format": FORMAT, "version": FORMAT_VERSION, "num": num, "batch_size": batch_size, "shape": list(shape),
        "dtype": str(dtype).replace("torch.", ""), "seed": seed, "path": path_to_config(path), "prediction": prediction.value,
        "method": m_enum.value, "steps": steps, "grid": grid, "t_max": t_max, "t_min": t_min,
        "method_options": {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in sorted(method_options.items())},
    }
    settings["num_shards"] = -(-num // batch_size)
    old = _read_manifest(out_dir)
    if old is not None and old != settings:
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise ValueError(
            f"{out_dir!r} already holds pairs made with different settings ({', '.join(diff)}); "
            "use another out_dir or delete it to start over"
        )
    if old is None:
        _write_json_atomic(settings, os.path.join(out_dir, MANIFEST))
    for pattern in (".pairs_*.tmp", f".{MANIFEST}.*.tmp"):  # leftovers of a write killed midway
        for stale in glob.glob(os.path.join(out_dir, pattern)):
            os.unlink(stale)
    dev = torch.device("cpu") if device is None else torch.device(device)
    generated = []
    for i in range(settings["num_shards"]):
        if _load_shard(out_dir, settings, i) is not None:
            continue
        rows = _shard_rows(settings, i)
        s_i = shard_seed(seed, i)
        g = torch.Generator(device="cpu").manual_seed(s_i)
        noise = torch.randn((rows, *shape), generator=g, dtype=torch.float64).to(dtype)
        res = sample(teacher, path, noise.to(dev), prediction=prediction, method=m_enum, steps=steps, grid=grid,
                     t_max=t_max, t_min=t_min, **method_options)
        endpoint = res.samples.detach().to(device="cpu", dtype=dtype).contiguous()
        atomic_save({"noise": noise, "endpoint": endpoint, "shard": torch.tensor(i), "seed": torch.tensor(s_i)},
                    os.path.join(out_dir, _shard_name(i)))
        generated.append(i)
    ds = PairDataset(out_dir)
    ds.generated = generated
    return ds


class PairDataset(Dataset):
    """The pairs of a finished :func:`generate_pairs` folder, loaded into memory.

    ``ds[i]`` is ``(noise_i, endpoint_i)``, each ``(*D)``. Attributes: ``noise`` and ``endpoint``
    ``(N, *D)``, ``manifest`` (the settings), ``path`` and ``prediction`` of the teacher.

    Raises:
        ValueError: if the folder has no manifest, or a shard is missing or damaged (the message
            says to rerun :func:`generate_pairs`, which completes it).
    """

    def __init__(self, out_dir):
        out_dir = os.fspath(out_dir)
        m = _read_manifest(out_dir)
        if m is None:
            raise ValueError(f"{out_dir!r} holds no reflow pairs (no {MANIFEST}); create them with generate_pairs")
        noise, endpoint = [], []
        for i in range(m["num_shards"]):
            why: list = []
            obj = _load_shard(out_dir, m, i, why)
            if obj is None:
                raise ValueError(
                    f"shard {i} ({_shard_name(i)}) in {out_dir!r} is missing or damaged ({why[0] if why else 'unreadable'}); "
                    "rerun generate_pairs with the same arguments to complete the cache"
                )
            noise.append(obj["noise"])
            endpoint.append(obj["endpoint"])
        self.out_dir, self.manifest = out_dir, m
        self.noise, self.endpoint = torch.cat(noise), torch.cat(endpoint)
        self.path = path_from_config(m["path"])
        self.prediction = Prediction.parse(m["prediction"])
        self.generated: list[int] = []

    def __len__(self) -> int:
        return self.noise.shape[0]

    def __getitem__(self, i):
        return self.noise[i], self.endpoint[i]


def pair_loader(pairs, *, batch_size: int, shuffle: bool = True, generator: torch.Generator | None = None,
                drop_last: bool = False, num_workers: int = 0) -> DataLoader:
    """A :class:`~torch.utils.data.DataLoader` of ``(noise, endpoint)`` batches over a :class:`PairDataset` or its folder."""
    ds = pairs if isinstance(pairs, PairDataset) else PairDataset(pairs)
    return DataLoader(ds, batch_size=check_int(batch_size, "batch_size"), shuffle=shuffle, generator=generator,
                      drop_last=drop_last, num_workers=num_workers)


# --- reflow loss --------------------------------------------------------------------------------------
def _check_pairs(noise, endpoint):
    check_data(endpoint, "endpoint")
    check_batch(noise, "noise")
    check_same_shape(endpoint, noise, "endpoint", "noise")
    check_finite(noise, "noise")


def reflow_loss(student, *, noise: Tensor, endpoint: Tensor, t: Tensor, path: Path, prediction,
                weighting: Weighting | str | None = None, metric="l2", cond=None) -> Tensor:
    r"""Per-sample rectified-flow loss on fixed pairs: ``data = endpoint``, ``noise`` = its start noise.

    ``x_t = α(t)·endpoint + σ(t)·noise``; the student's output is regressed onto the target of its
    prediction kind (the velocity ``α'·endpoint + σ'·noise`` for ``"velocity"``).

    Args:
        student: ``student(x_t, t[, cond])`` predicting ``prediction``.
        noise: ``(B, *D)`` the pairs' noise; endpoint: ``(B, *D)`` the teacher's endpoints.
        t: ``(B,)`` times.
        path, prediction: the student's path and prediction kind.
        weighting, metric: as in :func:`~flowgen.objectives.prediction_loss`.
        cond: optional condition.

    Returns:
        ``(B,)`` per-sample losses.

    References:
        Liu et al. 2022, arXiv:2209.03003, eq. (1).
    """
    return _reflow(student, noise=noise, endpoint=endpoint, t=t, path=path, prediction=prediction, weighting=weighting,
                   metric=metric, cond=cond).per_sample


def _reflow(student, *, noise, endpoint, t, path, prediction, weighting, metric, cond) -> DistillOutput:
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    _check_pairs(noise, endpoint)
    check_time(t, "t", batch=endpoint.shape[0], device=endpoint.device)
    t64 = t.detach().to(torch.float64)
    a, s = path._alpha(t64), path._sigma(t64)
    x_t = expand_like(a, endpoint).to(endpoint.dtype) * endpoint + expand_like(s, endpoint).to(endpoint.dtype) * noise
    prediction = Prediction.parse(prediction)
    weighting = get_weighting(weighting or UniformWeight())
    metric = get_metric(metric)
    check_model(student, "student")
    pred = call_model(student, x_t, t, cond)
    # the functional loss of flowgen.objectives.prediction_loss, with its checks: a non-finite student output
    # is returned as a non-finite loss (for the training loop to stop or skip), anything else is named
    per_sample = _loss(pred, endpoint, noise, t, path, prediction, weighting, metric)
    check_loss(per_sample, (pred,), (("endpoint", endpoint), ("noise", noise)), t, path, f"the {prediction.value!r} reflow loss",
               lambda tt: _loss_singular(path, tt, prediction, weighting))
    return DistillOutput(loss=per_sample.mean(), per_sample=per_sample, t=t, x_t=x_t, pred=pred, target=endpoint)


class Reflow:
    """The reflow loss with its time draws, and the round counter of the k-rectified flow.

    Round ``k`` (starting at 1) trains the ``k``-rectified flow on pairs generated by the
    ``(k − 1)``-rectified flow (round 1: by the teacher). The procedure::

        pairs = generate_pairs(model_{k-1}, path, ..., out_dir=f"pairs_round{k}")
        for noise, endpoint in pair_loader(pairs, batch_size=...):
            reflow.loss(student, noise, endpoint).loss.backward(); ...
        reflow.next_round()

    Args:
        path: the path (rectified flow in the paper; any path works).
        prediction: the student's prediction kind (default velocity).
        time: time distribution (instance or name); uniform on ``[t_min, t_max]`` by default.
        weighting, metric: as in :func:`reflow_loss`.
        round: the current round ``k >= 1`` (for resuming).

    References:
        Liu et al. 2022, arXiv:2209.03003, Sec. 2.2 (k-rectified flow).
    """

    def __init__(self, path: Path, prediction="velocity", *, time: TimeDistribution | str = "uniform",
                 weighting: Weighting | str | None = None, metric="l2", round: int = 1):
        if not isinstance(path, Path):
            raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
        self.path = path
        self.prediction = Prediction.parse(prediction)
        self.time = get_time_distribution(time)
        self.weighting = weighting
        self.metric = get_metric(metric)
        self.round = check_int(round, "round")

    def loss(self, student, noise: Tensor, endpoint: Tensor, cond=None, *, generator: torch.Generator | None = None) -> DistillOutput:
        """Draw ``t`` and evaluate the reflow loss on a batch of pairs ``(B, *D)``."""
        _check_pairs(noise, endpoint)
        gen_dev = generator.device if generator is not None else endpoint.device
        t = self.time.sample(endpoint.shape[0], path=self.path, generator=generator, device=gen_dev,
                             dtype=time_dtype(endpoint)).to(endpoint.device)
        return _reflow(student, noise=noise, endpoint=endpoint, t=t, path=self.path, prediction=self.prediction,
                       weighting=self.weighting, metric=self.metric, cond=cond)

    def __call__(self, student, noise: Tensor, endpoint: Tensor, cond=None, **kwargs) -> Tensor:
        """Scalar loss (see :meth:`loss`)."""
        return self.loss(student, noise, endpoint, cond, **kwargs).loss

    def next_round(self) -> int:
        """Advance ``k`` (after training round ``k``); returns the new round."""
        self.round += 1
        return self.round

    def state_dict(self) -> dict:
        """Plain-data state (the round ``k``, path config and prediction) for checkpoints."""
        return {"round": self.round, "path": path_to_config(self.path), "prediction": self.prediction.value}

    def student_generator(self, student, **kwargs):
        """The trained k-rectified flow as a :class:`~flowgen.distill.ReflowGenerator` (Euler, any number of steps)."""
        from .generators import ReflowGenerator

        return ReflowGenerator(student, self.path, self.prediction, **kwargs)

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (resume at round ``k``)."""
        if not isinstance(state, dict) or "round" not in state:
            raise ValueError(f"reflow state must be a dict with a 'round' key, got {state!r}")
        self.round = check_int(state["round"], "state['round']")


# --- one-step distillation -----------------------------------------------------------------------------
def _interval(path: Path, t_max, t_min) -> tuple[float, float]:
    t_max = float(path.t_max if t_max is None else t_max)
    t_min = float(path.t_min if t_min is None else t_min)
    if not (0.0 <= t_min < t_max <= 1.0):
        raise ValueError(f"t_min and t_max must satisfy 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    return t_max, t_min


def one_step_distillation_loss(student, *, noise: Tensor, endpoint: Tensor, path: Path, prediction="velocity", metric="l2",
                               t_max: float | None = None, t_min: float | None = None, cond=None) -> Tensor:
    r"""Per-sample 1-step distillation loss: ``d(x̂, endpoint)`` with ``x̂`` the student's one Euler step.

    ``x̂ = x_T + (t_min − t_max)·v_θ(x_T, t_max)``, ``x_T = σ(t_max)·noise``, where ``v_θ`` is the
    student's velocity (any prediction kind, converted by the samplers' adapter); on rectified
    flow ``x̂ = noise − v_θ(noise, 1)``. The same map is the 1-step sampler of
    :class:`~flowgen.distill.ReflowGenerator`.

    Args:
        student: ``student(x_t, t[, cond])`` predicting ``prediction``.
        noise, endpoint: ``(B, *D)`` pairs.
        path: the path.
        prediction: the student's prediction kind.
        metric: ``"l2"`` or ``"pseudo_huber"`` or a callable ``(B, *D) → (B,)``.
        t_max, t_min: the step's ends (default the path's).
        cond: optional condition.

    Returns:
        ``(B,)`` per-sample losses.

    References:
        Liu et al. 2022, arXiv:2209.03003, Sec. 2.3 (distillation, eq. 7).
    """
    return _one_step(student, noise=noise, endpoint=endpoint, path=path, prediction=prediction, metric=metric,
                     t_max=t_max, t_min=t_min, cond=cond).per_sample


def _sigma_at(path: Path, t: float) -> float:
    return float(path._sigma(torch.tensor([t], dtype=torch.float64))[0])


def _one_step(student, *, noise, endpoint, path, prediction, metric, t_max, t_min, cond, sigma_max=None) -> DistillOutput:
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    _check_pairs(noise, endpoint)
    t_max, t_min = _interval(path, t_max, t_min)
    sigma_max = _sigma_at(path, t_max) if sigma_max is None else sigma_max
    check_model(student, "student")
    x_T = sigma_max * noise
    b = noise.shape[0]
    t = torch.full((b,), t_max, dtype=time_dtype(noise), device=noise.device)
    pred = _step(student, path, x_T, t=t, s=torch.full_like(t, t_min), prediction=prediction, method="euler", cond=cond)
    diff = pred - endpoint
    if diff.dtype not in (torch.float32, torch.float64):
        diff = diff.float()
    per_sample = get_metric(metric)(diff)
    check_loss(per_sample, (pred,), (("endpoint", endpoint), ("noise", noise)), t, path, "the one-step distillation loss")
    return DistillOutput(loss=per_sample.mean(), per_sample=per_sample, t=t, x_t=x_T, pred=pred, target=endpoint)


class OneStepDistillation:
    """:func:`one_step_distillation_loss` as an object (path, prediction, metric and interval fixed)."""

    def __init__(self, path: Path, prediction="velocity", *, metric="l2", t_max: float | None = None, t_min: float | None = None):
        if not isinstance(path, Path):
            raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
        self.path = path
        self.prediction = Prediction.parse(prediction)
        self.metric = get_metric(metric)
        self.t_max, self.t_min = _interval(path, t_max, t_min)
        self._sigma_max = _sigma_at(path, self.t_max)

    def loss(self, student, noise: Tensor, endpoint: Tensor, cond=None) -> DistillOutput:
        """Evaluate on a batch of pairs ``(B, *D)``; see :func:`one_step_distillation_loss`."""
        return _one_step(student, noise=noise, endpoint=endpoint, path=self.path, prediction=self.prediction,
                         metric=self.metric, t_max=self.t_max, t_min=self.t_min, cond=cond, sigma_max=self._sigma_max)

    def __call__(self, student, noise: Tensor, endpoint: Tensor, cond=None) -> Tensor:
        return self.loss(student, noise, endpoint, cond).loss

    def student_generator(self, student, **kwargs):
        """The distilled student as a 1-step :class:`~flowgen.distill.ReflowGenerator` (the map this loss trains)."""
        from .generators import ReflowGenerator

        kwargs.setdefault("supported_steps", (1,))
        return ReflowGenerator(student, self.path, self.prediction, t_max=self.t_max, t_min=self.t_min, **kwargs)


# --- straightness ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrajectoryStats:
    """Straightness and normalised path energy of a model's ODE trajectories.

    Attributes:
        straightness: scalar ``S = E_i[S_i]``.
        energy: scalar ``E = E_i[E_i]`` (``≥ 1``; 1 for straight constant-speed trajectories).
        per_sample_straightness: ``(B,)`` ``S_i = Σ_j Δτ_j ‖Δ_i − ΔZ_ij/Δτ_j‖²``.
        per_sample_energy: ``(B,)`` ``E_i = Σ_j ‖ΔZ_ij‖²/Δτ_j / ‖Δ_i‖²``.
        start, end: ``(B, *D)`` ``Z_0`` and ``Z_1`` (``Δ_i = Z_1 − Z_0``).
    """

    straightness: Tensor
    energy: Tensor
    per_sample_straightness: Tensor
    per_sample_energy: Tensor
    start: Tensor
    end: Tensor


def trajectory_stats(model, path: Path, noise: Tensor, *, steps: int, prediction="velocity", t_max: float | None = None,
                     t_min: float | None = None, cond=None) -> TrajectoryStats:
    r"""Liu et al.'s straightness and the normalised path energy along the model's own Euler trajectory.

    The trajectory starts at ``σ(t_max)·noise`` and takes ``steps`` Euler steps on a uniform grid to
    ``t_min`` (the samplers' :func:`~flowgen.samplers.integrate`). With ``τ`` the normalised time,
    ``ΔZ_j`` the ``j``-th step's displacement and ``Δτ_j = 1/steps``:

    ``S_i = Σ_j Δτ_j ‖(Z_1 − Z_0) − ΔZ_j/Δτ_j‖²``, ``E_i = Σ_j (‖ΔZ_j‖²/Δτ_j) / ‖Z_1 − Z_0‖²``,

    the Riemann sums of ``∫₀¹ ‖(Z_1 − Z_0) − Ż_τ‖² dτ`` and ``∫₀¹ ‖Ż_τ‖² dτ / ‖Z_1 − Z_0‖²``
    (squared norms summed over all event dimensions).

    Args:
        model: ``model(x_t, t[, cond])`` predicting ``prediction`` (default a velocity field).
        path: the path.
        noise: ``(B, *D)`` standard normal noise.
        steps: number of Euler steps.
        prediction: the model's prediction kind.
        t_max, t_min: the interval (default the path's).
        cond: optional condition.

    Returns:
        :class:`TrajectoryStats`.

    References:
        Liu et al. 2022, arXiv:2209.03003, Sec. 2.2 (straightness ``S(Z)``, eq. 4).
    """
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    check_data(noise, "noise")
    steps = check_int(steps, "steps")
    t_max, t_min = _interval(path, t_max, t_min)
    sigma_max = float(path._sigma(torch.tensor([t_max], dtype=torch.float64))[0])
    start = sigma_max * noise
    states = [start]
    integrate(model, path, start, prediction=prediction, method="euler", grid=uniform_grid(steps, t_max, t_min), cond=cond,
              callback=lambda i, t_next, x: states.append(x.clone()))
    end = states[-1]
    flat = lambda x: x.reshape(x.shape[0], -1).to(torch.float64)  # noqa: E731
    chord = flat(end) - flat(start)
    dtau = 1.0 / steps
    s_i = torch.zeros(noise.shape[0], dtype=torch.float64, device=noise.device)
    kin = torch.zeros_like(s_i)
    for j in range(steps):
        dz = flat(states[j + 1]) - flat(states[j])
        s_i = s_i + dtau * (chord - dz / dtau).pow(2).sum(1)
        kin = kin + dz.pow(2).sum(1) / dtau
    e_i = kin / chord.pow(2).sum(1)
    return TrajectoryStats(straightness=s_i.mean(), energy=e_i.mean(), per_sample_straightness=s_i, per_sample_energy=e_i,
                           start=start, end=end)


def straightness(model_velocity, path: Path, noise: Tensor, steps: int, **kwargs) -> float:
    """Liu et al.'s straightness ``S`` of ``model_velocity``'s trajectories from ``noise`` (see :func:`trajectory_stats`)."""
    return float(trajectory_stats(model_velocity, path, noise, steps=steps, **kwargs).straightness)


def path_energy(model_velocity, path: Path, noise: Tensor, steps: int, **kwargs) -> float:
    """Normalised path energy ``E[∫‖Ż‖² dτ / ‖Z_1 − Z_0‖²]`` (``≥ 1``, 1 iff straight); see :func:`trajectory_stats`."""
    return float(trajectory_stats(model_velocity, path, noise, steps=steps, **kwargs).energy)

