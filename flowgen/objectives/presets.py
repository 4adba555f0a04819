"""Objectives that read like their papers."""

from __future__ import annotations

from ..parameterization import Prediction
from ..paths import EDM, DiscreteDDPM, RectifiedFlow
from ..paths.base import Path
from .objective import Objective
from .time import DiscreteTime, LogNormalSigmaTime
from .weighting import EDMWeight

__all__ = ["ddpm", "rectified_flow", "flow_matching", "edm"]


def ddpm(path: Path | None = None, prediction="noise", *, weighting="uniform", **kwargs) -> Objective:
    """DDPM (Ho et al. 2020, arXiv:2006.11239): uniform integer timesteps, ε, v or x0 prediction.

    Args:
        path: defaults to ``DiscreteDDPM.linear()``; continuous paths draw ``t`` uniformly instead.
        prediction: ``"noise"`` (ε), ``"v"`` or ``"data"`` (x0).
        weighting: e.g. ``"uniform"`` (the simple loss) or ``MinSNRWeight(5)``.
    """
    path = DiscreteDDPM.linear() if path is None else path
    time = kwargs.pop("time", DiscreteTime() if isinstance(path, DiscreteDDPM) else "uniform")
    return Objective(path, Prediction.parse(prediction), time=time, weighting=weighting, **kwargs)


def rectified_flow(*, time="uniform", **kwargs) -> Objective:
    """Rectified flow (Liu et al. 2022, arXiv:2209.03003): ``x_t = (1 − t)·data + t·noise``, velocity target."""
    return Objective(RectifiedFlow(), Prediction.VELOCITY, time=time, **kwargs)


def flow_matching(path: Path | None = None, *, coupling="independent", sigma_min: float = 0.0, **kwargs) -> Objective:
    """Conditional flow matching (Lipman et al. 2022, arXiv:2210.02747; Tong et al. 2023, arXiv:2302.00482).

    Args:
        path: defaults to ``RectifiedFlow(sigma_min)``; giving both a path and ``sigma_min`` is an error.
        coupling: ``"independent"``, ``"ot"`` (exact minibatch OT) or ``"sinkhorn"``.
        sigma_min: width of the conditional path at the data end.
    """
    if path is not None and sigma_min:
        raise ValueError("give either path or sigma_min, not both (sigma_min builds RectifiedFlow(sigma_min))")
    path = RectifiedFlow(sigma_min=sigma_min) if path is None else path
    return Objective(path, Prediction.VELOCITY, coupling=coupling, **kwargs)


def edm(
    path: EDM | None = None,
    *,
    sigma_data: float | None = None,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    **kwargs,
) -> Objective:
    """EDM (Karras et al. 2022, arXiv:2206.00364, Table 1): log-normal σ, λ(σ) weighting, data prediction.

    Pair it with :class:`~flowgen.preconditioning.EDMPreconditioned` so the network sees EDM's scaled inputs.
    """
    path = EDM() if path is None else path
    sd = path.sigma_data if sigma_data is None and isinstance(path, EDM) else (0.5 if sigma_data is None else sigma_data)
    return Objective(path, Prediction.DATA, time=LogNormalSigmaTime(p_mean, p_std), weighting=EDMWeight(sd), **kwargs)
