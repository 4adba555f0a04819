r"""Progressive distillation: halve (or divide by ``k``) the number of sampling steps each round.

A student with ``N`` DDIM steps on the grid ``t_0 = t_max > t_1 > … > t_N = t_min`` learns to
land, in ONE deterministic DDIM step ``t_i → t_{i+1}``, where TWO DDIM steps of the teacher
``t_i → t_{i+½} → t_{i+1}`` land (the teacher's grid has ``2N`` steps and the student's grid is
every second point of it). Then the student becomes the teacher and ``N`` halves, down to 1.
With a reduction ``factor`` ``k > 2`` one student step learns ``k`` teacher steps (the teacher's
grid has ``kN`` steps) and ``N`` falls ``k``-fold per round: fewer rounds, so fewer students whose
errors compound (Berthelot et al. 2023's TRACT distils in few such phases).

A DDIM step from ``x_t`` with a data estimate ``D`` (and the implied noise
``ε̂ = (x_t − α_t D)/σ_t``) is, on any path,

.. math::
    x_s = α_s D + σ_s \frac{x_t − α_t D}{σ_t}.

Given the two-step teacher endpoint ``x̃ = x_{t_{i+1}}``, the student's target is the data
estimate ``D̃`` that makes this single step land on ``x̃`` (Salimans & Ho 2022, eq. 8–10):

.. math::
    D̃ = \frac{x̃ − (σ_s/σ_t)\,x_t}{α_s − (σ_s/σ_t)\,α_t},

which for a final step to ``σ_s = 0`` is ``D̃ = x̃/α_s``: the formula covers it with
``σ_s/σ_t = 0``. The denominator is ``(α_s σ_t − σ_s α_t)/σ_t > 0`` because the log-SNR is
strictly decreasing. ``D̃`` (with the noise it implies at ``x_t``) is then written in the student's
own prediction kind through :func:`~flowgen.parameterization.convert_with_coefficients`, so a
student predicting ε, v, velocity or score gets the target whose DDIM step is the same.

The loss weights the data-space error by the paper's truncated SNR ``max(SNR, 1)``
(:class:`TruncatedSNRWeight`), expressed in the student's prediction space through flowgen's
weighting convention (:mod:`flowgen.objectives.weighting`).

References:
    Salimans & Ho 2022, arXiv:2202.00512, Algorithm 2 and eq. (8)–(10) (target), Sec. 4
    (truncated-SNR weighting); Song et al. 2021, arXiv:2010.02502, eq. (12) (DDIM);
    Berthelot et al. 2023, arXiv:2303.04248 (TRACT: ``k`` teacher steps per student step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_batch, check_finite, check_same_shape, check_time, checks_values, expand_like
from ..objectives.metrics import get_metric
from ..objectives.objective import call_model
from ..objectives.weighting import UniformWeight, Weighting, get_weighting
from ..parameterization import Prediction, convert_with_coefficients, singular_at
from ..paths import path_to_config
from ..paths.base import Path
from ..samplers import Grid, check_grid, make_grid, step
from ..samplers.steps import _step
from ._common import (
    DistillOutput,
    check_data,
    check_int,
    check_loss,
    check_model,
    check_probability,
    noised,
    randint,
    randn,
    resolve_teacher,
    time_dtype,
)

__all__ = [
    "TruncatedSNRWeight",
    "progressive_target",
    "progressive_distillation_loss",
    "ProgressiveDistillation",
]


class TruncatedSNRWeight(Weighting):
    """Data-space weight ``max(SNR(t), 1)`` ("truncated SNR"), as in progressive distillation.

    For an ε-prediction model this is ``max(‖x − x̂‖², ‖ε − ε̂‖²)``-style weighting; in any other
    prediction space it is divided by that space's error scale (see
    :func:`~flowgen.parameterization.prediction_error_scale`), so the loss value is the same
    weighted data-space error whatever the student predicts.

    References:
        Salimans & Ho 2022, arXiv:2202.00512, Sec. 4 ("truncated SNR weighting").
    """

    def data_weight(self, path: Path, t: Tensor) -> Tensor:
        return torch.clamp(torch.exp(path._log_snr(t)), min=1.0)


def _mid_columns(t_mid: Tensor, batch: int) -> list[Tensor]:
    """``t_mid`` as a list of ``(B,)`` columns: ``(B,)`` is one intermediate time, ``(B, k − 1)`` several."""
    if not isinstance(t_mid, Tensor):
        raise TypeError(f"t_mid must be a tensor of shape (B,) or (B, k - 1), got {type(t_mid).__name__}")
    if t_mid.dim() == 2 and t_mid.shape[0] == batch and t_mid.shape[1] >= 1:
        return list(t_mid.unbind(1))
    if t_mid.dim() == 2:
        raise ValueError(f"t_mid must have shape (B,) or (B, k - 1) with B = {batch} and k >= 2, got {tuple(t_mid.shape)}")
    return [t_mid]


def _check_times(x_t: Tensor, t: Tensor, t_mid: Tensor, t_next: Tensor) -> list[Tensor]:
    """Validate the times; return the teacher's times ``[t, t_mid columns…, t_next]`` as ``(B,)`` tensors."""
    check_batch(x_t, "x_t")
    if x_t.dim() < 2:
        raise ValueError(f"x_t must have shape (B, *D) with at least one event dimension, got {tuple(x_t.shape)}")
    batch = x_t.shape[0]
    mids = _mid_columns(t_mid, batch)
    for name, v in (("t", t), *(("t_mid", m) for m in mids), ("t_next", t_next)):
        check_time(v, name, batch=batch, device=x_t.device)
    times = [t, *mids, t_next]
    if checks_values() and not all(bool((a > b).all()) for a, b in zip(times[:-1], times[1:])):
        raise ValueError("times must satisfy t > t_mid > t_next for every sample, t_mid's columns decreasing "
                         "(generation runs from noise at t to data)")
    return times


