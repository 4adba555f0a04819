"""The objective object: draws time, noise and coupling, calls the model, returns the loss.

All the arithmetic lives in :mod:`flowgen.objectives.functional`; this class only holds the
configuration and the randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._random import randn
from .._validation import check_batch, check_finite
from ..parameterization import Prediction
from ..paths.base import Path
from .coupling import Coupling, IndependentCoupling, get_coupling
from .functional import _coefficients, _loss
from .metrics import get_metric
from .time import TimeDistribution, get_time_distribution
from .weighting import Weighting, get_weighting

__all__ = ["Objective", "ObjectiveOutput", "call_model"]


@dataclass(frozen=True)
class ObjectiveOutput:
    """Everything one objective evaluation produced.

    Attributes:
        loss: scalar mean of ``per_sample``.
        per_sample: ``(B,)`` losses.
        t: ``(B,)`` drawn times.
        noise: ``(B, *D)`` the (coupled) noise.
        x_t: ``(B, *D)`` model input.
        pred: ``(B, *D)`` model output.
    """

    loss: Tensor
    per_sample: Tensor
    t: Tensor
    noise: Tensor
    x_t: Tensor
    pred: Tensor


def call_model(model, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
    """Call ``model(x_t, t)`` or ``model(x_t, t, cond)`` and check the output's shape."""
    out = model(x_t, t) if cond is None else model(x_t, t, cond)
    if not isinstance(out, Tensor) or out.shape != x_t.shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"model output must have the shape of x_t {tuple(x_t.shape)}, got {shape}")
    return out


