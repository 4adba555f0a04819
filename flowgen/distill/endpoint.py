r"""Endpoint distillation: train a few-step DDIM student through its whole sampler onto a teacher's ODE endpoints.

A progressive-distillation student learns each of its ``K`` DDIM steps from the round teacher's
steps on noised data; its errors add up over the rounds and the steps, and it never sees the
states its own sampler visits. Endpoint distillation fine-tunes it on the quantity that matters
(the distillation error): with pairs ``(z, x)`` of noise and the teacher's ODE endpoint
``x = Φ(z)`` (:func:`~flowgen.distill.generate_pairs`, e.g. with adaptive dopri5), the loss is

.. math::
    \ell(θ) = d\big(\mathrm{DDIM}^K_θ(σ(t_0)\,z),\; x\big),

the distance between the student's ``K``-step sample on its grid ``t_0 > t_1 > … > t_K`` and the
endpoint, back-propagated through all ``K`` evaluations. A later step can so learn to undo an
earlier step's error on the states the student itself visits. With ``K = 1`` it is the 1-step
distillation of Liu et al. (2022, Sec. 2.3) written with a DDIM step (on a rectified-flow path
the DDIM step is the Euler step); Luhman & Luhman (2021) distil a DDIM sampler into one step with
this loss. On the 8×8 digits' progressive ``K = 4`` students it took ``R_4`` from 1.16 to 1.07
(``benchmarks/progressive_diagnostics.py --end-to-end``; ``docs/distillation.md``).

References:
    Luhman & Luhman 2021, arXiv:2101.02388 (knowledge distillation of a DDIM sampler onto its
    endpoints); Liu et al. 2022, arXiv:2209.03003, Sec. 2.3; Salimans & Ho 2022, arXiv:2202.00512
    (the students this fine-tunes); Song et al. 2021, arXiv:2010.02502, eq. (12) (DDIM).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_batch, check_finite, check_same_shape
from ..objectives.metrics import get_metric
from ..parameterization import Prediction
from ..paths.base import Path
from ..samplers import check_grid, ddim_step
from ._common import DistillOutput, check_data, check_loss, check_model

__all__ = ["endpoint_distillation_loss", "EndpointDistillation"]


def check_student_grid(grid, path: Path, name: str = "grid") -> Tensor:
    """A student's DDIM grid ``t_0 > … > t_K`` (``K >= 1``) inside the path's ``[t_min, t_max]``, with ``σ > 0`` before its end.

    Returns:
        ``(K + 1,)`` float64 CPU tensor.

    Raises:
        ValueError: a grid :func:`~flowgen.samplers.check_grid` refuses, one outside the path's
            interval, or one with ``σ(t_k) = 0`` at a step's start (a DDIM step from there divides by zero).
    """
    g = check_grid(grid, name)
    lo, hi = float(path.t_min), float(path.t_max)
    if float(g[0]) > hi + 1e-12 or float(g[-1]) < lo - 1e-12:
        raise ValueError(f"{name} must lie in the path's [t_min, t_max] = [{lo}, {hi}], got [{float(g[-1])}, {float(g[0])}]")
    if not bool((path._sigma(g[:-1]) > 0).all()):
        raise ValueError(f"{name} has a step starting where sigma = 0; only its last time may have sigma = 0")
    return g


def _ddim_sample(student, path: Path, noise: Tensor, grid: Tensor, prediction: Prediction, cond) -> tuple[Tensor, Tensor]:
    """The student's ``K``-step DDIM sample from ``σ(t_0)·noise``, with autograd: ``(start, sample)``."""
    times = [float(v) for v in grid.tolist()]
    x = start = float(path._sigma(grid[:1])[0]) * noise
    for t, s in zip(times[:-1], times[1:]):
        x = ddim_step(student, path, x, t=t, s=s, prediction=prediction, cond=cond)
    return start, x


def endpoint_distillation_loss(student, *, noise: Tensor, endpoint: Tensor, path: Path, prediction, grid,
                               metric="l2", cond=None) -> Tensor:
    r"""Per-sample endpoint-distillation loss ``d(DDIM_θ^K(σ(t_0)·noise), endpoint)``.

    Args:
        student: trainable ``student(x_t, t[, cond])`` predicting ``prediction``.
        noise: ``(B, *D)`` the pairs' standard normal noise.
        endpoint: ``(B, *D)`` the teacher's ODE endpoints from that noise.
        path: the path both live on.
        prediction: what the student predicts.
        grid: the student's ``(K + 1,)`` strictly decreasing grid ``t_0 > … > t_K`` (e.g. a
            :class:`~flowgen.distill.ProgressiveGenerator`'s ``.grid``); the sample starts from
            ``σ(t_0)·noise``, as :func:`~flowgen.samplers.sample` does.
        metric: ``"l2"`` (mean squared error), ``"pseudo_huber"`` or a callable ``(B, *D) → (B,)``.
        cond: optional condition.

    Returns:
        ``(B,)`` per-sample losses, differentiable through all ``K`` student evaluations.

    References:
        Luhman & Luhman 2021, arXiv:2101.02388; Liu et al. 2022, arXiv:2209.03003, Sec. 2.3.
    """
    if not isinstance(path, Path):
        raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
    return _endpoint(student, noise=noise, endpoint=endpoint, path=path, prediction=Prediction.parse(prediction, "prediction"),
                     grid=check_student_grid(grid, path), metric=get_metric(metric), cond=cond).per_sample