def progressive_target(teacher, *, x_t: Tensor, t: Tensor, t_mid: Tensor, t_next: Tensor, path: Path,
                       teacher_prediction, student_prediction, cond=None) -> Tensor:
    r"""The student's target (in its own prediction kind) for one DDIM step to match two (or ``k``) teacher DDIM steps.

    One student DDIM step ``t → t_next`` from ``x_t`` with this prediction lands exactly where
    the teacher's two DDIM steps ``t → t_mid → t_next`` land (up to rounding): see the module
    docstring for the closed form, including the final step to ``σ(t_next) = 0``. With a
    ``(B, k − 1)`` ``t_mid`` the teacher takes ``k`` DDIM steps through its columns in order.

    Args:
        teacher: frozen ``teacher(x_t, t[, cond])`` predicting ``teacher_prediction``.
        x_t: ``(B, *D)`` noisy inputs at ``t``.
        t: ``(B,)`` start times.
        t_mid: ``(B,)`` the teacher's intermediate time, ``t > t_mid > t_next``; or ``(B, k − 1)``
            intermediate times, decreasing along each row, for ``k`` teacher steps.
        t_next: ``(B,)`` end times.
        path: the path both models live on.
        teacher_prediction: what the teacher predicts (:class:`~flowgen.parameterization.Prediction` or value).
        student_prediction: what the student predicts; the target is returned in this kind.
        cond: optional condition for the teacher.

    Returns:
        ``(B, *D)`` target in ``x_t``'s dtype, without gradient.

    Raises:
        ValueError: times out of order or out of range, a singular teacher evaluation, a teacher
            output of the wrong shape.

    References:
        Salimans & Ho 2022, arXiv:2202.00512, Algorithm 2, eq. (8)–(10); Berthelot et al. 2023,
        arXiv:2303.04248 (``k`` steps).
    """
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    check_model(teacher, "teacher")
    tp = Prediction.parse(teacher_prediction, "teacher_prediction")
    sp = Prediction.parse(student_prediction, "student_prediction")
    times = _check_times(x_t, t, t_mid, t_next)
    check_finite(x_t, "x_t")
    with torch.no_grad():
        x = x_t = x_t.detach()
        for a, b in zip(times[:-1], times[1:]):
            x = step(teacher, path, x, t=a, s=b, prediction=tp, method="ddim", cond=cond)
        return _solve_target(x_t, x, t, t_next, path, sp)


