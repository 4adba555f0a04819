"""Public test kit: exact oracles and hypothesis strategies for property-testing paths and models."""

from .oracles import GaussianData, GaussianMixture, OracleModel

__all__ = ["GaussianData", "GaussianMixture", "OracleModel"]
