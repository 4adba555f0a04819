"""Training objectives: one :class:`Objective` configured by path, prediction, time
distribution, weighting, metric and coupling; paper presets; and the pure functional form."""

from .coupling import Coupling, ExactOTCoupling, IndependentCoupling, SinkhornCoupling, get_coupling
from .functional import prediction_loss, prediction_target
from .metrics import pseudo_huber, squared_l2
from .objective import Objective, ObjectiveOutput, call_model, prefetch_pairs
from .presets import ddpm, edm, flow_matching, rectified_flow
from .time import DiscreteTime, LogitNormalTime, LogNormalSigmaTime, TimeDistribution, UniformTime
from .weighting import EDMWeight, MinSNRWeight, SNRWeight, UniformWeight, Weighting

__all__ = [
    "Objective", "ObjectiveOutput", "call_model", "prefetch_pairs",
    "prediction_loss", "prediction_target",
    "ddpm", "rectified_flow", "flow_matching", "edm",
    "TimeDistribution", "UniformTime", "LogitNormalTime", "DiscreteTime", "LogNormalSigmaTime",
    "Weighting", "UniformWeight", "SNRWeight", "MinSNRWeight", "EDMWeight",
    "Coupling", "IndependentCoupling", "ExactOTCoupling", "SinkhornCoupling", "get_coupling",
    "squared_l2", "pseudo_huber",
]