def _solve_target(x_t: Tensor, x_end: Tensor, t: Tensor, t_next: Tensor, path: Path, sp: Prediction) -> Tensor:
    """``D̃ = (x̃ − (σ_s/σ_t) x_t)/(α_s − (σ_s/σ_t) α_t)`` (coefficients in float64), then converted to ``sp``."""
    t64, s64 = t.detach().to(torch.float64), t_next.detach().to(torch.float64)
    a_t, s_t = path._alpha(t64), path._sigma(t64)
    a_s, s_s = path._alpha(s64), path._sigma(s64)
    ratio = s_s / s_t
    c_end = 1.0 / (a_s - ratio * a_t)
    c_x = -ratio * c_end
    data = expand_like(c_end, x_t).to(x_t.dtype) * x_end + expand_like(c_x, x_t).to(x_t.dtype) * x_t
    if sp is Prediction.DATA:
        return data
    coefs = (path._alpha(t64), path._sigma(t64), path._d_alpha(t64), path._d_sigma(t64))
    coefs = tuple(expand_like(c, x_t).to(x_t.dtype) for c in coefs)
    return convert_with_coefficients(data, Prediction.DATA, sp, x_t, *coefs)


def _weighted(pred: Tensor, target: Tensor, t: Tensor, path: Path, sp: Prediction, weighting: Weighting, metric) -> Tensor:
    diff = pred - target
    if diff.dtype not in (torch.float32, torch.float64):
        diff = diff.float()
    per_sample = metric(diff)
    if isinstance(weighting, UniformWeight):
        return per_sample
    w = weighting(path, t.detach().to(torch.float64), sp)
    return w.to(per_sample.dtype) * per_sample


def progressive_distillation_loss(student, teacher, *, data: Tensor, noise: Tensor, t: Tensor, t_mid: Tensor, t_next: Tensor,
                                  path: Path, teacher_prediction, student_prediction, weighting: Weighting | str | None = None,
                                  metric="l2", cond=None) -> Tensor:
    r"""Per-sample progressive-distillation loss with all randomness given.

    ``x_t = α(t)·data + σ(t)·noise``; the student's output at ``(x_t, t)`` is regressed onto
    :func:`progressive_target`, weighted by ``weighting`` (default :class:`TruncatedSNRWeight`,
    i.e. ``max(SNR, 1)·‖D̂ − D̃‖²`` in data space).

    Args:
        student: trainable ``student(x_t, t[, cond])`` predicting ``student_prediction``.
        teacher: frozen teacher predicting ``teacher_prediction``.
        data: ``(B, *D)`` clean samples.
        noise: ``(B, *D)`` standard normal noise.
        t, t_mid, t_next: ``(B,)`` times with ``t > t_mid > t_next`` (``t_mid`` may be ``(B, k − 1)``
            for ``k`` teacher steps, see :func:`progressive_target`).
        path: the path.
        teacher_prediction, student_prediction: prediction kinds.
        weighting: a :class:`~flowgen.objectives.Weighting` or name; truncated SNR by default.
        metric: ``"l2"`` (mean squared error), ``"pseudo_huber"`` or a callable ``(B, *D) → (B,)``.
        cond: optional condition for both models.

    Returns:
        ``(B,)`` per-sample losses.

    References:
        Salimans & Ho 2022, arXiv:2202.00512, Algorithm 2.
    """
    return _progressive(student, teacher, data=data, noise=noise, t=t, t_mid=t_mid, t_next=t_next, path=path,
                        teacher_prediction=teacher_prediction, student_prediction=student_prediction,
                        weighting=weighting, metric=metric, cond=cond).per_sample