class Objective:
    """A training objective: path × prediction × time distribution × weighting × metric × coupling.

    Args:
        path: the probability path.
        prediction: what the model predicts (:class:`~flowgen.Prediction` or its value).
        time: time distribution (instance or name); uniform on ``[t_min, t_max]`` by default.
        weighting: loss weighting (instance or name); uniform by default.
        coupling: noise–data coupling (instance or name); independent by default.
        metric: ``"l2"``, ``"pseudo_huber"`` or a callable ``(B, *D) → (B,)``.
        check_finite: one reduction per call on the loss: data holding NaN/Inf is refused (ValueError naming
            ``data``) and a loss that overflows from finite data and model output is refused; a non-finite
            model output gives a non-finite loss, returned as is so the training loop can stop or skip.

    Example:
        >>> import torch, flowgen
        >>> objective = flowgen.objectives.rectified_flow()
        >>> model = lambda x_t, t: torch.zeros_like(x_t)
        >>> loss = objective(model, torch.randn(8, 2))
    """

    def __init__(
        self,
        path: Path,
        prediction,
        *,
        time: TimeDistribution | str = "uniform",
        weighting: Weighting | str = "uniform",
        coupling: Coupling | str = "independent",
        metric="l2",
        check_finite: bool = True,
    ):
        if not isinstance(path, Path):
            raise TypeError(f"path must be a flowgen Path, got {type(path).__name__}")
        self.path = path
        self.prediction = Prediction.parse(prediction)
        self.time = get_time_distribution(time)
        self.weighting = get_weighting(weighting)
        self.coupling = get_coupling(coupling)
        self.metric = get_metric(metric)
        self.check_finite = bool(check_finite)

    def __repr__(self):
        return (
            f"Objective(path={self.path!r}, prediction={self.prediction.value!r}, time={self.time!r}, "
            f"weighting={self.weighting!r}, coupling={self.coupling!r})"
        )

    def _check_data(self, data: Tensor) -> None:
        check_batch(data, "data")
        if data.shape[0] == 0:
            raise ValueError(f"data is an empty batch (shape {tuple(data.shape)}); the mean loss needs at least one sample")
        if self.check_finite and data.device.type == "meta":
            raise ValueError("data is a meta tensor (a shape without values) and cannot be checked; "
                             "use check_finite=False to trace shapes")

    def pair(self, data: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Noise ``(B, *D)`` drawn for ``data`` and paired with it by the objective's coupling.

        The costly half of an OT-coupled step; :func:`prefetch_pairs` runs it for the next batch on a
        worker thread while the current step trains.
        """
        self._check_data(data)
        return self._pair(data, generator)

    def _pair(self, data: Tensor, generator: torch.Generator | None) -> Tensor:
        # with the independent coupling the data is checked after the loss (compute), one reduction per call
        if self.check_finite and not isinstance(self.coupling, IndependentCoupling):
            check_finite(data, "data")
        noise = randn(data.shape, generator=generator, device=data.device, dtype=data.dtype)
        if not isinstance(self.coupling, IndependentCoupling):
            noise = self.coupling(data, noise, generator)
        return noise

    def draw(self, data: Tensor, generator: torch.Generator | None = None, *, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``(t, noise)`` for a data batch: ``t`` ``(B,)`` and coupled noise ``(B, *D)``.

        With ``noise`` given (already paired, e.g. by :meth:`pair`), only ``t`` is drawn.
        """
        self._check_data(data)
        if noise is not None:
            if not isinstance(noise, Tensor) or noise.shape != data.shape or noise.device != data.device:
                raise ValueError(f"noise must be a tensor of data's shape {tuple(data.shape)} on {data.device}, got "
                                 f"{tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__}"
                                 f"{' on ' + str(noise.device) if isinstance(noise, Tensor) else ''}")
            if self.check_finite and not isinstance(self.coupling, IndependentCoupling):
                check_finite(noise, "noise")
        dtype = torch.float64 if data.dtype == torch.float64 else torch.float32
        t = self.time.sample(data.shape[0], path=self.path, generator=generator, device=data.device, dtype=dtype)
        if noise is None:
            noise = self._pair(data, generator)
        return t, noise.to(data.dtype)

    def compute(self, model, data: Tensor, cond=None, *, generator: torch.Generator | None = None,
                noise: Tensor | None = None) -> ObjectiveOutput:
        """Evaluate the objective and return all intermediate tensors (see :class:`ObjectiveOutput`).

        ``noise``: optional noise already paired with ``data`` (:meth:`pair`, :func:`prefetch_pairs`);
        by default it is drawn and coupled here.
        """
        t, noise = self.draw(data, generator, noise=noise)
        coefs = _coefficients(self.path, t, data)
        x_t = (coefs[0] * data + coefs[1] * noise).to(data.dtype)
        pred = call_model(model, x_t, t, cond)
        per_sample = _loss(pred, data, noise, t, self.path, self.prediction, self.weighting, self.metric, coefs)
        loss = per_sample.mean()
        if self.check_finite and not bool(torch.isfinite(loss)):
            check_finite(data, "data")
            if bool(torch.isfinite(pred).all()):
                raise ValueError(
                    f"the loss overflowed in {per_sample.dtype} although data and the model output are finite; "
                    "rescale the data (e.g. to unit variance) or train in float32/float64"
                )
            # a non-finite model output: the loss is returned as is, for the training loop to stop or skip
            # (FlowModule names the step, or skips the batch with skip_nonfinite=True)
        return ObjectiveOutput(loss=loss, per_sample=per_sample, t=t, noise=noise, x_t=x_t, pred=pred)

    def __call__(self, model, data: Tensor, cond=None, *, generator: torch.Generator | None = None,
                 noise: Tensor | None = None) -> Tensor:
        """Differentiable scalar loss of ``model`` on a data batch ``(B, *D)`` (``noise``: see :meth:`compute`)."""
        return self.compute(model, data, cond, generator=generator, noise=noise).loss


def prefetch_pairs(objective: Objective, batches, *, generator: torch.Generator | None = None):
    """Yield ``(data, noise)`` with ``noise = objective.pair(data)``, pairing the next batch on a worker thread.

    Exact OT (POT's network simplex or scipy's assignment) and Sinkhorn release the GIL, so the
    coupling of batch ``i + 1`` runs while the caller trains on batch ``i``; an OT-coupled loop then
    costs little more than an independent one. Pass the noise on: ``objective(model, data, noise=noise)``.

    Args:
        objective: the objective whose coupling pairs the batches.
        batches: an iterable of data batches ``(B, *D)``; each is read on the worker thread, one ahead.
        generator: RNG of the pairing (used only on the worker thread; give ``compute`` its own).

    Yields:
        ``(data, noise)``, in the order of ``batches``.
    """
    from concurrent.futures import ThreadPoolExecutor

    it = iter(batches)

    def next_pair():
        try:
            data = next(it)
        except StopIteration:
            return None
        return data, objective.pair(data, generator)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowgen-pairs") as pool:
        pending = pool.submit(next_pair)
        while True:
            item = pending.result()
            if item is None:
                return
            pending = pool.submit(next_pair)
            yield item
