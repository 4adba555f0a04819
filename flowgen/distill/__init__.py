"""Distillation: compress any teacher's many-step sampler into a 1–4-step generator.

Pure losses for custom loops (no Lightning here), each with its randomness injected or drawn
from an optional ``torch.Generator``:

* progressive distillation (Salimans & Ho 2022, arXiv:2202.00512) —
  :func:`progressive_target`, :func:`progressive_distillation_loss`, :class:`ProgressiveDistillation`;
* consistency distillation and consistency training (Song et al. 2023, arXiv:2303.01469;
  Song & Dhariwal 2023, arXiv:2310.14189) — :class:`ConsistencyDistillation`,
  :class:`ConsistencyTraining`, the functional losses, curricula, :func:`ema_update_`,
  :func:`paired_passes` (shared dropout masks), :func:`consistency_sample`;
* reflow and 1-step distillation (Liu et al. 2022, arXiv:2209.03003) — :func:`generate_pairs`
  (resumable, atomic shards), :class:`PairDataset`, :func:`reflow_loss`, :class:`Reflow`,
  :func:`one_step_distillation_loss`, :func:`straightness`, :func:`path_energy`;
* endpoint distillation (a few-step DDIM student trained through its whole sampler onto the
  teacher's ODE endpoints; Luhman & Luhman 2021, arXiv:2101.02388) — :func:`endpoint_distillation_loss`,
  :class:`EndpointDistillation`;
* students as generators — :class:`Generator`, :class:`ProgressiveGenerator`,
  :class:`ConsistencyGenerator`, :class:`ReflowGenerator`, :func:`generator_from_metadata`.

Roles: ``teacher`` (frozen), ``student`` (trained), ``target_net`` (EMA or stop-gradient copy).
"""

from ._common import DistillOutput
from .consistency import (
    CMCurriculum,
    ConsistencyDistillation,
    ConsistencyTraining,
    ConsistencyWeighting,
    ConstantCurriculum,
    Curriculum,
    ICTCurriculum,
    IndexDistribution,
    cm_ema_decay,
    cm_num_scales,
    consistency_distillation_loss,
    consistency_function,
    consistency_grid,
    consistency_sample,
    consistency_training_loss,
    curriculum_from_config,
    default_spacing,
    default_t_max,
    ema_update_,
    ict_num_scales,
    lognormal_index_probabilities,
    paired_passes,
    rng_devices,
    teacher_ode_step,
)
from .endpoint import EndpointDistillation, endpoint_distillation_loss
from .generators import GENERATORS, ConsistencyGenerator, Generator, ProgressiveGenerator, ReflowGenerator, generator_from_metadata
from .progressive import ProgressiveDistillation, TruncatedSNRWeight, progressive_distillation_loss, progressive_target
from .reflow import (
    OneStepDistillation,
    PairDataset,
    Reflow,
    TrajectoryStats,
    generate_pairs,
    one_step_distillation_loss,
    pair_loader,
    path_energy,
    reflow_loss,
    shard_seed,
    straightness,
    trajectory_stats,
)

__all__ = [
    "DistillOutput",
    # progressive
    "progressive_target", "progressive_distillation_loss", "ProgressiveDistillation", "TruncatedSNRWeight",
    # consistency
    "consistency_function", "default_t_max", "consistency_grid", "default_spacing", "cm_num_scales", "cm_ema_decay", "ict_num_scales",
    "Curriculum", "ConstantCurriculum", "CMCurriculum", "ICTCurriculum", "curriculum_from_config",
    "IndexDistribution", "ConsistencyWeighting", "lognormal_index_probabilities", "ema_update_", "rng_devices",
    "paired_passes", "teacher_ode_step", "consistency_distillation_loss", "consistency_training_loss",
    "ConsistencyDistillation", "ConsistencyTraining", "consistency_sample",
    # reflow
    "shard_seed", "generate_pairs", "PairDataset", "pair_loader", "reflow_loss", "Reflow", "one_step_distillation_loss",
    "OneStepDistillation", "TrajectoryStats", "trajectory_stats", "straightness", "path_energy",
    # endpoint distillation
    "endpoint_distillation_loss", "EndpointDistillation",
    # generators
    "Generator", "ProgressiveGenerator", "ConsistencyGenerator", "ReflowGenerator", "generator_from_metadata", "GENERATORS",
]