def _progressive(student, teacher, *, data, noise, t, t_mid, t_next, path, teacher_prediction, student_prediction,
                 weighting, metric, cond, x_t=None) -> DistillOutput:
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    check_model(student, "student")
    check_data(data)
    check_batch(noise, "noise")
    check_same_shape(data, noise, "data", "noise")
    check_finite(noise, "noise")
    sp = Prediction.parse(student_prediction, "student_prediction")
    weighting = TruncatedSNRWeight() if weighting is None else get_weighting(weighting)
    metric = get_metric(metric)
    _check_times(data, t, t_mid, t_next)
    if x_t is None:
        x_t = noised(data, noise, t, path)
    target = progressive_target(teacher, x_t=x_t, t=t, t_mid=t_mid, t_next=t_next, path=path,
                                teacher_prediction=teacher_prediction, student_prediction=sp, cond=cond)
    pred = call_model(student, x_t, t, cond)
    per_sample = _weighted(pred, target, t, path, sp, weighting, metric)
    check_loss(per_sample, (pred,), (("data", data), ("noise", noise)), t, path, "the progressive-distillation loss",
               lambda tt: ~torch.isfinite(weighting(path, tt, sp)))
    return DistillOutput(loss=per_sample.mean(), per_sample=per_sample, t=t, x_t=x_t, pred=pred, target=target)


