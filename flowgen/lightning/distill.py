r"""Lightning modules for distillation: progressive, consistency (distillation and training), reflow.

Each module is a thin shell around a loss object of :mod:`flowgen.distill` (never a re-derived
loss): it loads or receives the teacher, builds the student, runs the method's phases on a
step schedule, and writes checkpoints from which the student samples and the run resumes.

Phases
    A run is a sequence of phases, each with its own step budget (the last one takes any steps
    left): the rounds ``N → N/2 → … → 1`` of progressive distillation; the single phase of
    consistency distillation/training; the reflow rounds ``1 … k`` and the final 1-step
    distillation of reflow. A phase change happens at the start of the first step of the new
    phase, and resets the optimizer state and the per-phase learning-rate schedule
    (linear warm-up, then cosine decay to zero, or constant).

Checkpoints
    Besides Lightning's optimizer/loop state, a checkpoint holds the weights of every module the
    method needs to go on (the student; the current teacher of progressive distillation, which is
    the previous round's student from round 1 on; the consistency target network; the reflow pair
    source; the evaluation EMA, if any), and under ``checkpoint["flowgen"]`` the student's sampling
    metadata written by :func:`flowgen.checkpoint.make_metadata` with ``kind="student"``,
    ``weights_prefix`` pointing at the network that samples (the EMA's copy when there is one;
    ``online_prefix`` at the trained student), ``sampler`` and ``extra["distill"] = generator.to_metadata()`` — so
    ``flowgen sample --ckpt last.ckpt --steps 1`` and :func:`load_student` rebuild the few-step
    generator without the YAML — plus the run state (phase, the distiller's state such as the
    progressive round, ``N`` and grid, the draw generator's state, the global RNG states). An
    interrupted run resumed from its last checkpoint continues mid-phase and, on the CPU in
    deterministic mode, ends with the same weights as an uninterrupted run.

Snapshots
    At the end of each phase the current student (its evaluation EMA, if any) is exported as a slim
    checkpoint (the sampling weights and metadata only) into ``<export_dir>`` (default ``<trainer.default_root_dir>/students``):
    ``progressive_N4.ckpt``, ``consistency.ckpt``, ``reflow_round1.ckpt``, ``reflow_distilled.ckpt`` …
    These are what the report and the benchmark evaluate at each number of steps.

Randomness
    Times, interval indices and noise are drawn from the module's own ``torch.Generator`` (seeded
    from ``seed`` or the global seed), whose state is saved in the checkpoint; dropout draws from
    the global RNG, whose states are saved too.

References:
    Salimans & Ho 2022, arXiv:2202.00512 (progressive distillation); Song et al. 2023,
    arXiv:2303.01469 and Song & Dhariwal 2023, arXiv:2310.14189 (consistency models); Liu et al.
    2022, arXiv:2209.03003 (reflow and 1-step distillation).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from ..checkpoint import (
    METADATA_KEY,
    CheckpointError,
    atomic_save,
    build_module,
    capture_rng_state,
    load_generator,
    make_metadata,
    module_spec,
    restore_rng_state,
    to_plain,
)
from ..parameterization import Prediction
from ..paths import path_from_config, path_to_config
from ..paths.base import Path
from .._validation import value_checks
from .module import LightHookNames, NonFiniteLossError, NonFiniteTracker, default_steps, update_ema

__all__ = [
    "DistillModule",
    "ProgressiveDistillModule",
    "ConsistencyModule",
    "ReflowModule",
    "EndpointDistillModule",
    "DistillStateError",
    "load_student",
    "student_metadata",
    "tune_candidates",
]

OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]

#: Key of the run state (phase, distiller state, generator state) inside ``checkpoint["flowgen"]``.
RUN_STATE_KEY = "distill_state"


class DistillStateError(ValueError):
    """A checkpoint's distillation state does not fit the module it is loaded into."""


def _given_hparams() -> dict | None:
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover
        return None
    given = _given_hyperparameters.get()
    return dict(given) if isinstance(given, dict) else None