def _endpoint(student, *, noise, endpoint, path, prediction, grid, metric, cond) -> DistillOutput:
    check_model(student, "student")
    check_data(endpoint, "endpoint")
    check_batch(noise, "noise")
    check_same_shape(endpoint, noise, "endpoint", "noise")
    check_finite(noise, "noise")
    start, x = _ddim_sample(student, path, noise, grid, prediction, cond)
    diff = x - endpoint
    if diff.dtype not in (torch.float32, torch.float64):
        diff = diff.float()
    per_sample = metric(diff)
    t = torch.full((endpoint.shape[0],), float(grid[0]), device=endpoint.device)
    check_loss(per_sample, (x,), (("endpoint", endpoint), ("noise", noise)), t, path, "the endpoint-distillation loss")
    return DistillOutput(loss=per_sample.mean(), per_sample=per_sample, t=t, x_t=start, pred=x, target=endpoint)


class EndpointDistillation:
    """Endpoint distillation as a loss object: holds the student's path, prediction and grid.

    Args:
        path: the path.
        prediction: what the student predicts.
        grid: the student's ``(K + 1,)`` strictly decreasing DDIM grid (see :func:`endpoint_distillation_loss`).
        metric: ``"l2"``, ``"pseudo_huber"`` or a callable ``(B, *D) → (B,)``.
        event_shape: if given, pairs must have shape ``(B, *event_shape)``.

    Use :meth:`from_generator` to fine-tune a trained :class:`~flowgen.distill.ProgressiveGenerator`
    on its own grid. The pairs come from :func:`~flowgen.distill.generate_pairs` run on the
    teacher (not on the student's previous round's teacher).

    Example:
        >>> import torch
        >>> from flowgen.distill import EndpointDistillation
        >>> from flowgen.nn import MLP
        >>> from flowgen.paths import RectifiedFlow
        >>> net = MLP(2, hidden=16, depth=1)
        >>> ed = EndpointDistillation(RectifiedFlow(), "velocity", grid=[1.0, 0.5, 0.0])
        >>> noise, endpoint = torch.randn(8, 2), torch.randn(8, 2)
        >>> ed(net, noise, endpoint).backward()
    """

    def __init__(self, path: Path, prediction, *, grid, metric="l2", event_shape=None):
        if not isinstance(path, Path):
            raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
        self.path = path
        self.prediction = Prediction.parse(prediction, "prediction")
        self.grid = check_student_grid(grid, path)
        self.metric = get_metric(metric)
        self.event_shape = None if event_shape is None else tuple(int(d) for d in event_shape)

    @classmethod
    def from_generator(cls, generator, *, metric="l2") -> "EndpointDistillation":
        """The loss for a :class:`~flowgen.distill.ProgressiveGenerator` (its path, prediction, grid and event shape)."""
        from .generators import ProgressiveGenerator

        if not isinstance(generator, ProgressiveGenerator):
            raise TypeError(f"endpoint distillation fine-tunes a DDIM student (ProgressiveGenerator), got {type(generator).__name__}")
        return cls(generator.path, generator.prediction, grid=generator.grid, metric=metric, event_shape=generator.event_shape)

    @property
    def steps(self) -> int:
        """``K``, the student's number of steps."""
        return self.grid.numel() - 1

    def loss(self, student, noise: Tensor, endpoint: Tensor, cond=None) -> DistillOutput:
        """Evaluate the loss on a batch of pairs ``(B, *D)``; ``.pred`` is the student's sample, ``.x_t`` its start."""
        check_data(endpoint, "endpoint", event_shape=self.event_shape)
        return _endpoint(student, noise=noise, endpoint=endpoint, path=self.path, prediction=self.prediction, grid=self.grid,
                         metric=self.metric, cond=cond)

    def __call__(self, student, noise: Tensor, endpoint: Tensor, cond=None) -> Tensor:
        """Scalar loss (see :meth:`loss`)."""
        return self.loss(student, noise, endpoint, cond).loss

    def student_generator(self, student):
        """The student as a :class:`~flowgen.distill.ProgressiveGenerator` (DDIM on :attr:`grid`)."""
        from .generators import ProgressiveGenerator

        return ProgressiveGenerator(student, self.path, self.prediction, grid=self.grid, event_shape=self.event_shape)

    def __repr__(self) -> str:
        return f"EndpointDistillation(steps={self.steps}, path={self.path!r}, prediction={self.prediction.value!r})"