class ProgressiveDistillation:
    """Progressive distillation as a loss object: holds the teacher, the round and the grids, draws the times.

    Round ``r`` trains a student with ``N`` steps on ``student_grid`` (``N + 1`` times) against a
    teacher running ``2N`` DDIM steps on ``teacher_grid`` (``2N + 1`` times; the student grid is
    its every second point). :meth:`next_round` halves ``N``: the new teacher grid is the old
    student grid and the new teacher is the trained student. With ``factor=k`` the teacher runs
    ``kN`` steps, the student grid is every ``k``-th point, and a round divides ``N`` by ``k``.

    Args:
        teacher: frozen ``teacher(x_t, t[, cond])``. Its ``.path``/``.prediction`` are used when
            ``path``/``teacher_prediction`` are not given.
        student_steps: ``N``, the student's number of steps in the first round (``>= 1``; halving
            needs ``N`` to be a power of two to reach 1).
        path: the path (default ``teacher.path``).
        teacher_prediction: what the teacher predicts (default ``teacher.prediction``).
        student_prediction: what the student predicts (default: as the teacher, since the student
            starts from the teacher's weights).
        grid: the teacher's grid for this round: a grid name (``"uniform"`` in ``t``, as in the
            paper; ``"karras"``, ``"log_snr"``, ``"shifted"``) built with ``kN`` steps on
            ``[t_min, t_max]``, or an explicit strictly decreasing grid of ``kN + 1`` times.
        t_max, t_min: the interval of a named grid (default the path's).
        weighting: loss weighting (default :class:`TruncatedSNRWeight`).
        metric: ``"l2"``, ``"pseudo_huber"`` or a callable ``(B, *D) → (B,)``.
        event_shape: if given, data must have shape ``(B, *event_shape)``.
        factor: ``k``, the teacher's DDIM steps per student step in the first round (2, the
            paper's, by default); :meth:`next_round` may change it per round.
        trajectory_fraction: the share of each batch whose student inputs are states of the round
            teacher's own DDIM trajectories from noise (at the drawn student grid time) instead of
            noised data ``α(t)·data + σ(t)·noise`` (0, the paper's, by default): the inputs the few-step
            sampler meets when the teacher's ODE marginals differ from the noised data's (training on
            teacher trajectories as Luhman & Luhman 2021). Costs up to ``k(N − 1)`` teacher
            evaluations per such sample; settable between rounds.

    Raises:
        ValueError: missing teacher metadata, a grid of the wrong size, or a grid on which the
            teacher's or the student's DDIM step would divide by zero.

    Example:
        >>> import torch, flowgen
        >>> from flowgen.testing import GaussianData
        >>> path = flowgen.paths.Cosine()
        >>> teacher = GaussianData(torch.zeros(2)).model(path, "v")
        >>> pd = ProgressiveDistillation(teacher, student_steps=4, t_max=0.999)
        >>> out = pd.loss(lambda x, t: torch.zeros_like(x), torch.randn(8, 2))
        >>> out.per_sample.shape
        torch.Size([8])

    References:
        Salimans & Ho 2022, arXiv:2202.00512, Algorithm 2; Berthelot et al. 2023, arXiv:2303.04248 (``factor > 2``).
    """

    def __init__(self, teacher, *, student_steps: int, path: Path | None = None, teacher_prediction=None,
                 student_prediction=None, grid="uniform", t_max: float | None = None, t_min: float | None = None,
                 weighting: Weighting | str | None = None, metric="l2", event_shape: tuple | None = None, factor: int = 2,
                 trajectory_fraction: float = 0.0):
        self.path, self.teacher_prediction = resolve_teacher(teacher, path, teacher_prediction)
        self.teacher = teacher
        self.student_prediction = (self.teacher_prediction if student_prediction is None
                                   else Prediction.parse(student_prediction, "student_prediction"))
        n = check_int(student_steps, "student_steps")
        k = check_int(factor, "factor", low=2)
        if grid is None or isinstance(grid, (str, Grid)):
            g = make_grid("uniform" if grid is None else grid, k * n, self.path, t_max=t_max, t_min=t_min)
        else:
            if t_max is not None or t_min is not None:
                raise ValueError("pass either an explicit grid or t_max/t_min, not both (the grid's ends are t_max and t_min)")
            g = check_grid(grid)
            if g.numel() != k * n + 1:
                raise ValueError(
                    f"grid must hold {k}*student_steps + 1 = {k * n + 1} times (the teacher's grid of {k}N steps, "
                    f"factor={k}), got {g.numel()}"
                )
        self.round = 0
        self.student_steps = n
        self.factor = k
        self.trajectory_fraction = check_probability(trajectory_fraction, "trajectory_fraction")
        self.teacher_grid = g
        self.weighting = TruncatedSNRWeight() if weighting is None else get_weighting(weighting)
        self.metric = get_metric(metric)
        self.event_shape = None if event_shape is None else tuple(event_shape)
        self._check_grids()

    # --- grids -----------------------------------------------------------------------------------
    @property
    def student_grid(self) -> Tensor:
        """``(N + 1,)`` float64: every :attr:`factor`-th (by default every second) point of :attr:`teacher_grid`."""
        return self.teacher_grid[::self.factor].clone()

    def _check_grids(self) -> None:
        for who, pred, grid in (("teacher", self.teacher_prediction, self.teacher_grid[:-1]),
                                ("student", self.student_prediction, self.student_grid[:-1])):
            # a DDIM step needs the data and the noise implied by the prediction
            bad = singular_at(self.path, grid, src=pred, dst=Prediction.DATA) | singular_at(self.path, grid, src=pred, dst=Prediction.NOISE)
            if bool(bad.any()):
                tb = float(grid[bad.nonzero()[0, 0]])
                raise ValueError(
                    f"the {who}'s DDIM step needs a {pred.value!r} prediction converted to data and noise at t={tb:.6g}, "
                    f"which is singular on {type(self.path).__name__}; choose t_max/t_min or a grid that avoids it "
                    f"(e.g. t_max < 1 for noise/score predictions on rectified flow or cosine)"
                )

    # --- the loss ----------------------------------------------------------------------------------
    def draw(self, data: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Draw ``(t, t_mid, t_next, noise)``: a uniform student interval ``i`` per sample and fresh noise.

        ``t = student_grid[i]``, ``t_mid = teacher_grid[2i + 1]``, ``t_next = student_grid[i + 1]``,
        each ``(B,)`` in float32 (float64 for float64 data); noise ``(B, *D)``. With ``factor = k > 2``,
        ``t_mid`` is ``(B, k − 1)``: ``teacher_grid[ki + 1 … ki + k − 1]``.
        """
        return self._draw(data, generator)[1:]

    def _draw(self, data: Tensor, generator) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """:meth:`draw` with the CPU interval index ``i`` first."""
        check_data(data, event_shape=self.event_shape)
        b = data.shape[0]
        i = randint(self.student_steps, b, device=torch.device("cpu"), generator=generator)
        g, k = self.teacher_grid, self.factor
        dt = time_dtype(data)
        t = g[k * i].to(device=data.device, dtype=dt)
        mid = k * i[:, None] + torch.arange(1, k, device=i.device)
        t_mid = g[mid[:, 0] if k == 2 else mid].to(device=data.device, dtype=dt)
        t_next = g[k * i + k].to(device=data.device, dtype=dt)
        noise = randn(data.shape, like=data, generator=generator)
        return i, t, t_mid, t_next, noise

    def trajectory_states(self, noise: Tensor, i: Tensor, cond=None) -> Tensor:
        """The round teacher's DDIM states at ``student_grid[i]``, from ``σ(t_max)·noise`` (no gradient).

        Args:
            noise: ``(M, *D)`` standard normal noise.
            i: ``(M,)`` integer student-grid indices in ``[0, N)`` (on the CPU).
            cond: optional condition ``(M, …)`` for the teacher.

        Returns:
            ``(M, *D)``: sample ``m`` after ``k·i[m]`` teacher DDIM steps on :attr:`teacher_grid`,
            where the sampler (and :meth:`student_generator`'s first ``i[m]`` steps, if the student
            matched the teacher) would be.
        """
        g, k = self.teacher_grid, self.factor
        dt = time_dtype(noise)
        m = noise.shape[0]
        x = float(self.path._sigma(g[:1])[0]) * noise
        states = [x]
        with torch.no_grad():
            for j in range(int(i.max()) if m else 0):
                for step_ in range(k):
                    a, b = g[j * k + step_], g[j * k + step_ + 1]
                    x = _step(self.teacher, self.path, x, t=torch.full((m,), float(a), dtype=dt, device=noise.device),
                              s=torch.full((m,), float(b), dtype=dt, device=noise.device), prediction=self.teacher_prediction,
                              method="ddim", cond=cond)
                states.append(x)
            return torch.stack(states)[i.to(noise.device), torch.arange(m, device=noise.device)]

    def loss(self, student, data: Tensor, cond=None, *, generator: torch.Generator | None = None) -> DistillOutput:
        """Evaluate the loss on a data batch.

        Args:
            student: trainable ``student(x_t, t[, cond])`` predicting :attr:`student_prediction`.
            data: ``(B, *D)`` clean samples.
            cond: optional condition for both models.
            generator: RNG for the interval index and the noise (CPU or ``data``'s device).

        Returns:
            :class:`~flowgen.distill.DistillOutput` (``.loss`` scalar, ``.per_sample`` ``(B,)``).
        """
        i, t, t_mid, t_next, noise = self._draw(data, generator)
        x_t = None
        m = int(round(self.trajectory_fraction * data.shape[0]))
        if m:  # the first m samples start from the teacher's trajectories, the rest from noised data
            c = cond[:m] if isinstance(cond, Tensor) else cond
            x_t = torch.cat([self.trajectory_states(noise[:m], i[:m], c).to(data.dtype),
                             noised(data[m:], noise[m:], t[m:], self.path)])
        return _progressive(student, self.teacher, data=data, noise=noise, t=t, t_mid=t_mid, t_next=t_next, path=self.path,
                            teacher_prediction=self.teacher_prediction, student_prediction=self.student_prediction,
                            weighting=self.weighting, metric=self.metric, cond=cond, x_t=x_t)

    def __call__(self, student, data: Tensor, cond=None, *, generator: torch.Generator | None = None) -> Tensor:
        """Scalar loss (see :meth:`loss`)."""
        return self.loss(student, data, cond, generator=generator).loss

    # --- rounds --------------------------------------------------------------------------------
    @property
    def rounds_left(self) -> int:
        """How many more halvings reach one step (``log2 N`` for a power of two, else the count until N is odd)."""
        n, k = self.student_steps, 0
        while n > 1 and n % 2 == 0:
            n //= 2
            k += 1
        return k

    def next_round(self, teacher=None, *, factor: int = 2) -> None:
        """Start the next round: ``N ← N/2`` (``N/factor``), the teacher grid becomes the old student grid.

        The new teacher is the student just trained: pass it as ``teacher`` (a frozen copy), or
        copy the student's weights into the module already held as :attr:`teacher`
        (``pd.teacher.load_state_dict(student.state_dict())``) before or after this call. The
        teacher's prediction kind becomes the student's.

        Args:
            teacher: the new round's teacher (see above).
            factor: ``k``, the new round's teacher steps per student step (2 by default).

        Raises:
            ValueError: if ``N`` is 1 (distillation finished) or not divisible by ``factor``.
        """
        n = self.student_steps
        k = check_int(factor, "factor", low=2)
        if n == 1:
            raise ValueError("student_steps is already 1: progressive distillation is finished")
        if n % k:
            what = "odd and cannot be halved; start from a power of two" if k == 2 else f"not divisible by factor={k}"
            raise ValueError(f"student_steps={n} is {what}")
        if teacher is not None:
            if not callable(teacher):
                raise TypeError(f"teacher must be callable, got {type(teacher).__name__}")
            self.teacher = teacher
        self.teacher_grid = self.student_grid
        self.student_steps = n // k
        self.factor = k
        self.round += 1
        self.teacher_prediction = self.student_prediction
        self._check_grids()

    # --- checkpoint state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain-data state (round, N, grid, predictions, path config) for checkpoints.

        The teacher's weights are NOT included: from round 1 on the teacher is a previous student,
        so a checkpoint must also store the teacher module's ``state_dict()``.
        """
        try:
            path_cfg = path_to_config(self.path)
        except TypeError:  # pragma: no cover - resolve_teacher guarantees a Path
            path_cfg = None
        return {
            "round": self.round,
            "student_steps": self.student_steps,
            "factor": self.factor,
            "teacher_grid": [float(v) for v in self.teacher_grid.tolist()],
            "teacher_prediction": self.teacher_prediction.value,
            "student_prediction": self.student_prediction.value,
            "path": path_cfg,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (e.g. to resume in the middle of a round).

        Raises:
            ValueError: missing keys, inconsistent sizes, or a different path than this distiller's.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        missing = {"round", "student_steps", "teacher_grid", "teacher_prediction", "student_prediction"} - set(state)
        if missing:
            raise ValueError(f"progressive-distillation state is missing {sorted(missing)}")
        n = check_int(state["student_steps"], "state['student_steps']")
        r = check_int(state["round"], "state['round']", low=0)
        k = check_int(state.get("factor", 2), "state['factor']", low=2)  # checkpoints before factor existed: 2
        g = check_grid(state["teacher_grid"], "state['teacher_grid']")
        if g.numel() != k * n + 1:
            raise ValueError(f"state['teacher_grid'] has {g.numel()} times, expected {k}*student_steps + 1 = {k * n + 1}")
        cfg = state.get("path")
        if cfg is not None and cfg != path_to_config(self.path):
            raise ValueError(f"state was saved for path {cfg!r}, but this distiller uses {path_to_config(self.path)!r}")
        self.round, self.student_steps, self.factor, self.teacher_grid = r, n, k, g
        self.teacher_prediction = Prediction.parse(state["teacher_prediction"], "teacher_prediction")
        self.student_prediction = Prediction.parse(state["student_prediction"], "student_prediction")
        self._check_grids()

    def student_generator(self, student):
        """The trained student as a :class:`~flowgen.distill.ProgressiveGenerator` (DDIM on :attr:`student_grid`)."""
        from .generators import ProgressiveGenerator

        return ProgressiveGenerator(student, self.path, self.student_prediction, grid=self.student_grid)

    def __repr__(self) -> str:
        return (f"ProgressiveDistillation(round={self.round}, student_steps={self.student_steps}, factor={self.factor}, path={self.path!r}, "
                f"teacher_prediction={self.teacher_prediction.value!r}, student_prediction={self.student_prediction.value!r})")