def _unpack(batch) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2) and isinstance(batch[0], Tensor):
        return batch[0], (batch[1] if len(batch) == 2 else None)
    if isinstance(batch, dict) and "data" in batch:
        return batch["data"], batch.get("cond")
    raise TypeError(f"a batch must be a tensor, (data, labels) or {{'data': ..., 'cond': ...}}, got {type(batch).__name__}")


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _check_pos_int(value, name: str, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _steps_list(value, count: int, name: str) -> list[int]:
    """``value`` (an int for every phase, or a list of ``count`` ints) as a list of phase lengths."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [_check_pos_int(value, name)] * count
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} must be one integer or a list of {count} integers (one per phase), got {list(value)!r}")
        return [_check_pos_int(v, f"{name}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"{name} must be a positive integer or a list of {count} positive integers, got {value!r}")


def _round_factors(factor, student_steps: int, final_steps: int) -> list[int]:
    """Each progressive round's factor ``k`` (teacher DDIM steps per student step), one per round.

    Round 0's teacher (the given one) runs ``k_0·student_steps`` steps; round ``j ≥ 1`` divides
    ``N`` by ``k_j``. One int ``k`` means ``k`` for every round, so ``student_steps = final_steps·k^r``;
    a list holds one factor per round, and ``final_steps`` times the product of all but the first
    must be ``student_steps``.
    """
    if isinstance(factor, (list, tuple)):
        ks = [_check_pos_int(k, f"factor[{i}]") for i, k in enumerate(factor)]
        if not ks or min(ks) < 2:
            raise ValueError(f"factor must list one integer >= 2 per round, got {list(factor)!r}")
        if final_steps * math.prod(ks[1:]) != student_steps:
            raise ValueError(f"factor={ks} divides student_steps={student_steps} by {math.prod(ks[1:])} over its rounds "
                             f"(all but the first factor), which must reach final_steps={final_steps}")
        return ks
    k = _check_pos_int(factor, "factor")
    if k < 2:
        raise ValueError(f"factor must be an integer >= 2 (teacher steps per student step), got {factor!r}")
    want = "a power of two" if k == 2 else f"a power of factor={k}"
    rounds, m = 1, student_steps
    while m > final_steps and m % k == 0:
        m //= k
        rounds += 1
    if m != final_steps:
        raise ValueError(f"student_steps={student_steps} must be final_steps={final_steps} times {want}")
    return [k] * rounds


def _fingerprint(module: nn.Module) -> str:
    """A short hash of a module's weights (names, shapes and values), to key pair caches by their source."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        t = v.detach().to("cpu").contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


# =============================================================================================
# loading students (what `flowgen sample` needs)
# =============================================================================================
def load_student(checkpoint, *, map_location="cpu", trusted: tuple[str, ...] = ()):
    """Rebuild the few-step generator of a student checkpoint written by a distillation module.

    Args:
        checkpoint: a student checkpoint (``last.ckpt`` of a distillation run, or an exported
            snapshot) as a file name or a loaded dict.
        map_location: where the weights go.
        trusted: extra module prefixes whose classes may be built.

    Returns:
        A :class:`flowgen.distill.Generator` (``.sample(noise, steps=k)``, ``.supported_steps``),
        with ``.metadata`` set to the checkpoint's flowgen metadata.

    Raises:
        flowgen.checkpoint.MissingMetadataError: no path/prediction/model metadata.
        ValueError: a checkpoint that is not a distilled student (no generator metadata).
    """
    from ..distill import generator_from_metadata

    loaded = load_generator(checkpoint, map_location=map_location, trusted=tuple(trusted))
    meta = loaded.metadata
    info = meta.get("distill")
    if not isinstance(info, dict):
        name = checkpoint if isinstance(checkpoint, (str, os.PathLike)) else "checkpoint"
        raise ValueError(f"{name!s} is not a distilled student (no 'distill' generator metadata); sample it with "
                         "flowgen.checkpoint.load_generator and a sampler instead")
    gen = generator_from_metadata(loaded.model, info)
    if isinstance(gen.model, nn.Module):
        gen.model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()
    gen.metadata = meta
    return gen


def student_metadata(generator, *, model_spec: dict | None, data_shape, weights_prefix: str, method: str,
                     extra: dict | None = None, online_prefix: str | None = None) -> dict:
    """The ``checkpoint["flowgen"]`` entry of a student: sampling metadata plus ``distill`` generator metadata.

    Args:
        generator: the student's :class:`flowgen.distill.Generator`.
        model_spec: ``{"class_path", "init_args"}`` of the raw student network (for a consistency
            model, the network inside the boundary-condition wrapper).
        data_shape: per-sample shape.
        weights_prefix: prefix in the checkpoint's ``state_dict`` of the weights to sample with (the
            evaluation EMA's copy of the raw network when there is one).
        method: the distillation method's name.
        extra: more plain data.
        online_prefix: prefix of the trained (non-EMA) weights, if different.
    """
    info = generator.to_metadata()
    # the generator metadata under "distill" (this module's key) and "generator" (read by flowgen sample/evaluate)
    more = {"distill": info, "generator": info, "distill_method": method, "class_cond": False}
    more.update(extra or {})
    return make_metadata(
        path=generator.path, prediction=generator.prediction, model_spec=model_spec, data_shape=data_shape,
        weights_prefix=weights_prefix, online_prefix=online_prefix or weights_prefix, num_classes=None, kind="student",
        sampler={"method": generator.method, "steps": int(generator.default_steps)}, extra=more,
    )


def _distance_fn(shape: tuple[int, ...], metric: str = "w2", *, seed: int = 0):
    """``(samples, reference) → float`` on their common leading count.

    ``metric="w2"``: the digits Fréchet distance for 8×8 digits, else the exact squared W2;
    ``"sliced_w2"``: the sliced squared W2 on 256 directions drawn from ``seed`` (the same at every call).
    """
    if metric == "w2" and tuple(shape) == (1, 8, 8):
        from ..metrics import digits_frechet_distance

        return lambda x, r: float(digits_frechet_distance(x.float().cpu(), r.float().cpu()))
    from ..metrics.distances import sliced_w2_squared, w2_squared

    def distance(x, r):
        n = min(x.shape[0], r.shape[0])
        a, b = x[:n].double().cpu().flatten(1), r[:n].double().cpu().flatten(1)
        if metric == "sliced_w2":
            return sliced_w2_squared(a, b, projections=256, generator=torch.Generator().manual_seed(seed))
        return float(w2_squared(a, b))

    return distance


# =============================================================================================
# the shared base
# =============================================================================================
class DistillModule(LightHookNames, pl.LightningModule):
    """Shared machinery of the distillation modules (teacher loading, phases, checkpoints, validation).

    Not used directly: see :class:`ProgressiveDistillModule`, :class:`ConsistencyModule` and
    :class:`ReflowModule`. Common arguments:

    Args:
        teacher: a teacher checkpoint file (with flowgen path/prediction/model metadata, as written
            by ``flowgen fit``), or a network ``teacher(x_t, t)`` (then ``teacher_path`` and
            ``teacher_prediction`` are needed unless it has ``.path``/``.prediction``).
        student: the student network; default: the teacher's architecture (rebuilt from the
            checkpoint's model spec, or a copy of the teacher network).
        init_from_teacher: start the student from the teacher's weights (when the architectures match).
        teacher_path, teacher_prediction: the teacher's path and prediction kind when ``teacher`` is a network.
        optimizer: LightningCLI-style ``params → Optimizer``; default Adam(``lr``) (AdamW with ``weight_decay``).
        lr, weight_decay: used without ``optimizer``; ``lr`` is also the peak of the per-phase schedule.
        lr_schedule: ``"cosine"`` (warm-up, then cosine decay to 0 within each phase) or ``"constant"``.
        warmup_steps: linear warm-up steps at the start of each phase.
        reset_optimizer: clear the optimizer state at each phase change.
        seed: seed of the module's draw generator (default: the global seed).
        val_steps: step counts at which validation samples the student (those it supports).
        val_num_samples: samples per validation.
        val_metrics: ``"w2"``, ``"fd"``, ``"coverage"``; default ``["w2"]`` for 2-D data.
        val_seed: seed of the validation noise.
        export_dir: folder of the per-phase student snapshots (default ``<root>/students``; ``""`` disables).
        student_spec: ``{"class_path", "init_args"}`` of ``student`` for the checkpoint metadata.
        trusted_modules: extra module prefixes whose classes a teacher checkpoint may name.
        eval_ema_decay: keep an evaluation EMA of the student (ema-pytorch, maximum decay β) and sample,
            validate and export with it; ``None``: sample with the trained weights. The consistency-models
            paper evaluates such an EMA of its students (Song et al. 2023, rate 0.9999, besides the
            target network's μ). It never feeds back into training (the next progressive round's
            teacher, the reflow pair source and the consistency target stay the trained student's),
            and it restarts from the student at every phase change.
        eval_ema_power: the warm-up power of ema-pytorch's decay ``1 − (1 + e)^−power`` at the ``e``-th
            update of the phase (capped at ``eval_ema_decay``): the average covers a growing share of the phase.
    """

    method_name = "distill"

    def __init__(self, *, teacher=None, student: nn.Module | None = None, init_from_teacher: bool = True,
                 teacher_path: Path | None = None, teacher_prediction: str | None = None,
                 optimizer: OptimizerCallable | None = None, lr: float = 1e-3, weight_decay: float = 0.0,
                 lr_schedule: str = "cosine", warmup_steps: int = 0, reset_optimizer: bool = True,
                 seed: int | None = None, val_steps: list[int] | None = None, val_num_samples: int = 1000,
                 val_metrics: list[str] | None = None, val_seed: int = 0, export_dir: str | None = None,
                 student_spec: dict | None = None, trusted_modules: list[str] | None = None,
                 eval_ema_decay: float | None = None, eval_ema_power: float = 0.75):
        super().__init__()
        if eval_ema_decay is not None and not (isinstance(eval_ema_decay, (int, float)) and 0.0 < eval_ema_decay < 1.0):
            raise ValueError(f"eval_ema_decay must be None or lie in (0, 1), got {eval_ema_decay!r}")
        if not (isinstance(eval_ema_power, (int, float)) and math.isfinite(eval_ema_power) and eval_ema_power > 0):
            raise ValueError(f"eval_ema_power must be a positive finite number, got {eval_ema_power!r}")
        self.eval_ema_decay = None if eval_ema_decay is None else float(eval_ema_decay)
        self.eval_ema_power = float(eval_ema_power)
        self.student_ema = None
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        _check_pos_int(warmup_steps, "warmup_steps", low=0)
        _check_pos_int(val_num_samples, "val_num_samples")
        known = {"w2", "fd", "coverage"}
        if val_metrics is not None and not set(val_metrics) <= known:
            raise ValueError(f"val_metrics has unknown names {sorted(set(val_metrics) - known)}; expected some of {sorted(known)}")
        if val_steps is not None:
            val_steps = [_check_pos_int(k, "val_steps entry") for k in val_steps]
        given = _given_hparams()
        module_args = ["student", "optimizer", "teacher_path", "path"] + (
            [] if isinstance(teacher, (str, os.PathLike)) or teacher is None else ["teacher"])
        if given is not None:
            self.save_hyperparameters(logger=True)
            if student_spec is None and isinstance(given.get("student"), dict) and "class_path" in given["student"]:
                student_spec = {"class_path": given["student"]["class_path"], "init_args": dict(given["student"].get("init_args") or {})}
        else:
            self.save_hyperparameters(ignore=module_args)
        self.trusted_modules = tuple(trusted_modules or ())
        self.optimizer_factory = optimizer
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.lr_schedule, self.warmup_steps, self.reset_optimizer = lr_schedule, int(warmup_steps), bool(reset_optimizer)
        self.seed = seed
        self.val_steps, self.val_num_samples, self.val_metrics, self.val_seed = val_steps, int(val_num_samples), val_metrics, int(val_seed)
        self.export_dir = export_dir

        # --- the teacher ---------------------------------------------------------------------------
        self.teacher_checkpoint: str | None = None
        self.teacher_meta: dict = {}
        self.data_shape: tuple[int, ...] | None = None
        teacher_spec = None
        if teacher is None:
            if student is None:
                raise ValueError(f"{type(self).__name__} needs a teacher: pass --teacher <checkpoint> (flowgen distill) "
                                 f"or teacher=<checkpoint file or network> (consistency training: a student network)")
            self.teacher = None
            self.teacher_flow_path, self.teacher_pred = None, None
        elif isinstance(teacher, (str, os.PathLike)):
            self.teacher_checkpoint = os.fspath(teacher)
            net, path, prediction, meta = self._load_teacher(self.teacher_checkpoint)
            self.teacher = _frozen(net)
            self.teacher_flow_path, self.teacher_pred, self.teacher_meta = path, prediction, meta
            teacher_spec = meta.get("model")
            if meta.get("data_shape"):
                self.data_shape = tuple(int(d) for d in meta["data_shape"])
        elif isinstance(teacher, nn.Module) or callable(teacher):
            from ..distill._common import resolve_teacher

            path, prediction = resolve_teacher(teacher, teacher_path, teacher_prediction)
            self.teacher = _frozen(teacher) if isinstance(teacher, nn.Module) else teacher
            self.teacher_flow_path, self.teacher_pred = path, prediction
            teacher_spec = module_spec(teacher) if isinstance(teacher, nn.Module) else None
            if teacher_spec is not None:
                teacher_spec.pop("defaulted", None)
        else:
            raise TypeError(f"teacher must be a checkpoint file name or a network, got {type(teacher).__name__}")

        # --- the student network ------------------------------------------------------------------
        self._student_from_teacher = False  # whether the student starts from the teacher's weights
        if student is None:
            if self.teacher is None:
                raise ValueError(f"{type(self).__name__} without a teacher needs a student network (--model.init_args.student)")
            if teacher_spec is not None:
                try:
                    student = build_module(teacher_spec, trusted=self.trusted_modules)
                except CheckpointError:
                    student = None
            if student is None and isinstance(self.teacher, nn.Module):
                student = copy.deepcopy(self.teacher)
            if student is None:
                raise ValueError("cannot build a student of the teacher's architecture; pass student=<network>")
            student_spec = student_spec or teacher_spec
            if init_from_teacher and isinstance(self.teacher, nn.Module):
                student.load_state_dict(self.teacher.state_dict())
                self._student_from_teacher = True
        else:
            if not isinstance(student, nn.Module):
                raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
            if init_from_teacher and isinstance(self.teacher, nn.Module):
                try:
                    student.load_state_dict(self.teacher.state_dict())
                    self._student_from_teacher = True
                except RuntimeError:
                    warnings.warn("the student's architecture differs from the teacher's: it starts from its own "
                                  "initialisation (init_from_teacher has no effect)", stacklevel=2)
        for p in student.parameters():
            p.requires_grad_(True)
        student.train()
        if student_spec is None:
            student_spec = module_spec(student)
            if student_spec is None:
                warnings.warn(f"cannot describe {type(student).__name__} by class path and init args; its checkpoint "
                              "will need the network passed to load_generator(model=...). Pass student_spec=.", stacklevel=2)
        if student_spec is not None:
            student_spec = to_plain(dict(student_spec))
            student_spec.pop("defaulted", None)
        self.student_spec = student_spec
        # the raw network, handed to the subclass (which registers it, possibly wrapped) — kept out of
        # the module tree here so that its weights are not stored twice
        self._new_student = [student]

        # --- run state ------------------------------------------------------------------------------
        self.phase = 0
        self._gen: torch.Generator | None = None
        self._pending_gen_state: Tensor | None = None
        self._pending_rng: dict | None = None
        self._pending_state: dict | None = None
        self._k = 0
        self._loss_sum: Tensor | None = None
        self._loss_n = 0
        self._nonfinite = NonFiniteTracker()
        self._ema_state: dict = {}  # update_ema's host-side step count and cached tensor lists
        self._val_ref: list[Tensor] = []
        self.last_metrics: dict[str, float] = {}
        self.last_samples: Tensor | None = None  # fewest-step samples of the last validation (for SamplePlotCallback)
        self.last_reference: Tensor | None = None
        self.last_samples_by_steps: dict[int, Tensor] = {}
        self.exported: list[str] = []

    def frozen_modules(self) -> list[nn.Module]:
        """Submodules that never train (kept in eval mode by :meth:`train`)."""
        ema = getattr(self, "student_ema", None)
        return [m for m in (getattr(self, n, None) for n in ("teacher", "round_teacher", "target", "source"))
                if isinstance(m, nn.Module)] + ([ema.ema_model] if ema is not None else [])

    # ------------------------------------------------------------------ the evaluation EMA
    #: where the raw network sits inside ``self.student`` (``"net."`` for the consistency wrapper)
    student_net_suffix = ""

    def _attach_eval_ema(self) -> None:
        """Register the evaluation EMA of ``self.student`` (subclasses call this once the student is built)."""
        if self.eval_ema_decay is None:
            return
        from ema_pytorch import EMA

        self.student_ema = EMA(self.student, beta=self.eval_ema_decay, update_after_step=0, update_every=1,
                               power=self.eval_ema_power, include_online_model=False)
        _frozen(self.student_ema.ema_model)

    def _restart_eval_ema(self) -> None:
        """Make the next EMA update copy the student (a new phase has a new objective)."""
        if self.student_ema is not None:
            self.student_ema.initted.fill_(False)
            self.student_ema.step.zero_()
            self._ema_state.update(ema_step=0, ema_initted=False)

    @property
    def sampling_student(self) -> nn.Module:
        """The network that samples, validates and is exported: the evaluation EMA's copy, or the student."""
        return self.student_ema.ema_model if self.student_ema is not None else self.student

    def weights_prefix(self) -> str:
        """``state_dict`` prefix of the raw network that samples (see :attr:`sampling_student`)."""
        return ("student_ema.ema_model." if self.student_ema is not None else "student.") + self.student_net_suffix

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    # ------------------------------------------------------------------ teacher loading
    def _load_teacher(self, file: str):
        from ..checkpoint import MissingMetadataError

        if not os.path.isfile(file):
            raise FileNotFoundError(f"teacher checkpoint {file!r} does not exist")
        try:
            net, path, prediction, meta = load_generator(file, trusted=self.trusted_modules)
        except MissingMetadataError as err:
            raise MissingMetadataError(f"teacher: {err}; distillation needs the teacher's path and prediction "
                                       "(train it with flowgen fit, or pass a network with teacher_path/teacher_prediction)") from None
        if meta.get("class_cond"):
            raise ValueError(f"teacher checkpoint {file!r} holds a class-conditional model; flowgen distill supports "
                             "unconditional teachers only")
        info = meta.get("distill")
        if isinstance(info, dict) and info.get("generator") == "consistency":
            raise ValueError(f"teacher checkpoint {file!r} is a consistency-model student; its network is not a "
                             "path/prediction model and cannot be distilled again")
        return net, path, prediction, meta

    # ------------------------------------------------------------------ to implement
    def phase_lengths(self) -> list[int]:  # pragma: no cover - overridden
        """Step budget of each phase (the last one also takes any further steps)."""
        raise NotImplementedError

    def phase_name(self, phase: int) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def generator(self):  # pragma: no cover - overridden
        """The student as a :class:`flowgen.distill.Generator` in its current state."""
        raise NotImplementedError

    def distill_loss(self, data: Tensor, step: int):  # pragma: no cover - overridden
        """The :class:`flowgen.distill.DistillOutput` of one training step."""
        raise NotImplementedError

    def start_phase(self, phase: int) -> None:
        """Switch to ``phase`` (called once per phase change, in order)."""

    def after_optimizer_step(self, step: int) -> None:
        """Called after the optimizer step of training step ``step``."""

    def method_state(self) -> dict:
        """The method's plain-data run state for checkpoints."""
        return {}

    def load_method_state(self, state: dict) -> None:
        """Restore :meth:`method_state`."""

    def on_resume(self) -> None:
        """Called at train start after a checkpoint was restored."""

    # ------------------------------------------------------------------ schedule
    def phase_bounds(self) -> list[int]:
        """Start step of each phase, ``[0, L_0, L_0 + L_1, …]`` (one entry per phase)."""
        out, acc = [], 0
        for n in self.phase_lengths():
            out.append(acc)
            acc += n
        return out

    def phase_at(self, step: int) -> int:
        bounds = self.phase_bounds()
        p = 0
        for i, b in enumerate(bounds):
            if step >= b:
                p = i
        return p

    def total_steps(self) -> int:
        return sum(self.phase_lengths())

    def _phase_length(self, phase: int) -> int:
        lengths = self.phase_lengths()
        n = lengths[phase]
        if phase == len(lengths) - 1:
            trainer = getattr(self, "_trainer", None)
            max_steps = getattr(trainer, "max_steps", -1) if trainer is not None else -1
            if max_steps and max_steps > 0:
                n = max(n, max_steps - self.phase_bounds()[phase])
        return n

    def lr_factor(self, step: int) -> float:
        """The learning-rate multiplier at global step ``step`` (per-phase warm-up and cosine decay)."""
        phase = self.phase_at(step)
        j = step - self.phase_bounds()[phase]
        n = self._phase_length(phase)
        if self.warmup_steps and j < self.warmup_steps:
            return (j + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        span = max(1, n - self.warmup_steps)
        x = min(1.0, (j - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * x))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        params = [p for p in self.trainable_parameters() if p.requires_grad]
        if self.optimizer_factory is not None:
            opt = self.optimizer_factory(params)
        elif self.weight_decay > 0:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=self.lr)
        for g in opt.param_groups:
            g.setdefault("base_lr", g["lr"])
        return opt

    def _take_student(self) -> nn.Module:
        return self._new_student.pop()

    def _check_student_prediction(self, prediction) -> None:
        """Warn when a student that starts from the teacher's weights is to predict another kind than the teacher."""
        if prediction is None or not self._student_from_teacher or self.teacher_pred is None:
            return
        pred, teacher = Prediction.parse(prediction, "student_prediction"), Prediction.parse(self.teacher_pred)
        if pred is not teacher:
            warnings.warn(f"the student starts from the teacher's weights, trained to predict {teacher.value!r}, "
                          f"but student_prediction is {pred.value!r}: it starts far from its target and relearns its output "
                          "(pass init_from_teacher=False to start from fresh weights, or keep the teacher's prediction)",
                          stacklevel=3)

    def trainable_parameters(self):
        return self.student.parameters()

    def _optimizers(self) -> list:
        trainer = getattr(self, "_trainer", None)
        return list(trainer.optimizers) if trainer is not None else []

    def _draw_generator(self) -> torch.Generator:
        if self._gen is None:
            self._gen = torch.Generator()
            seed = self.seed if self.seed is not None else torch.initial_seed() % (2**62)
            self._gen.manual_seed(int(seed) + 7919 * int(getattr(self, "global_rank", 0) or 0))
            if self._pending_gen_state is not None:
                self._gen.set_state(self._pending_gen_state)
                self._pending_gen_state = None
        return self._gen

    def on_train_start(self) -> None:
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)
            self._pending_rng = None
        self._draw_generator()
        if self._pending_state is not None:
            self.on_resume()
            self._pending_state = None
        self._check_data_shape()
        self._nonfinite.reset()
        if self.student_ema is not None:  # the EMA's step and flag as loaded (one read per fit)
            self._ema_state = {"ema_step": None, "ema_initted": bool(self.student_ema.initted)}

    def _apply(self, fn, *args, **kwargs):
        state = self.__dict__.get("_ema_state")
        if state:
            state.pop("ema_pairs", None)  # .to()/.cuda()/.half() may replace the tensors the EMA step holds
        return super()._apply(fn, *args, **kwargs)

    def _check_data_shape(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        shape = tuple(getattr(dm, "data_shape", ()) or ()) if dm is not None else ()
        if shape and self.data_shape is not None and tuple(shape) != tuple(self.data_shape):
            raise ValueError(
                f"the data has per-sample shape {tuple(shape)} but the teacher was trained on {tuple(self.data_shape)}; "
                "distil on the teacher's data (--data ...)"
            )
        if shape and self.data_shape is None:
            self.data_shape = tuple(shape)

    def on_train_batch_start(self, batch, batch_idx: int):
        step = int(self.global_step)
        target = self.phase_at(step)
        if self.phase < target:
            self._check_deferred_nonfinite()  # before the phase's student is exported
        while self.phase < target:
            self._end_phase(self.phase)
            self.phase += 1
            if self.reset_optimizer:
                for opt in self._optimizers():
                    opt.state.clear()
            self.start_phase(self.phase)
            self._restart_eval_ema()
        f = self.lr_factor(step)
        for opt in self._optimizers():
            for g in opt.param_groups:
                g["lr"] = g.get("base_lr", self.lr) * f

    def training_step(self, batch, batch_idx: int):
        data, _ = _unpack(batch)
        if self.data_shape is None:
            self.data_shape = tuple(data.shape[1:])
        elif tuple(data.shape[1:]) != tuple(self.data_shape):
            raise ValueError(f"data has per-sample shape {tuple(data.shape[1:])}, expected {tuple(self.data_shape)} "
                             f"(the teacher's data shape); full batch shape {tuple(data.shape)}")
        self._k = int(self.global_step)
        if self._reads_are_free(data):
            out = self.distill_loss(data, self._k)
            loss = out.loss
            if not bool(torch.isfinite(loss.detach())):
                self._raise_nonfinite(self._k, loss)
        else:
            # on an accelerator every host read of a value is a device sync: the distillers' inputs come from
            # checked CPU grids and tables, and a non-finite loss is recorded on the device and raised (naming
            # its step) at the next log, checkpoint, validation or the end of training
            with value_checks(False):
                out = self.distill_loss(data, self._k)
            loss = out.loss
            self._nonfinite.track(loss.detach(), self._k)
        # Lightning's self.log costs milliseconds per call: log (a window mean) only where the logger writes
        self._loss_sum = loss.detach() + (self._loss_sum if self._loss_sum is not None else 0.0)
        self._loss_n += 1
        if self._should_log():
            self._check_deferred_nonfinite()
            # a host tensor: Lightning reads progress-bar values back on every step (a sync per step for a device tensor)
            self.log("train/loss", (self._loss_sum / self._loss_n).cpu(), on_step=True, on_epoch=False, prog_bar=True,
                     batch_size=data.shape[0])
            self.log("train/phase", float(self.phase), on_step=True, on_epoch=False, batch_size=data.shape[0])
            for k, v in self.step_logs(self._k).items():
                self.log(k, v, on_step=True, on_epoch=False, batch_size=data.shape[0])
            self._loss_sum, self._loss_n = None, 0
        return loss

    @staticmethod
    def _reads_are_free(data: Tensor) -> bool:
        """Whether reading values on the host is free for this batch (on the CPU; a device sync elsewhere)."""
        return data.device.type == "cpu"

    def _check_deferred_nonfinite(self) -> None:
        self._nonfinite.check(self._raise_nonfinite)

    def _raise_nonfinite(self, step: int, loss: Tensor | None):
        what = f" ({float(loss)})" if loss is not None else ""
        raise NonFiniteLossError(f"non-finite distillation loss{what} at global step {step} "
                                 f"({self.phase_name(self.phase_at(step))}); lower the learning rate or check the teacher "
                                 "and the data for NaN/Inf")

    def _should_log(self) -> bool:
        try:
            return bool(self.trainer._logger_connector.should_update_logs)
        except (AttributeError, RuntimeError):
            return True

    def step_logs(self, step: int) -> dict[str, float]:
        """Extra scalars logged with the loss (on logging steps only)."""
        return {}

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step(self._k)
        self._update_eval_ema()

    def _update_eval_ema(self) -> None:
        """One update of the evaluation EMA, without ema-pytorch's host reads (:func:`~flowgen.lightning.module.update_ema`)."""
        if self.student_ema is not None:
            trainer = getattr(self, "_trainer", None)
            update_ema(self.student_ema, self._ema_state, getattr(trainer, "strategy", None) if trainer is not None else None)

    def on_train_end(self) -> None:
        self._check_deferred_nonfinite()
        self._end_phase(self.phase, final=True)
        self._save_final_checkpoint()

    def _save_final_checkpoint(self) -> None:
        """Make ``last.ckpt`` the final state (the periodic checkpoint may be some steps older)."""
        trainer = getattr(self, "_trainer", None)
        cb = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
        if cb is None or not getattr(cb, "save_last", False) or not getattr(cb, "dirpath", None):
            return
        file = os.path.join(cb.dirpath, f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}")
        trainer.save_checkpoint(file, weights_only=False)  # the full state (optimizer, loops): resumable

    # ------------------------------------------------------------------ checkpoints
    def metadata(self) -> dict:
        """The student's ``checkpoint["flowgen"]`` entry for the current state."""
        gen = self.generator()
        dm = getattr(getattr(self, "_trainer", None), "datamodule", None)
        extra = {
            "teacher": {"checkpoint": self.teacher_checkpoint,
                        "path": path_to_config(self.teacher_flow_path) if self.teacher_flow_path is not None else None,
                        "prediction": self.teacher_pred.value if self.teacher_pred is not None else None,
                        "kind": self.teacher_meta.get("kind")},
            "phase": int(self.phase), "phase_name": self.phase_name(self.phase),
            "global_step": int(self.global_step) if getattr(self, "_trainer", None) is not None else 0,
            "data": dm.describe() if dm is not None and hasattr(dm, "describe") else self.teacher_meta.get("data"),
        }
        extra.update(self.extra_metadata())
        return student_metadata(gen, model_spec=self.student_spec, data_shape=self.data_shape,
                                weights_prefix=self.weights_prefix(), method=self.method_name, extra=extra,
                                online_prefix="student." + self.student_net_suffix)

    def extra_metadata(self) -> dict:
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_deferred_nonfinite()  # never save weights trained on a non-finite loss
        meta = self.metadata()
        meta["rng"] = capture_rng_state()
        meta[RUN_STATE_KEY] = {
            "method": self.method_name,
            "phase": int(self.phase),
            "draw_generator": self._draw_generator().get_state(),
            "method_state": to_plain(self.method_state()),
        }
        checkpoint[METADATA_KEY] = meta

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(METADATA_KEY) or {}
        state = meta.get(RUN_STATE_KEY)
        if not isinstance(state, dict):
            raise DistillStateError("the checkpoint holds no distillation state (was it written by a flowgen distillation "
                                    "module? a teacher checkpoint goes to --teacher, not --ckpt_path)")
        if state.get("method") != self.method_name:
            raise DistillStateError(f"the checkpoint was written by a {state.get('method')!r} distillation, "
                                    f"not {self.method_name!r}; resume with the same recipe")
        self._pending_rng = meta.get("rng")
        self._pending_gen_state = state.get("draw_generator")
        self._gen = None
        self.phase = int(state.get("phase", 0))
        if meta.get("data_shape") is not None:
            self.data_shape = tuple(meta["data_shape"])
        self.load_method_state(state.get("method_state") or {})
        self._pending_state = state

    def student_checkpoint(self) -> dict:
        """A slim checkpoint of the current student: its weights under the metadata's prefix, and the metadata."""
        prefix = self.weights_prefix()
        sd = {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if k.startswith(prefix)}
        meta = self.metadata()
        meta["online_prefix"] = prefix  # only the sampling weights are kept
        return {"state_dict": sd, METADATA_KEY: meta, "global_step": int(self.global_step)}

    def _export_folder(self) -> str | None:
        if self.export_dir == "":
            return None
        if self.export_dir:
            return self.export_dir
        trainer = getattr(self, "_trainer", None)
        root = getattr(trainer, "default_root_dir", None) if trainer is not None else None
        return os.path.join(root, "students") if root else None

    def export_student(self, name: str) -> str | None:
        """Write :meth:`student_checkpoint` as ``<export_dir>/<name>.ckpt`` (atomically); returns the file."""
        folder = self._export_folder()
        trainer = getattr(self, "_trainer", None)
        if folder is None or (trainer is not None and trainer.global_rank != 0):
            return None
        file = os.path.join(folder, f"{name}.ckpt")
        atomic_save(self.student_checkpoint(), file)
        if file not in self.exported:
            self.exported.append(file)
        return file

    def snapshot_name(self, phase: int) -> str | None:
        """File stem of the snapshot exported at the end of ``phase`` (``None``: none)."""
        return None

    def _end_phase(self, phase: int, final: bool = False) -> None:
        name = self.snapshot_name(phase)
        if name:
            self.export_student(name)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._check_deferred_nonfinite()
        self._val_ref = []

    def validation_step(self, batch, batch_idx: int):
        data, _ = _unpack(batch)
        self._val_ref.append(data)

    def _supported_val_steps(self, gen) -> list[int]:
        wanted = self.val_steps or [1, 2, 4]
        s = gen.supported_steps
        return [k for k in wanted if s is None or k in s] or ([gen.default_steps] if s else [])

    def on_validation_epoch_end(self) -> None:
        if not self._val_ref or self.trainer.sanity_checking:
            return
        ref = torch.cat(self._val_ref)
        n = min(ref.shape[0], self.val_num_samples)
        ref = ref[:n]
        metrics = self.evaluate_student(ref)
        self.last_metrics = metrics
        for k, v in metrics.items():
            self.log(k, v, on_step=False, on_epoch=True, batch_size=n)

    @torch.no_grad()
    def evaluate_student(self, ref: Tensor) -> dict[str, float]:
        """Sample ``len(ref)`` points at each validation step count and measure them against ``ref``."""
        gen = self.generator()
        self.last_samples, self.last_samples_by_steps = None, {}
        g = torch.Generator(device="cpu").manual_seed(self.val_seed)
        noise = torch.randn(ref.shape, generator=g).to(ref.device, ref.dtype)
        names = self.val_metrics if self.val_metrics is not None else (["w2"] if tuple(ref.shape[1:]) == (2,) else [])
        out: dict[str, float] = {}
        for k in self._supported_val_steps(gen):
            x = gen.sample(noise, steps=k, generator=torch.Generator(device="cpu").manual_seed(self.val_seed + k))
            self.last_samples_by_steps[k] = x.detach().cpu()
            if self.last_samples is None or k == min(self.last_samples_by_steps):
                self.last_samples, self.last_reference = x.detach().cpu(), ref.detach().cpu()
            s, r = x.detach().double().cpu(), ref.detach().double().cpu()
            if not bool(torch.isfinite(s).all()):
                for m in names:
                    out[f"val/{m}_{k}step"] = float("nan")
                continue
            if "w2" in names:
                from ..metrics import wasserstein2

                out[f"val/w2_{k}step"] = float(wasserstein2(s.flatten(1), r.flatten(1)))
            if "fd" in names:
                from ..metrics import digits_frechet_distance

                out[f"val/fd_{k}step"] = float(digits_frechet_distance(s.float(), r.float()))
            if "coverage" in names:
                from ..metrics import class_coverage

                out[f"val/coverage_{k}step"] = float(class_coverage(s.float()).coverage)
        return out


# =============================================================================================
# progressive distillation
# =============================================================================================
class ProgressiveDistillModule(DistillModule):
    """Progressive distillation (Salimans & Ho 2022) in rounds ``N → N/2 → … → final_steps``.

    Round ``r`` trains the student to match, in one DDIM step, two DDIM steps of the round's
    teacher (round 0: the given teacher; round ``r ≥ 1``: the student at the end of round
    ``r − 1``, kept as the frozen ``round_teacher`` submodule, so its weights are in every
    checkpoint). The round, ``N`` and the teacher grid live in the checkpoint, so an
    interrupted run resumes mid-round. The student starts from the teacher's weights.

    Args:
        teacher: see :class:`DistillModule`.
        student_steps: ``N`` of the first round (the teacher runs ``2N`` DDIM steps); a power of two
            times ``final_steps`` (with ``factor``: ``final_steps`` times the product of all its factors but the first).
        final_steps: the last round's ``N`` (1 for a 1-step student).
        factor: teacher DDIM steps per student step, i.e. how many times fewer steps each round's
            student takes than its teacher: 2 (Salimans & Ho's halving) by default; one int for every
            round or a list with one per round, e.g. ``[2, 4, 4, 4, 2, 2]`` for ``256 → 64 → 16 → 4 → 2
            → 1`` (the first round's teacher runs ``2·256`` steps; fewer rounds to compound errors
            over, as Berthelot et al. 2023's TRACT).
        trajectory_fraction: in rounds with ``N <= trajectory_max_steps``, the share of each batch whose
            student inputs are states of the round teacher's DDIM trajectories from noise instead of
            noised data (see :class:`flowgen.distill.ProgressiveDistillation`); 0 by default.
        trajectory_max_steps: the largest ``N`` whose rounds use ``trajectory_fraction`` (the states
            cost up to ``k(N − 1)`` teacher evaluations per such sample).
        steps_per_round: optimizer steps per round, one int or a list (one per round).
        student_prediction: the student's prediction kind (default: the teacher's).
        grid: the first teacher grid: ``"uniform"`` (the paper's), ``"karras"``, ``"log_snr"``, ``"shifted"``,
            or an explicit strictly decreasing list of ``factor·student_steps + 1`` times (later rounds keep
            every ``factor``-th point).
        t_max, t_min: a named grid's interval (default the path's).
        weighting: the loss weighting (default truncated SNR, ``max(SNR, 1)`` in data space).
        metric: ``"l2"`` or ``"pseudo_huber"``.
        **kwargs: the shared arguments of :class:`DistillModule`.

    Snapshots: ``progressive_N{n}.ckpt`` at the end of every round.

    References:
        Salimans & Ho 2022, arXiv:2202.00512, Algorithm 2; Berthelot et al. 2023, arXiv:2303.04248 (``factor > 2``).
    """

    method_name = "progressive"

    def __init__(self, teacher=None, student: nn.Module | None = None, *, student_steps: int = 64, final_steps: int = 1,
                 steps_per_round: int | list[int] = 1000, student_prediction: str | None = None, grid: str | list[float] = "uniform",
                 t_max: float | None = None, t_min: float | None = None, weighting: str | None = None, metric: str = "l2",
                 factor: int | list[int] = 2, trajectory_fraction: float = 0.0, trajectory_max_steps: int = 16,
                 **kwargs):
        if teacher is None:
            raise ValueError("progressive distillation needs a teacher: pass --teacher <checkpoint> (flowgen distill) "
                             "or teacher=<checkpoint file or network>")
        super().__init__(teacher=teacher, student=student, **kwargs)
        from ..distill import ProgressiveDistillation
        from ..distill._common import check_probability

        n = _check_pos_int(student_steps, "student_steps")
        final = _check_pos_int(final_steps, "final_steps")
        self.factors = _round_factors(factor, n, final)
        self.trajectory_fraction = check_probability(trajectory_fraction, "trajectory_fraction")
        self.trajectory_max_steps = _check_pos_int(trajectory_max_steps, "trajectory_max_steps")
        rounds = len(self.factors)
        self.num_rounds = rounds
        self.steps_per_round = _steps_list(steps_per_round, rounds, "steps_per_round")
        self._check_student_prediction(student_prediction)
        self.student = self._take_student()
        self.distiller = ProgressiveDistillation(
            self.teacher, student_steps=n, path=self.teacher_flow_path, teacher_prediction=self.teacher_pred,
            student_prediction=student_prediction, grid=grid, t_max=t_max, t_min=t_min, weighting=weighting,
            metric=metric, event_shape=self.data_shape, factor=self.factors[0])
        self._set_trajectory_fraction()
        # the teacher of rounds >= 1 (the previous round's student): same architecture as the student
        self.round_teacher = _frozen(copy.deepcopy(self.student))
        self._attach_eval_ema()

    def phase_lengths(self) -> list[int]:
        return list(self.steps_per_round)

    def phase_name(self, phase: int) -> str:
        return f"round {phase} (N={self.distiller.student_steps})"

    def generator(self):
        return self.distiller.student_generator(self.sampling_student)

    def distill_loss(self, data, step):
        return self.distiller.loss(self.student, data, generator=self._draw_generator())

    def start_phase(self, phase: int) -> None:
        self.round_teacher.load_state_dict(self.student.state_dict())
        _frozen(self.round_teacher)
        self.distiller.next_round(teacher=self.round_teacher, factor=self.factors[phase])
        self._set_trajectory_fraction()

    def _set_trajectory_fraction(self) -> None:
        on = self.distiller.student_steps <= self.trajectory_max_steps
        self.distiller.trajectory_fraction = self.trajectory_fraction if on else 0.0

    def snapshot_name(self, phase: int) -> str | None:
        return f"progressive_N{self.distiller.student_steps}"

    def method_state(self) -> dict:
        return {"distiller": self.distiller.state_dict()}

    def load_method_state(self, state: dict) -> None:
        d = state.get("distiller")
        if not isinstance(d, dict):
            raise DistillStateError("the checkpoint lacks the progressive-distillation state (round, N, grid)")
        self.distiller.load_state_dict(d)
        if self.distiller.round >= 1:
            self.distiller.teacher = self.round_teacher
        self._set_trajectory_fraction()
        if self.distiller.round != self.phase:
            raise DistillStateError(f"inconsistent checkpoint: phase {self.phase} but progressive round {self.distiller.round}")

    def extra_metadata(self) -> dict:
        return {"progressive": self.distiller.state_dict()}


# =============================================================================================
# consistency distillation and consistency training
# =============================================================================================
def tune_candidates(num_scales: int, path: Path, *, t_min: float, t_max: float, rho: float, spacing: str,
                    limit: int) -> list[float]:
    """The multistep-time search's candidates: interior times of a consistency training grid, at most ``limit``.

    The student is trained only at its grid's times and interpolates poorly between them (on
    moons a CD student's error was 7x larger at t = 0.5 than at the grid time t_max), so
    multistep times are searched among the grid's own times (``consistency_grid(num_scales, …)``
    without its ends), evenly thinned when there are more than ``limit``.
    """
    from ..distill import consistency_grid

    grid = consistency_grid(num_scales, path, t_min=t_min, t_max=t_max, rho=rho, spacing=spacing)[1:-1].tolist()
    if len(grid) > limit:
        idx = torch.linspace(0, len(grid) - 1, limit).round().long().unique().tolist()
        grid = [grid[i] for i in idx]
    return grid


class _SinglePhase:
    """One phase of ``total_steps`` optimizer steps: the ``total_steps`` argument (``total_steps_arg``)
    if given, else ``trainer.max_steps`` (1000 before a trainer is attached)."""

    total_steps_arg: int | None = None

    def total_steps(self) -> int:
        if self.total_steps_arg is not None:
            return self.total_steps_arg
        trainer = getattr(self, "_trainer", None)
        max_steps = getattr(trainer, "max_steps", -1) if trainer is not None else -1
        return int(max_steps) if max_steps and max_steps > 0 else 1000

    def phase_lengths(self) -> list[int]:
        return [self.total_steps()]


class ConsistencyModule(_SinglePhase, DistillModule):
    """Consistency distillation (with a teacher) or consistency training (without one).

    The student is the raw network wrapped as a boundary-conditioned consistency function
    (``f(x, t_min) = x`` exactly); the target network ``f_θ⁻`` is a frozen copy updated after every
    optimizer step with the exact decay ``μ(k)`` of the curriculum (:func:`flowgen.distill.ema_update_`,
    not an evaluation EMA); ``μ = 0`` makes it the student under stop-gradient.

    Args:
        teacher: for ``mode="distillation"`` (see :class:`DistillModule`); ``None`` for training.
        student: the raw network ``F`` (default: the teacher's architecture, fresh weights unless
            ``init_from_teacher``).
        mode: ``"distillation"`` or ``"training"``.
        path: the path for consistency training (default: the teacher's).
        solver: the teacher's ODE step (``"heun"``, ``"euler"``, ``"midpoint"``, ``"rk4"``).
        curriculum: ``"constant"`` (``num_scales``, ``ema_decay``), ``"cm"`` (CM's ``N(k)``, ``μ(k)`` with
            ``s0, s1, mu0``) or ``"ict"`` (iCT's doubling ``N(k)`` with ``s0, s1``, ``μ = 0``).
        num_scales, ema_decay: the constant curriculum's ``N`` and ``μ``.
        s0, s1, mu0: the CM/iCT curricula's parameters (defaults: CM 2/150/0.9, iCT 10/1280).
        curriculum_steps: ``K`` of the CM/iCT curricula (default: this run's total steps).
        t_min, t_max, rho: the time range (``t_min`` default ``max(path.t_min, t(σ/α = 0.002))``, EDM's
            σ_min) and the ρ of the grid.
        spacing: the grid's spacing: ``"karras"`` (the ρ-schedule in ``σ̃``, CM's) or ``"uniform"`` in ``t``
            (also ``"log_snr"``, ``"shifted"``; :func:`~flowgen.distill.consistency_grid`). Default ``None``:
            for distillation :func:`~flowgen.distill.default_spacing` (uniform on a rectified-flow path,
            where it is the accurate grid for the teacher's Heun steps; the ρ-schedule elsewhere), for
            training the ρ-schedule.
        metric: ``"l2"`` or ``"pseudo_huber"`` (default: l2 for distillation, pseudo-Huber for training).
        weighting: ``"uniform"`` or ``"inverse_gap"`` (default: uniform / inverse_gap).
        index_distribution: ``"uniform"`` or ``"lognormal"`` (default: uniform / lognormal).
        p_mean, p_std: the lognormal's parameters.
        sigma_data: σ_d of the boundary-condition preconditioning.
        max_sample_steps: the largest multistep count of the generator.
        sample_times: ``{k: [τ_0 … τ_{k−1}]}`` explicit multistep times (default: ρ-schedule, or tuned).
        tune_sample_times: at the end of training choose the multistep times greedily (``τ_1`` for
            2 steps, then ``τ_2`` for 3 …, each among the final training grid's interior times, thinned
            evenly to at most ``tune_candidates``),
            minimising the squared W2 (Fréchet distance for 8×8 digits) between ``tune_num`` samples
            and a reference: the teacher's samples (``tune_reference_method``, from noise
            independent of the student's) for distillation (the distillation target, never held-out data), recent training batches for
            consistency training. Song et al. 2023
            (Sec. 6) pick their multistep times by such a greedy search.
        tune_num, tune_candidates, tune_reference_steps: samples, candidate times and the teacher's
            Heun steps of the search.
        tune_reference_method: the teacher's sampler for the search's reference: ``"heun"`` (with
            ``tune_reference_steps``) or an adaptive method such as ``"dopri5"`` (its error control
            decides the steps). A fixed-step reference can be measurably off the teacher's ODE
            solution that the student is distilled from.
        tune_repeats: independent draws (student noise and teacher reference) each candidate is scored
            on; the search minimises the mean, which is less noisy than one draw's distance. On the
            quick toy teachers 4 draws changed consistency R_2 by less than the seeds' spread, so the
            default is one.
        tune_metric: the search's distance: ``"w2"`` (exact squared W2, or the Fréchet distance for
            8×8 digits) or ``"sliced_w2"`` (sliced squared W2 on 256 fixed random directions,
            :func:`flowgen.metrics.sliced_w2_squared`), which is cheap enough for ``tune_num`` in the
            tens of thousands. Measured on the quick toy teachers it did not beat the default: in the
            distillation benchmark (16 evaluation sets) sliced W2 on 20 000 dopri5 samples gave
            consistency R_2 1.11 on checkerboard and 1.13 on the Gaussian mixture, against 1.06 and
            1.11 with exact W2 on 2000 Heun samples, so the recipes keep the default.
        total_steps: the run's optimizer steps (the single phase's length; default ``trainer.max_steps``).
        **kwargs: the shared arguments of :class:`DistillModule`.

    Snapshot: ``consistency_distillation.ckpt`` / ``consistency_training.ckpt`` at the end.

    References:
        Song et al. 2023, arXiv:2303.01469, Algorithms 1–3; Song & Dhariwal 2023, arXiv:2310.14189.
    """

    def __init__(self, teacher=None, student: nn.Module | None = None, *, mode: str = "distillation",
                 path: Path | None = None, solver: str = "heun", curriculum: str = "constant", num_scales: int = 18,
                 ema_decay: float = 0.95, s0: int | None = None, s1: int | None = None, mu0: float = 0.9,
                 curriculum_steps: int | None = None, t_min: float | None = None, t_max: float | None = None,
                 rho: float = 7.0, spacing: str | None = None, metric: str | None = None, weighting: str | None = None,
                 index_distribution: str | None = None, p_mean: float = -1.1, p_std: float = 2.0,
                 sigma_data: float = 0.5, max_sample_steps: int = 4, sample_times: dict | None = None,
                 tune_sample_times: bool = False, tune_num: int = 2000, tune_candidates: int = 24,
                 tune_reference_steps: int = 32, tune_reference_method: str = "heun", tune_repeats: int = 1,
                 tune_metric: str = "w2",
                 total_steps: int | None = None, init_from_teacher: bool = False, **kwargs):
        if mode not in ("distillation", "training"):
            raise ValueError(f"mode must be 'distillation' or 'training', got {mode!r}")
        if mode == "training" and teacher is None and student is None:
            raise ValueError("consistency training needs a student network (--model.init_args.student) or a teacher "
                             "checkpoint whose architecture and path to use")
        if mode == "distillation" and teacher is None:
            raise ValueError("consistency distillation needs a teacher: pass --teacher <checkpoint> (flowgen distill) "
                             "or teacher=<checkpoint file or network>; for consistency training set mode='training'")
        super().__init__(teacher=teacher, student=student, init_from_teacher=init_from_teacher, **kwargs)
        self.mode = mode
        self.method_name = "consistency_" + mode
        if path is None:
            path = self.teacher_flow_path
        if isinstance(path, dict):
            path = path_from_config(path)
        if not isinstance(path, Path):
            raise ValueError("consistency training needs the path: pass path=<flowgen Path> (or a teacher checkpoint)")
        self.flow_path = path
        if curriculum not in ("constant", "cm", "ict"):
            raise ValueError(f"curriculum must be 'constant', 'cm' or 'ict', got {curriculum!r}")
        self.curriculum_name = curriculum
        self.curriculum_args = {"num_scales": num_scales, "ema_decay": ema_decay, "s0": s0, "s1": s1, "mu0": mu0,
                                "curriculum_steps": curriculum_steps}
        self.total_steps_arg = None if total_steps is None else _check_pos_int(total_steps, "total_steps")
        if t_min is None:  # EDM's σ_min = 0.002 in the path's VE frame, or the path's own t_min if larger
            floor = float(path.t_from_log_snr(torch.tensor([-2.0 * math.log(0.002)], dtype=torch.float64))[0])
            t_min = max(float(path.t_min), floor) if math.isfinite(floor) else float(path.t_min)
        self.loss_args = dict(
            t_min=t_min, t_max=t_max, rho=rho,
            metric=metric or ("l2" if mode == "distillation" else "pseudo_huber"),
            weighting=weighting or ("uniform" if mode == "distillation" else "inverse_gap"),
            index_distribution=index_distribution or ("uniform" if mode == "distillation" else "lognormal"),
            p_mean=p_mean, p_std=p_std, sigma_data=sigma_data, event_shape=self.data_shape)
        if spacing is not None:  # else each loss object's own default: default_spacing(path) for distillation, CM's for training
            self.loss_args["spacing"] = spacing
        self.solver = solver
        self.max_sample_steps = _check_pos_int(max_sample_steps, "max_sample_steps")
        self.sample_times = None if sample_times is None else {int(k): [float(t) for t in v] for k, v in dict(sample_times).items()}
        self.tune_sample_times = bool(tune_sample_times)
        self.tune_num = _check_pos_int(tune_num, "tune_num", low=16)
        self.tune_candidates = _check_pos_int(tune_candidates, "tune_candidates", low=3)
        self.tune_reference_steps = _check_pos_int(tune_reference_steps, "tune_reference_steps")
        self.tune_repeats = _check_pos_int(tune_repeats, "tune_repeats")
        from ..samplers import Method

        Method.parse(tune_reference_method, "tune_reference_method")  # refused here, not at the end of training
        self.tune_reference_method = tune_reference_method
        if tune_metric not in ("w2", "sliced_w2"):
            raise ValueError(f"tune_metric must be 'w2' or 'sliced_w2', got {tune_metric!r}")
        self.tune_metric = tune_metric
        self._recent: list[Tensor] = []
        self.distiller = self._make_distiller(self.total_steps_arg or 1000)
        self.student = self.distiller.consistency_function(self._take_student())
        self.target = _frozen(copy.deepcopy(self.student))
        self._attach_eval_ema()

    def _make_curriculum(self, total: int):
        from ..distill import CMCurriculum, ConstantCurriculum, ICTCurriculum

        a = self.curriculum_args
        k = a["curriculum_steps"] or total
        if self.curriculum_name == "constant":
            return ConstantCurriculum(a["num_scales"], ema_decay=a["ema_decay"])
        if self.curriculum_name == "cm":
            return CMCurriculum(k, s0=a["s0"] or 2, s1=a["s1"] or 150, mu0=a["mu0"])
        return ICTCurriculum(k, s0=a["s0"] or 10, s1=a["s1"] or 1280)

    def _make_distiller(self, total: int):
        from ..distill import ConsistencyDistillation, ConsistencyTraining

        cur = self._make_curriculum(total)
        if self.mode == "distillation":
            return ConsistencyDistillation(self.teacher, path=self.teacher_flow_path, teacher_prediction=self.teacher_pred,
                                           solver=self.solver, curriculum=cur, **self.loss_args)
        return ConsistencyTraining(self.flow_path, curriculum=cur, **self.loss_args)

    def setup(self, stage: str | None = None) -> None:
        # the CM/iCT curricula are functions of k/K: K is this run's length unless given
        if self.curriculum_name != "constant" and self.curriculum_args["curriculum_steps"] is None:
            total = self.total_steps()
            if total != getattr(self.distiller.curriculum, "total_steps", None):
                self.distiller = self._make_distiller(total)

    def phase_name(self, phase: int) -> str:
        return self.method_name.replace("_", " ")

    student_net_suffix = "net."

    def generator(self):
        kw = {"step_times": self.sample_times} if self.sample_times else {"max_steps": self.max_sample_steps}
        return self.distiller.student_generator(self.sampling_student, **kw)

    def _remember(self, data: Tensor) -> None:
        """Keep the most recent ``tune_num`` training samples (the reference of consistency training's time search)."""
        if not (self.tune_sample_times and self.mode == "training"):
            return
        self._recent.append(data.detach())
        while sum(x.shape[0] for x in self._recent) - self._recent[0].shape[0] >= self.tune_num:
            self._recent.pop(0)

    def _tune_candidates_from_grid(self) -> list[float]:
        """:func:`tune_candidates` of the last training grid (``N`` of the curriculum's final step)."""
        d = self.distiller
        n = int(d.num_scales(max(self.total_steps() - 1, 0)))
        return tune_candidates(n, self.flow_path, t_min=d.t_min, t_max=d.t_max, rho=d.rho, spacing=d.spacing,
                               limit=self.tune_candidates)

    @torch.no_grad()
    def tune_times(self, reference: Tensor | None = None) -> dict[int, list[float]]:
        """Greedy search of the multistep sampling times (see ``tune_sample_times``); sets and returns them."""
        from ..distill import ConsistencyGenerator
        from ..samplers import sample

        if reference is None and self.mode != "distillation" and not self._recent:
            return self.sample_times or {}
        net = self.sampling_student
        was = net.training
        net.eval()
        g = torch.Generator().manual_seed(self.val_seed + 12345)
        shape = tuple(self.data_shape)
        draws = []  # (student noise, reference) per repeat
        for _ in range(self.tune_repeats):
            noise = torch.randn((self.tune_num, *shape), generator=g).to(self.device)
            ref = reference
            if ref is None and self.mode == "distillation":
                # the teacher's samples from *independent* noise: with the student's own noise the 1-step map
                # is pathwise close to them and any re-noising looks worse, whatever the distributions
                ref_noise = torch.randn((self.tune_num, *shape), generator=g).to(self.device)
                ref = sample(self.teacher, self.teacher_flow_path, ref_noise, prediction=self.teacher_pred,
                             method=self.tune_reference_method,
                             steps=default_steps(self.tune_reference_method, self.tune_reference_steps)).samples
            elif ref is None:  # consistency training: the recent training batches (the same set every repeat)
                ref = torch.cat(self._recent)[-self.tune_num:]
            draws.append((noise, ref))
        d = self.distiller
        cand = self._tune_candidates_from_grid()
        metric = _distance_fn(shape, self.tune_metric, seed=self.val_seed + 54321)
        times = {1: [d.t_max]}
        best: list[float] = [d.t_max]
        scores = {}
        for k in range(2, self.max_sample_steps + 1):
            results = []
            for tau in [c for c in cand if c < best[-1]]:
                trial = best + [tau]
                gen = ConsistencyGenerator(net, self.flow_path, t_min=d.t_min, t_max=d.t_max,
                                           step_times={k: trial}, rho=d.rho, spacing=d.spacing,
                                           sigma_data=d.sigma_data)
                score = 0.0
                for r, (noise, ref) in enumerate(draws):  # the same draws for every candidate
                    x = gen.sample(noise, steps=k, generator=torch.Generator().manual_seed(self.val_seed + k + 1000 * r))
                    score += metric(x, ref) / len(draws)
                results.append((score, tau))
            if not results:
                break
            score, tau = min(results)
            best = best + [tau]
            times[k] = list(best)
            scores[k] = score
        self.sample_times = times
        self.tuned_scores = scores
        net.train(was)
        return times

    def on_train_end(self) -> None:
        self._check_deferred_nonfinite()
        if self.tune_sample_times and self.data_shape is not None:
            self.tune_times()
        super().on_train_end()

    def method_state(self) -> dict:
        return {"sample_times": {str(k): v for k, v in (self.sample_times or {}).items()}, "spacing": self.distiller.spacing}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The grid's spacing is part of the run: resuming on another grid would change the training
        # pairs mid-run. Older checkpoints record it only among the hyperparameters (spacing="karras"
        # was then the default for every path).
        state = ((checkpoint.get(METADATA_KEY) or {}).get(RUN_STATE_KEY) or {}).get("method_state") or {}
        recorded = state.get("spacing") or (checkpoint.get("hyper_parameters") or {}).get("spacing")
        if isinstance(recorded, str) and recorded != self.distiller.spacing:
            raise DistillStateError(f"the checkpoint's run trained on spacing={recorded!r}, this module on "
                                    f"spacing={self.distiller.spacing!r}; resume with spacing={recorded!r}")
        super().on_load_checkpoint(checkpoint)

    def load_method_state(self, state: dict) -> None:
        st = state.get("sample_times") or {}
        if st:
            self.sample_times = {int(k): [float(t) for t in v] for k, v in st.items()}

    def step_logs(self, step: int) -> dict[str, float]:
        return {"train/target_decay": float(self.distiller.ema_decay(step)), "train/num_scales": float(self.distiller.num_scales(step))}

    def distill_loss(self, data, step):
        self._remember(data)
        return self.distiller.loss(self.student, data, target_net=self.target, step=step, generator=self._draw_generator())

    def after_optimizer_step(self, step: int) -> None:
        self.distiller.update_target(self.target, self.student, step)

    def snapshot_name(self, phase: int) -> str | None:
        return self.method_name

    def _end_phase(self, phase: int, final: bool = False) -> None:
        if final:
            super()._end_phase(phase, final)

    def extra_metadata(self) -> dict:
        return {"consistency": to_plain(self.distiller.config())}


# =============================================================================================
# reflow
# =============================================================================================
class _PairSource:
    """Noise → ODE-endpoint pairs for a distillation module: the cache folder, generation and batch draws.

    The module sets ``num_pairs``, ``pair_batch_size``, ``pair_method``, ``pair_steps``, ``pair_dir``
    and ``pair_seed``; the pairs are written by :func:`flowgen.distill.generate_pairs` (atomic,
    resumable shards) and held in ``self._pairs``.
    """

    def _pair_root(self) -> str:
        if self.pair_dir:
            return self.pair_dir
        trainer = getattr(self, "_trainer", None)
        root = getattr(trainer, "default_root_dir", None) if trainer is not None else None
        return os.path.join(root or ".", "pairs")

    def _make_pairs(self, src, *, prediction, folder: str, seed: int) -> tuple[Tensor, Tensor]:
        """Generate (or complete, or load) ``num_pairs`` pairs of ``src``'s ODE in ``folder``; ``(noise, endpoint)`` on the device."""
        from ..distill import generate_pairs

        if self.data_shape is None:
            raise ValueError("the data shape is unknown: give a teacher checkpoint with data_shape metadata or a data module")
        device = self.device
        was = src.training if isinstance(src, nn.Module) else None
        if isinstance(src, nn.Module):
            src.eval()
        try:
            ds = generate_pairs(src, self.teacher_flow_path, num=self.num_pairs, batch_size=self.pair_batch_size,
                                shape=tuple(self.data_shape), out_dir=folder, prediction=prediction, method=self.pair_method,
                                steps=default_steps(self.pair_method, self.pair_steps), seed=seed, device=device)
        finally:
            if was:
                src.train()
        return ds.noise.to(device), ds.endpoint.to(device)

    def _pair_batch(self, data: Tensor) -> tuple[Tensor, Tensor]:
        """``data.shape[0]`` pairs drawn with replacement by the module's draw generator, in ``data``'s dtype."""
        noise, endpoint = self._pairs
        idx = torch.randint(0, noise.shape[0], (data.shape[0],), generator=self._draw_generator()).to(noise.device)
        return noise[idx].to(data.dtype), endpoint[idx].to(data.dtype)


class ReflowModule(_PairSource, DistillModule):
    """Reflow: noise → endpoint pairs from the teacher's ODE, ``k`` rectified-flow rounds, then 1-step distillation.

    Phase ``r < k`` (reflow round ``r + 1``) trains the student with the reflow loss on pairs
    generated by the previous model's ODE (round 1: the teacher; round ``r + 1``: the student at
    the end of round ``r``); the last phase (``distill=True``) trains the student's single Euler
    step onto the endpoints of pairs from the last rectified flow (or from the teacher when
    ``reflow_rounds = 0``). The pair source is kept as the frozen ``source`` submodule (its weights
    are in every checkpoint). Pairs are written to disk in shards by
    :func:`flowgen.distill.generate_pairs` under ``<pair_dir>/phase{p}_{fingerprint}`` (the
    fingerprint hashes the source's weights), so generation interrupted by a crash resumes with
    the shards already written; the pairs are identical either way. Straightness and normalised path
    energy of the source's trajectories are logged at each pair generation.

    Args:
        teacher: see :class:`DistillModule`.
        student: default: the teacher's architecture, initialised from the teacher.
        reflow_rounds: ``k`` (0: distil the teacher's pairs directly).
        distill: end with a 1-step distillation phase.
        steps_per_round: optimizer steps per reflow round (an int or a list of ``k``).
        distill_steps: optimizer steps of the distillation phase.
        num_pairs: pairs generated per phase.
        pair_batch_size: pairs per shard (one sampler call each).
        pair_method, pair_steps: the ODE sampler making the pairs (deterministic; default adaptive dopri5).
        pair_dir: the pair cache folder (default ``<root>/pairs``).
        pair_seed: base seed of the pairs' noise.
        student_prediction: the student's prediction (default: the teacher's).
        time: the reflow loss's time distribution.
        metric: the 1-step distillation metric (``"l2"`` or ``"pseudo_huber"``).
        stats_samples, stats_steps: noise samples and Euler steps for straightness/path energy.
        **kwargs: the shared arguments of :class:`DistillModule` (the batch size is the data module's).

    Snapshots: ``reflow_round{r}.ckpt`` after each round, ``reflow_distilled.ckpt`` at the end.

    References:
        Liu et al. 2022, arXiv:2209.03003, Sec. 2.2–2.3, Algorithm 1.
    """

    method_name = "reflow"

    def __init__(self, teacher=None, student: nn.Module | None = None, *, reflow_rounds: int = 1, distill: bool = True,
                 steps_per_round: int | list[int] = 2000, distill_steps: int = 2000, num_pairs: int = 20000,
                 pair_batch_size: int = 5000, pair_method: str = "dopri5", pair_steps: int | None = None,
                 pair_dir: str | None = None, pair_seed: int = 0, student_prediction: str | None = None,
                 time: str = "uniform", metric: str = "l2", stats_samples: int = 1000, stats_steps: int = 64, **kwargs):
        if teacher is None:
            raise ValueError("reflow needs a teacher: pass --teacher <checkpoint> (flowgen distill) "
                             "or teacher=<checkpoint file or network>")
        super().__init__(teacher=teacher, student=student, **kwargs)
        from ..distill import OneStepDistillation, Reflow

        self.reflow_rounds = _check_pos_int(reflow_rounds, "reflow_rounds", low=0)
        self.distill = bool(distill)
        if self.reflow_rounds == 0 and not self.distill:
            raise ValueError("reflow_rounds=0 with distill=false leaves nothing to train")
        self.steps_per_round = _steps_list(steps_per_round, self.reflow_rounds, "steps_per_round") if self.reflow_rounds else []
        self.distill_steps = _check_pos_int(distill_steps, "distill_steps")
        self.num_pairs = _check_pos_int(num_pairs, "num_pairs")
        self.pair_batch_size = _check_pos_int(pair_batch_size, "pair_batch_size")
        from ..samplers import Method

        Method.parse(pair_method, "pair_method")  # refused here, not after the teacher is loaded and training starts
        self.pair_method, self.pair_steps, self.pair_dir = pair_method, pair_steps, pair_dir
        self.pair_seed = _check_pos_int(pair_seed, "pair_seed", low=0)
        self.stats_samples, self.stats_steps = _check_pos_int(stats_samples, "stats_samples"), _check_pos_int(stats_steps, "stats_steps")
        pred = Prediction.parse(student_prediction if student_prediction is not None else self.teacher_pred, "student_prediction")
        self.student_prediction = pred
        self._check_student_prediction(pred)
        self.student = self._take_student()
        self.reflow = Reflow(self.teacher_flow_path, pred, time=time)
        self.one_step = OneStepDistillation(self.teacher_flow_path, pred, metric=metric)
        self.source = _frozen(copy.deepcopy(self.student))
        self._attach_eval_ema()
        self._pairs: tuple[Tensor, Tensor] | None = None
        self.pair_folders: dict[int, str] = {}
        self.stats: dict[str, dict] = {}

    def phase_lengths(self) -> list[int]:
        return list(self.steps_per_round) + ([self.distill_steps] if self.distill else [])

    def is_distill_phase(self, phase: int) -> bool:
        return self.distill and phase == self.reflow_rounds

    def phase_name(self, phase: int) -> str:
        return "1-step distillation" if self.is_distill_phase(phase) else f"reflow round {phase + 1}"

    def generator(self):
        if self.is_distill_phase(self.phase):
            return self.one_step.student_generator(self.sampling_student)
        return self.reflow.student_generator(self.sampling_student)

    # --- pairs ----------------------------------------------------------------------------------------
    def _source_model(self, phase: int):
        return self.teacher if phase == 0 else self.source

    def ensure_pairs(self, phase: int) -> None:
        """Generate (or complete, or just load) the pairs of ``phase`` from its source model."""
        from ..distill import trajectory_stats

        src = self._source_model(phase)
        pred = self.teacher_pred if phase == 0 else self.student_prediction
        folder = os.path.join(self._pair_root(), f"phase{phase}_{_fingerprint(src) if isinstance(src, nn.Module) else 'fn'}")
        self._pairs = self._make_pairs(src, prediction=pred, folder=folder, seed=self.pair_seed + phase)
        self.pair_folders[phase] = folder
        device = self.device
        was = src.training if isinstance(src, nn.Module) else None
        if isinstance(src, nn.Module):
            src.eval()
        g = torch.Generator().manual_seed(self.pair_seed + 10_000 + phase)
        noise = torch.randn((self.stats_samples, *self.data_shape), generator=g).to(device)
        with torch.no_grad():
            st = trajectory_stats(src, self.teacher_flow_path, noise, steps=self.stats_steps, prediction=pred)
        key = "teacher" if phase == 0 else f"reflow_round{phase}"
        self.stats[key] = {"straightness": float(st.straightness), "path_energy": float(st.energy)}
        if was:
            src.train()
        if getattr(self, "_trainer", None) is not None:
            self.log(f"reflow/straightness_{key}", float(st.straightness), on_step=True, on_epoch=False, batch_size=1)
            self.log(f"reflow/path_energy_{key}", float(st.energy), on_step=True, on_epoch=False, batch_size=1)

    def start_phase(self, phase: int) -> None:
        if phase >= 1:
            self.source.load_state_dict(self.student.state_dict())
            _frozen(self.source)
        self._pairs = None

    def on_resume(self) -> None:
        self._pairs = None

    def snapshot_name(self, phase: int) -> str | None:
        return "reflow_distilled" if self.is_distill_phase(phase) else f"reflow_round{phase + 1}"

    def distill_loss(self, data, step):
        if self._pairs is None:
            self.ensure_pairs(self.phase)
        nz, ep = self._pair_batch(data)
        g = self._draw_generator()
        if self.is_distill_phase(self.phase):
            return self.one_step.loss(self.student, nz, ep)
        return self.reflow.loss(self.student, nz, ep, generator=g)

    def method_state(self) -> dict:
        return {"reflow": self.reflow.state_dict() | {"round": max(1, min(self.phase + 1, max(1, self.reflow_rounds)))},
                "pair_folders": {str(k): v for k, v in self.pair_folders.items()}, "stats": self.stats}

    def load_method_state(self, state: dict) -> None:
        self.stats = dict(state.get("stats") or {})
        self.pair_folders = {int(k): v for k, v in (state.get("pair_folders") or {}).items()}

    def extra_metadata(self) -> dict:
        return {"reflow": {"rounds": self.reflow_rounds, "distill": self.distill, "stats": self.stats,
                           "num_pairs": self.num_pairs, "pair_method": self.pair_method}}


# =============================================================================================
# endpoint distillation (fine-tuning a few-step DDIM student end to end)
# =============================================================================================
class EndpointDistillModule(_SinglePhase, _PairSource, DistillModule):
    """Fine-tune a few-step DDIM student through its whole sampler onto the teacher's ODE endpoints.

    The student is a progressive-distillation snapshot (``student_checkpoint``, e.g.
    ``students/progressive_N4.ckpt``; its sampling weights, path, prediction and grid); the
    teacher (``--teacher``, the ORIGINAL teacher, not a round's) makes ``num_pairs`` noise → ODE
    endpoint pairs with ``pair_method`` (adaptive dopri5 by default), cached on disk by
    :func:`flowgen.distill.generate_pairs` under ``<pair_dir>/teacher_{fingerprint}`` (resumable;
    runs fine-tuning several students of one teacher can share ``pair_dir``). The loss is
    :class:`flowgen.distill.EndpointDistillation`: the distance of the student's ``K``-step DDIM
    sample to the endpoint, back-propagated through all ``K`` evaluations. One phase of
    ``total_steps`` (default ``trainer.max_steps``) optimizer steps.

    Args:
        teacher: the teacher whose ODE endpoints are the targets (see :class:`DistillModule`).
        student_checkpoint: the DDIM student to fine-tune (a progressive student checkpoint).
        metric: ``"l2"`` or ``"pseudo_huber"``.
        num_pairs, pair_batch_size, pair_method, pair_steps, pair_dir, pair_seed: the pairs (as
            :class:`ReflowModule`'s).
        total_steps: the run's optimizer steps (default ``trainer.max_steps``).
        **kwargs: the shared arguments of :class:`DistillModule` (the batch size is the data module's).

    Snapshot: ``endpoint_N{K}.ckpt`` at the end (a DDIM student: ``flowgen sample --ckpt … --steps K``).

    References:
        Luhman & Luhman 2021, arXiv:2101.02388; Salimans & Ho 2022, arXiv:2202.00512 (the students).
    """

    method_name = "endpoint"

    def __init__(self, teacher=None, student_checkpoint: str | None = None, *, metric: str = "l2", num_pairs: int = 24576,
                 pair_batch_size: int = 4096, pair_method: str = "dopri5", pair_steps: int | None = None,
                 pair_dir: str | None = None, pair_seed: int = 0, total_steps: int | None = None, **kwargs):
        from ..distill import EndpointDistillation, ProgressiveGenerator

        if teacher is None:
            raise ValueError("endpoint distillation needs a teacher, whose ODE endpoints the student learns: pass "
                             "--teacher <checkpoint> (flowgen distill) or teacher=<checkpoint file or network>")
        if student_checkpoint is None:
            raise ValueError("endpoint distillation fine-tunes a trained few-step student: pass student_checkpoint="
                             "<a progressive student checkpoint, e.g. flowgen_runs/<run>/students/progressive_N4.ckpt>")
        if not os.path.isfile(os.fspath(student_checkpoint)):
            raise FileNotFoundError(f"student_checkpoint {os.fspath(student_checkpoint)!r}: no such checkpoint file")
        if kwargs.pop("student", None) is not None:
            raise ValueError("endpoint distillation takes its student from student_checkpoint; student cannot be set")
        kwargs.pop("init_from_teacher", None)  # the student starts from its checkpoint, never from the teacher
        spec = kwargs.pop("student_spec", None)
        try:
            gen = load_student(os.fspath(student_checkpoint), trusted=tuple(kwargs.get("trusted_modules") or ()))
        except ValueError as err:
            raise ValueError(f"student_checkpoint must be a DDIM student (a progressive-distillation snapshot): {err}") from None
        if not isinstance(gen, ProgressiveGenerator):
            raise ValueError(f"student_checkpoint {os.fspath(student_checkpoint)!r} holds a {type(gen).__name__}; endpoint "
                             "distillation fine-tunes a DDIM student (a progressive-distillation snapshot)")
        if not isinstance(gen.model, nn.Module):
            raise ValueError(f"student_checkpoint {os.fspath(student_checkpoint)!r}: its network could not be rebuilt")
        self.num_pairs = _check_pos_int(num_pairs, "num_pairs")
        self.pair_batch_size = _check_pos_int(pair_batch_size, "pair_batch_size")
        from ..samplers import Method

        Method.parse(pair_method, "pair_method")
        self.pair_method, self.pair_steps, self.pair_dir = pair_method, pair_steps, pair_dir
        self.pair_seed = _check_pos_int(pair_seed, "pair_seed", low=0)
        self.total_steps_arg = None if total_steps is None else _check_pos_int(total_steps, "total_steps")
        super().__init__(teacher=teacher, student=gen.model, init_from_teacher=False,
                         student_spec=spec or (gen.metadata or {}).get("model"), **kwargs)
        if path_to_config(gen.path) != path_to_config(self.teacher_flow_path):
            raise ValueError(f"student_checkpoint lives on path {path_to_config(gen.path)!r} but the teacher on "
                             f"{path_to_config(self.teacher_flow_path)!r}: fine-tune a student of this teacher")
        shape = tuple((gen.metadata or {}).get("data_shape") or ())
        if shape and self.data_shape is not None and shape != tuple(self.data_shape):
            raise ValueError(f"student_checkpoint was distilled on data of shape {shape}, the teacher on {tuple(self.data_shape)}")
        self.student_file = os.fspath(student_checkpoint)
        self.endpoint = EndpointDistillation(gen.path, gen.prediction, grid=gen.grid, metric=metric,
                                             event_shape=self.data_shape)
        self.student = self._take_student()
        self._attach_eval_ema()
        self._pairs: tuple[Tensor, Tensor] | None = None
        self.pair_folder: str | None = None

    def phase_name(self, phase: int) -> str:
        return f"endpoint distillation (K={self.endpoint.steps})"

    def generator(self):
        return self.endpoint.student_generator(self.sampling_student)

    def snapshot_name(self, phase: int) -> str | None:
        return f"endpoint_N{self.endpoint.steps}"

    def ensure_pairs(self) -> None:
        """Generate (or complete, or just load) the teacher's pairs."""
        src = self.teacher
        folder = os.path.join(self._pair_root(), f"teacher_{_fingerprint(src) if isinstance(src, nn.Module) else 'fn'}")
        self._pairs = self._make_pairs(src, prediction=self.teacher_pred, folder=folder, seed=self.pair_seed)
        self.pair_folder = folder

    def on_resume(self) -> None:
        self._pairs = None

    def distill_loss(self, data, step):
        if self._pairs is None:
            self.ensure_pairs()
        noise, endpoint = self._pair_batch(data)
        return self.endpoint.loss(self.student, noise, endpoint)

    def method_state(self) -> dict:
        return {"pair_folder": self.pair_folder, "student_checkpoint": self.student_file}

    def load_method_state(self, state: dict) -> None:
        self.pair_folder = state.get("pair_folder")

    def extra_metadata(self) -> dict:
        return {"endpoint": {"student_checkpoint": self.student_file, "num_pairs": self.num_pairs,
                             "pair_method": self.pair_method, "steps": self.endpoint.steps}}
