"""The Lightning layer: a thin LightningModule around an injected network and flowgen objective.

:class:`FlowModule` holds

* ``model`` — any ``nn.Module`` with ``model(x_t, t[, cond])`` (e.g. :class:`flowgen.nn.MLP`);
* ``objective`` — any :class:`flowgen.objectives.Objective`; the loss is always
  ``objective.compute(model, data, cond)``, never re-derived here;
* an EMA copy of the weights (ema-pytorch), used for validation sampling and saved as the
  generator weights of the checkpoint;
* the optimizer/scheduler (LightningCLI-style callables, or simple ``lr``/``weight_decay``).

Per-step overhead is kept small: the training loss is accumulated on the device and logged as a
window mean only on the steps where Lightning writes logs; the EMA is stepped without any host
read (its decay is computed on the host) over tensor lists made once; non-finite losses are checked
with one host read per step on the CPU and, on accelerators, recorded on the device and checked at
log/checkpoint/validation time (the error still names the exact global step; the objective's own
host-side check is skipped there for the same reason); with ``prefetch_pairs=True`` an OT coupling
runs on a worker thread, one batch ahead.

Checkpoints carry, besides Lightning's optimizer/scheduler/loop state: the EMA, the RNG states
(torch, CUDA, numpy, python; the data stream's generator is in the data module's state) and the
``"flowgen"`` metadata of :mod:`flowgen.checkpoint` (path config, prediction, model class path and
init args, data shape, version) so :func:`flowgen.checkpoint.load_generator` can sample from them
without the YAML.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from ..checkpoint import METADATA_KEY, capture_rng_state, make_metadata, module_spec, restore_rng_state, to_plain
from ..objectives import IndependentCoupling, Objective

__all__ = ["FlowModule", "NonFiniteLossError", "OptimizerCallable", "LRSchedulerCallable"]

OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]
LRSchedulerCallable = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


#: Checkpoint entry of the pair queued by ``prefetch_pairs`` (the next step trains on it).
PREFETCH_KEY = "flowgen_prefetched_pair"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/Inf; the message names the global step."""


def default_steps(method: str, steps: int | None) -> int | None:
    """``steps`` for a fixed-step ``method``, ``None`` for an adaptive one (dopri5, bosh3, …)."""
    from ..samplers import METHODS, Method

    try:
        adaptive = METHODS[Method.parse(method)].adaptive
    except (ValueError, KeyError):
        return steps  # unknown names are reported by the sampler
    return None if adaptive else steps


def ema_decay(step: int, *, update_after_step: int, inv_gamma: float, power: float, min_value: float,
              beta: float) -> float:
    """The decay ema-pytorch's ``EMA`` applies at the update made when its step counter reads ``step``.

    ``1 − (1 + e/γ)^−power`` clamped to ``[min_value, beta]``, with ``e = step − update_after_step``,
    and 0 for ``e ≤ 0``; computed on the host in float32 as ema-pytorch does on its step buffer.
    """
    epoch = max(step - update_after_step, 0)
    if epoch <= 0:
        return 0.0
    e = torch.tensor(float(epoch), dtype=torch.float32)
    value = 1 - (1 + e / inv_gamma) ** -power
    return float(value.clamp(min=min_value, max=beta))


def update_ema(ema, state: dict, strategy=None) -> None:
    """ema-pytorch's ``EMA.update()`` without its host reads.

    ``EMA.update`` reads its step and init flags and its decay with ``.item()``: four device syncs
    per step on an accelerator, which stop the host from queueing the next step. The step count is
    kept on the host in ``state["ema_step"]`` (``None``: read once, after construction, a checkpoint
    load or a restart) with ``state["ema_initted"]``; the decay is computed there by :func:`ema_decay`
    (ema-pytorch's formula in its float32 arithmetic), and the averaging itself is still
    ema-pytorch's ``update_moving_average`` / ``copy_params_from_model_to_ema``; the result is bitwise
    that of ``EMA.update`` (tested). ``strategy``: the Lightning strategy, if any (see :func:`ema_pairs`).
    """
    s = state.get("ema_step")
    if s is None:
        s = int(ema.step)  # one read after construction, a checkpoint load or a restart
    if not state.get("ema_initted"):
        ema.update()  # initialises (copies the weights) once
        state["ema_initted"] = True
    else:
        ema.step.add_(1)
        if s % ema.update_every == 0:
            if s <= ema.update_after_step:
                ema.copy_params_from_model_to_ema()
            else:
                decay = ema_decay(s, update_after_step=ema.update_after_step, inv_gamma=ema.inv_gamma,
                                  power=ema.power, min_value=ema.min_value, beta=ema.beta)
                pairs = ema_pairs(ema, state, strategy)
                if pairs is None:
                    ema.update_moving_average(ema.ema_model, ema.model, current_decay=decay)
                else:
                    if pairs[0]:
                        torch._foreach_copy_(pairs[0], pairs[1])
                    if pairs[2]:
                        torch._foreach_lerp_(pairs[2], pairs[3], 1.0 - decay)
    state["ema_step"] = s + 1


def ema_pairs(ema, state: dict, strategy=None):
    """ema-pytorch's ``update_moving_average`` selection of ``(ema, online)`` tensors, made once.

    ``(copy targets, copy sources, lerp targets, lerp sources)`` as ema-pytorch picks them
    (named parameters and buffers it tracks, minus its ignored names; ``param_or_buffer_names_no_ema``
    copied), so each step is its two foreach calls without walking the modules again; cached in
    ``state["ema_pairs"]`` (pop it when the tensors may move). ``None`` (use ema-pytorch's own
    method) when its options move or cast tensors per step, or under any strategy but a single
    device or plain DDP (a sharding one may swap the parameters' storage).
    """
    cached = state.get("ema_pairs")
    if cached is not None:
        return cached[0]
    pairs = None
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    unsharded = strategy is None or type(strategy) in (SingleDeviceStrategy, DDPStrategy)  # not DeepSpeed, a DDP subclass
    if (ema.use_foreach and not ema.is_frozen and not ema.allow_different_devices and not ema.coerce_dtype
            and not ema.move_ema_to_online_device and unsharded):
        def tracked(model):
            items = list(ema.get_params_iter(model)) + list(ema.get_buffers_iter(model))
            return [(n, x) for n, x in items if n not in ema.ignore_names
                    and not any(n.startswith(p) for p in ema.ignore_startswith_names)]

        online, averaged = tracked(ema.model), tracked(ema.ema_model)
        if [n for n, _ in online] == [n for n, _ in averaged]:
            lists: tuple[list, list, list, list] = ([], [], [], [])
            for (name, src), (_, tgt) in zip(online, averaged):
                k = 0 if name in ema.param_or_buffer_names_no_ema else 2
                lists[k].append(tgt.data)
                lists[k + 1].append(src.data)
            pairs = lists
    state["ema_pairs"] = (pairs,)
    return pairs


def _given_hparams() -> dict | None:
    """The plain config LightningCLI is instantiating this module from, if any."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover
        return None
    given = _given_hyperparameters.get()
    return dict(given) if isinstance(given, dict) else None


def _unpack(batch) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor):
        return batch[0], batch[1]
    if isinstance(batch, (tuple, list)) and len(batch) == 1 and isinstance(batch[0], Tensor):
        return batch[0], None
    if isinstance(batch, dict) and "data" in batch:
        return batch["data"], batch.get("cond")
    raise TypeError(f"a batch must be a tensor, (data, labels) or {{'data': ..., 'cond': ...}}, got {type(batch).__name__}")


class NonFiniteTracker:
    """The first training step whose loss was non-finite, recorded on the loss's device.

    :meth:`track` costs no host read (a device synchronisation on a GPU); :meth:`first_bad`
    reads the record once, where the host needs the device anyway (a log step, a checkpoint,
    validation, the end of training).
    """

    __slots__ = ("step", "first")

    def __init__(self):
        self.step: Tensor | None = None
        self.first: Tensor | None = None

    def reset(self) -> None:
        self.step = self.first = None

    def track(self, loss: Tensor, global_step: int) -> None:
        if self.step is None or self.step.device != loss.device:
            self.step = torch.tensor(global_step, device=loss.device)
            self.first = torch.tensor(-1, device=loss.device)
        bad = ~torch.isfinite(loss)
        self.first = torch.where(bad & (self.first < 0), self.step, self.first)
        self.step = self.step + 1

    def first_bad(self) -> int | None:
        """The global step of the first non-finite loss tracked, or ``None``."""
        if self.first is None:
            return None
        step = int(self.first)
        return step if step >= 0 else None

    def check(self, raise_nonfinite) -> None:
        """Call ``raise_nonfinite(step, None)`` if a non-finite loss was tracked (one host read)."""
        step = self.first_bad()
        if step is not None:
            raise_nonfinite(step, None)


class LightHookNames:
    """Mixin for a ``LightningModule``: Lightning's hook-name bookkeeping without ``nn.Module.__setattr__``.

    Lightning sets ``module._current_fx_name`` before and after every hook call, about 40 times per
    training step; through ``nn.Module.__setattr__`` (which checks for parameters, buffers and
    submodules) each costs about 1 µs of host time. The name is a plain string, so it goes straight
    into the instance dictionary.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)


class _CastInputs(nn.Module):
    """Sampling with half-precision weights (``precision="bf16-true"``/``"16-true"``): the sampler keeps
    its state in float32 and each network call gets ``x`` in the weights' dtype, its output cast back."""

    def __init__(self, net: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = net, dtype

    @classmethod
    def wrap(cls, net: nn.Module) -> nn.Module:
        p = next(net.parameters(), None)
        return cls(net, p.dtype) if p is not None and p.dtype in (torch.float16, torch.bfloat16) else net

    def forward(self, x: Tensor, t: Tensor, *args, **kwargs) -> Tensor:
        return self.net(x.to(self.dtype), t, *args, **kwargs).to(x.dtype)


class FlowModule(LightHookNames, pl.LightningModule):
    """Train any flowgen objective on any network, with EMA, sampling validation and safe checkpoints.

    Args:
        model: the network, ``model(x_t (B, *D), t (B,)[, cond (B,)]) → (B, *D)``.
        objective: a :class:`~flowgen.objectives.Objective` (path × prediction × time × weighting × coupling).
        optimizer: callable ``params → Optimizer`` (LightningCLI: ``class_path: torch.optim.AdamW``);
            default Adam with ``lr``/``weight_decay`` (AdamW when ``weight_decay > 0``; the fused
            implementation when the parameters are on CUDA).
        lr_scheduler: callable ``optimizer → LRScheduler``, stepped every optimizer step.
        lr, weight_decay: used when ``optimizer`` is not given.
        ema: keep an EMA of the weights (ema-pytorch) and sample/save with it.
        ema_decay: the EMA's maximum decay β.
        ema_warmup_steps: steps during which the EMA copies the weights (ema-pytorch ``update_after_step``).
        ema_update_every: EMA update period in optimizer steps.
        ema_power: warm-up power of ema-pytorch's decay schedule ``1 − (1 + step)^−power``.
        sample_method, sample_steps: sampler used by validation and as the checkpoint's default
            (a :func:`flowgen.samplers.sample` method name; ``steps=None`` for adaptive methods).
        val_num_samples: samples drawn at each validation (at most the held-out set's size).
        val_metrics: metric names (``"w2"``, ``"mmd"``, ``"fd"``, ``"coverage"``); default: ``["w2"]`` for
            2-D data, ``[]`` otherwise (the digits classifier metrics cost a classifier training on first use).
        val_seed: seed of validation noise and times (validation never touches the global RNG).
        class_cond: pass the batch labels to the model as ``cond``.
        cond_drop_prob: probability of replacing a label by the model's null class (classifier-free guidance).
        guidance_scale: guidance used when sampling a class-conditional model at validation.
        prefetch_pairs: pair each batch with its coupled noise on a worker thread (OT couplings;
            ignored for the independent one): step ``i`` trains on batch ``i − 1`` while batch ``i``
            is paired, as :func:`flowgen.objectives.prefetch_pairs` does in a custom loop. The first
            step of a fresh run only starts the pipeline (no update); the pending pair and the
            pairing generator are saved in checkpoints, so a resumed run continues exactly.
        skip_nonfinite: skip (and count) batches whose loss is NaN/Inf instead of stopping with
            :class:`NonFiniteLossError`.
        cuda_graph: on one CUDA device, capture the whole training step (forward, backward, gradient
            clipping, optimizer step) as a CUDA graph after 3 eager steps and replay it
            (:class:`flowgen.capture.StepGraph`): one launch instead of hundreds, for small
            models whose steps are bound by the host. The EMA, logging and validation run as usual; an
            OT coupling pairs each batch before the replay. Needs a capturable optimizer (the default
            Adam is made one), full-precision or ``*-true`` precision, no gradient accumulation, and
            ``skip_nonfinite=False``; ``on_before_optimizer_step`` hooks do not run (the step is replayed
            inside ``training_step``). ``True`` refuses a run that cannot capture (on the CPU, under
            DDP/FSDP, mixed precision, ...) with an error saying why; ``"auto"`` captures when the run
            can and trains eagerly otherwise (what the recipes use). The step must be a pure function
            of its inputs: a model with Python-side state that changes per call would be frozen.
            The learning rate becomes a device tensor that schedulers update in place; one that
            derives each value from the previous one (``CosineAnnealingLR``, ``ExponentialLR``) then
            reads it back once per step (a synchronisation), ``LambdaLR`` does not.
        model_spec: ``{"class_path", "init_args"}`` of ``model`` for the checkpoint metadata; taken
            from the LightningCLI config when run by the CLI, else read back from the model's attributes.

    References:
        Lipman et al. 2022, arXiv:2210.02747; Ho et al. 2020, arXiv:2006.11239 (EMA of weights for sampling);
        Karras et al. 2023, arXiv:2312.02696 (EMA profiles).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ema: bool = True,
        ema_decay: float = 0.999,
        ema_warmup_steps: int = 100,
        ema_update_every: int = 1,
        ema_power: float = 0.75,
        sample_method: str = "euler",
        sample_steps: int | None = 50,
        val_num_samples: int = 1000,
        val_metrics: list[str] | None = None,
        val_seed: int = 0,
        class_cond: bool = False,
        cond_drop_prob: float = 0.0,
        guidance_scale: float | None = None,
        prefetch_pairs: bool = False,
        skip_nonfinite: bool = False,
        cuda_graph: bool | Literal["auto"] = False,
        model_spec: dict | None = None,
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be a flowgen Objective, got {type(objective).__name__}")
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if not (0.0 <= ema_decay < 1.0):
            raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay!r}")
        if not (0.0 <= cond_drop_prob <= 1.0):
            raise ValueError(f"cond_drop_prob must lie in [0, 1], got {cond_drop_prob!r}")
        for name, value in (("ema_update_every", ema_update_every), ("val_num_samples", val_num_samples)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if sample_steps is not None and (not isinstance(sample_steps, int) or sample_steps < 1):
            raise ValueError(f"sample_steps must be a positive int or None, got {sample_steps!r}")
        from ..samplers import Method

        Method.parse(sample_method, "sample_method")  # an unknown sampler fails here, not at the first validation
        if guidance_scale is not None and (isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float))
                                           or not math.isfinite(guidance_scale)):
            raise ValueError(f"guidance_scale must be a finite number or None, got {guidance_scale!r}")
        known = {"w2", "mmd", "fd", "coverage"}
        if val_metrics is not None and not set(val_metrics) <= known:
            raise ValueError(f"val_metrics has unknown names {sorted(set(val_metrics) - known)}; expected some of {sorted(known)}")

        given = _given_hparams()
        if given is not None:
            self.save_hyperparameters(logger=True)
            if model_spec is None and isinstance(given.get("model"), dict) and "class_path" in given["model"]:
                model_spec = {"class_path": given["model"]["class_path"], "init_args": dict(given["model"].get("init_args") or {})}
        else:
            self.save_hyperparameters(ignore=["model", "objective", "optimizer", "lr_scheduler", "model_spec"])
        if model_spec is None:
            model_spec = module_spec(model)
            if model_spec is None:
                warnings.warn(
                    f"cannot describe {type(model).__name__} by its class path and init args; the checkpoint will "
                    f"need the model passed to flowgen.checkpoint.load_generator(model=...). Pass model_spec= to fix.",
                    stacklevel=2,
                )
        self.model_spec = to_plain(model_spec) if model_spec is not None else None
        self._objective_config = to_plain(given.get("objective")) if given and isinstance(given.get("objective"), dict) else None

        self.model = model
        self.objective = objective
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        if ema:
            from ema_pytorch import EMA

            self.ema = EMA(model, beta=ema_decay, update_after_step=ema_warmup_steps, update_every=ema_update_every,
                           power=ema_power, include_online_model=False, use_foreach=True)
        else:
            self.ema = None
        self.sample_method, self.sample_steps = sample_method, sample_steps
        self.val_num_samples, self.val_metrics, self.val_seed = val_num_samples, val_metrics, int(val_seed)
        self.class_cond, self.cond_drop_prob, self.guidance_scale = bool(class_cond), float(cond_drop_prob), guidance_scale
        self.skip_nonfinite = bool(skip_nonfinite)
        if not isinstance(cuda_graph, bool) and cuda_graph != "auto":
            raise ValueError(f"cuda_graph must be a bool or 'auto', got {cuda_graph!r}")
        if cuda_graph is True and self.skip_nonfinite:
            raise ValueError("cuda_graph=True cannot skip non-finite batches (the captured step cannot branch on the "
                             "loss); set skip_nonfinite=False")
        self.cuda_graph = cuda_graph
        #: after a ``cuda_graph=True`` fit: its steps, how many ran eagerly (warm-up, odd shapes), whether it captured
        self.graph_stats: dict | None = None
        if not isinstance(prefetch_pairs, bool):
            raise ValueError(f"prefetch_pairs must be a bool, got {prefetch_pairs!r}")
        self.prefetch_pairs = prefetch_pairs and not isinstance(objective.coupling, IndependentCoupling)
        self._pair_pool = None  # the worker thread, created on the first training step
        self._pending_pair: tuple | None = None  # (data, labels, noise or its Future) of the next step
        self._pair_gen: torch.Generator | None = None
        self._pair_gen_state: Tensor | None = None

        self.data_shape: tuple[int, ...] | None = None
        self.num_classes: int | None = getattr(model, "num_classes", None) if class_cond else None
        self.skipped_nonfinite = 0
        self.last_samples: Tensor | None = None
        self.last_reference: Tensor | None = None
        self.last_metrics: dict[str, float] = {}
        self._pending_rng: dict | None = None
        self._hot = {"loss_sum": None, "loss_n": 0, "skipped": False, "ema_step": None}
        self._nonfinite = NonFiniteTracker()
        self._val_ref: list[Tensor] = []
        self._val_labels: list[Tensor] = []
        self._val_loss: list[Tensor] = []

    # ------------------------------------------------------------------ properties
    @property
    def path(self):
        """The probability path of the objective."""
        return self.objective.path

    @property
    def prediction(self):
        """What the network predicts (:class:`~flowgen.Prediction`)."""
        return self.objective.prediction

    @property
    def generator_model(self) -> nn.Module:
        """The network to sample with: the EMA copy when EMA is on, else the trained network."""
        return self.ema.ema_model if self.ema is not None else self.model

    @property
    def weights_prefix(self) -> str:
        return "ema.ema_model." if self.ema is not None else "model."

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.model(x_t, t) if cond is None else self.model(x_t, t, cond)

    def _apply(self, fn, *args, **kwargs):
        self._hot.pop("ema_pairs", None)  # .to()/.cuda()/.half() may replace the tensors the EMA step holds
        self._hot.pop("graph", None)  # and those a captured step reads
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        # on CUDA the default Adam is the fused one: one kernel per step instead of a dozen foreach launches
        fused = {"fused": True} if params and all(p.is_cuda and p.is_floating_point() for p in params) else {}
        if self.optimizer_factory is not None:
            opt = self.optimizer_factory(params)
        elif self.weight_decay > 0:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, **fused)
        else:
            opt = torch.optim.Adam(params, lr=self.lr, **fused)
        if self.lr_scheduler_factory is None:
            return opt
        sched = self.lr_scheduler_factory(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def _cond(self, labels: Tensor | None, generator=None) -> Tensor | None:
        if not self.class_cond:
            return None
        if labels is None:
            raise ValueError("class_cond=True but the batches carry no labels")
        if self.cond_drop_prob > 0:
            from ..nn import drop_labels

            null = getattr(self.model, "null_class", None)
            if null is None:
                raise ValueError("cond_drop_prob > 0 needs a model with a null_class attribute (e.g. flowgen.nn.MLP(num_classes=...))")
            labels = drop_labels(labels, p=self.cond_drop_prob, null_class=null, generator=generator)
        return labels

    def training_step(self, batch, batch_idx: int):
        data, labels = _unpack(batch)
        hot = self._hot  # plain dict: per-step state without nn.Module.__setattr__ costs
        if self.data_shape is None:
            self.data_shape = tuple(data.shape[1:])
        noise = None
        if self.prefetch_pairs:
            item = self._advance_pairs(data, labels)
            if item is None:  # the pipeline's first batch: nothing is paired yet
                hot["skipped"] = True
                return None
            data, labels, noise = item
        graph = hot.get("graph")
        if graph is not None:
            if noise is None and not isinstance(self.objective.coupling, IndependentCoupling):
                noise = self._step_objective(data.device).pair(data)  # the coupling runs eagerly, before the replay
            loss = None  # forward, backward and the optimizer step are the replay; Lightning has nothing to do
            if graph.captures_next:
                self._resolve_pending_pair()  # the worker thread is idle while the step is captured
            detached = graph(data, labels if self.class_cond else None, noise)
            if hot["loss_sum"] is None:
                detached = detached.clone()  # the replay's output buffer is overwritten by the next replay
        else:
            loss = self._compute_loss(data, labels, noise)
            detached = loss.detach()
        hot["skipped"] = False
        if detached.device.type == "cpu":  # a host read is free here: check and accumulate on the host
            value = detached.item()
            finite = math.isfinite(value)
        elif self.skip_nonfinite:  # must decide before the optimizer step: one device sync
            value, finite = detached, bool(torch.isfinite(detached))
        else:  # recorded on the device, checked when logs/checkpoints/validation need the host anyway
            self._nonfinite.track(detached, self.global_step)
            value, finite = detached, True
        if not finite:
            if not self.skip_nonfinite:
                self._raise_nonfinite(self.global_step, detached)
            self.skipped_nonfinite += 1
            hot["skipped"] = True
            self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), on_step=True, on_epoch=False,
                     batch_size=data.shape[0])
            return None
        hot["loss_sum"] = value if hot["loss_sum"] is None else hot["loss_sum"] + value
        hot["loss_n"] += 1
        if self._should_log():
            self._check_deferred_nonfinite()
            mean = hot["loss_sum"] / hot["loss_n"]
            if isinstance(mean, Tensor):
                # logged as a host tensor: Lightning reads progress-bar values back on *every* step,
                # which for a device tensor is a synchronisation per step; here it is one per log step
                mean = mean.detach().cpu()
            self.log("train/loss", mean, on_step=True, on_epoch=False, prog_bar=True, batch_size=data.shape[0])
            hot["loss_sum"], hot["loss_n"] = None, 0
        return loss

    def _compute_loss(self, data: Tensor, labels: Tensor | None, noise: Tensor | None) -> Tensor:
        """The objective's loss on a batch (the eager step, and the body a captured step records)."""
        cond = self._cond(labels) if self.class_cond else None
        objective = self._step_objective(data.device)
        # noise= only when prefetched, so objectives overriding compute(model, data, cond) keep working
        out = objective.compute(self.model, data, cond) if noise is None else \
            objective.compute(self.model, data, cond, noise=noise)
        return out.loss

    def _step_objective(self, device: torch.device) -> Objective:
        """The objective for a training step on ``device``.

        On the CPU, the objective itself. On an accelerator, a copy with ``check_finite=False``: its
        check reads the loss on the host, a device synchronisation per step. A non-finite loss is
        still caught: a :class:`NonFiniteTracker` records it on the device, and the run stops with
        :class:`NonFiniteLossError` naming that step at the next log, checkpoint or validation,
        before anything is written.
        """
        if device.type == "cpu" or not getattr(self.objective, "check_finite", False):
            return self.objective
        fast = self._hot.get("device_objective")
        if fast is None or fast[0] is not self.objective:
            import copy

            clone = copy.copy(self.objective)
            clone.check_finite = False
            fast = self._hot["device_objective"] = (self.objective, clone)
        return fast[1]

    def _advance_pairs(self, data: Tensor, labels: Tensor | None):
        """Queue the pairing of this batch; return the previous batch with its noise (``None`` at the start)."""
        if self._pair_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pair_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowgen-pairs")
        if self._pair_gen is None or self._pair_gen.device != data.device:
            self._pair_gen = torch.Generator(device=data.device)
            if self._pair_gen_state is not None:
                self._pair_gen.set_state(self._pair_gen_state)
                self._pair_gen_state = None
            else:
                self._pair_gen.manual_seed(int(torch.randint(2**62, (1,))))
        future = self._pair_pool.submit(self._step_objective(data.device).pair, data, self._pair_gen)
        previous, self._pending_pair = self._pending_pair, (data, labels, future)
        if previous is None:
            return None
        d, lab, noise = previous
        noise = noise.result() if not isinstance(noise, Tensor) else noise
        return d.to(data.device), (lab.to(data.device) if lab is not None else None), noise.to(data.device)

    def _resolve_pending_pair(self) -> None:
        """Wait for the queued pairing (its noise and the generator state are then final)."""
        if self._pending_pair is not None and not isinstance(self._pending_pair[2], Tensor):
            d, lab, future = self._pending_pair
            self._pending_pair = (d, lab, future.result())

    def _stop_pairing(self) -> None:
        if self._pair_pool is not None:
            self._resolve_pending_pair()
            self._pair_pool.shutdown(wait=True)
            self._pair_pool = None

    def _should_log(self) -> bool:
        try:
            return bool(self.trainer._logger_connector.should_update_logs)
        except (AttributeError, RuntimeError):
            return True

    def _check_deferred_nonfinite(self) -> None:
        self._nonfinite.check(self._raise_nonfinite)

    def _raise_nonfinite(self, step: int, loss: Tensor | None):
        what = f" ({float(loss)})" if loss is not None else ""
        raise NonFiniteLossError(
            f"non-finite training loss{what} at global step {step}; training stopped. Lower the learning rate, "
            f"check the data for NaN/Inf, or set skip_nonfinite=True (--model.skip_nonfinite true) to skip such batches"
        )

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        if self._hot.get("graph") is not None:
            # training_step (inside the closure) replays the captured step, optimizer step included
            if not self._hot.get("graph_warned"):
                self._hot["graph_warned"] = True
                with warnings.catch_warnings():  # Lightning's one-off note that training_step returned None
                    warnings.filterwarnings("ignore", message=".*training_step.* returned .*None")
                    optimizer_closure()
            else:
                optimizer_closure()
        else:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.ema is not None and not self._hot["skipped"]:
            self._update_ema()

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        if self._hot.get("graph") is None:  # a captured step overwrites its gradient buffers itself
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def _setup_graph(self) -> None:
        """Check that this run can capture its step, prepare the optimizer, and create the :class:`StepGraph`."""
        from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, Precision
        from lightning.pytorch.strategies import SingleDeviceStrategy

        from ..capture import StepGraph, make_capturable

        trainer = self.trainer
        device = trainer.strategy.root_device
        optimizer = trainer.optimizers[0] if len(trainer.optimizers) == 1 else None
        why = None
        if device.type != "cuda" or type(trainer.strategy) is not SingleDeviceStrategy:
            why = (f"cuda_graph=True needs training on one CUDA device; this run uses {type(trainer.strategy).__name__} "
                   f"on {device} (set cuda_graph=False: --model.cuda_graph false)")
        elif type(trainer.precision_plugin) not in (Precision, HalfPrecision, DoublePrecision):
            why = (f"cuda_graph=True supports the 32-true, 64-true, bf16-true and 16-true precisions, not "
                   f"{trainer.precision!r} (mixed precision's autocast cache and loss scaling cannot be captured)")
        elif trainer.accumulate_grad_batches != 1:
            why = f"cuda_graph=True needs accumulate_grad_batches=1, got {trainer.accumulate_grad_batches}"
        elif optimizer is None:
            why = f"cuda_graph=True needs one optimizer, got {len(trainer.optimizers)}"
        elif self.skip_nonfinite:
            why = "cuda_graph cannot skip non-finite batches (the captured step cannot branch on the loss)"
        elif not all("capturable" in g for g in optimizer.param_groups):
            why = f"cuda_graph=True needs a capturable optimizer; {type(optimizer).__name__} has no capturable option"
        if why is not None:
            if self.cuda_graph == "auto":
                return  # train eagerly
            raise ValueError(why)
        make_capturable(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        clip = None
        if trainer.gradient_clip_val:
            value, algorithm = float(trainer.gradient_clip_val), trainer.gradient_clip_algorithm or "norm"
            if algorithm == "norm":
                def clip(grads_of):
                    torch.nn.utils.clip_grad_norm_(grads_of, value, foreach=True)
            else:
                def clip(grads_of):
                    torch.nn.utils.clip_grad_value_(grads_of, value, foreach=True)

        self._hot["graph"] = StepGraph(self._compute_loss, optimizer, params, clip=clip, warmup=3)

    def _update_ema(self) -> None:
        """ema-pytorch's ``update()`` without its host reads (see :func:`update_ema`)."""
        update_ema(self.ema, self._hot, self._strategy())

    def _ema_pairs(self):
        """The cached ``(ema, online)`` tensor lists of :func:`update_ema` (``None``: ema-pytorch's own method)."""
        return ema_pairs(self.ema, self._hot, self._strategy())

    def _strategy(self):
        return getattr(self._trainer, "strategy", None) if self._trainer is not None else None

    # ------------------------------------------------------------------ hooks: fit / resume
    def on_train_start(self) -> None:
        if not self._hot.pop("pair_from_checkpoint", False):
            self._pending_pair = None  # a new fit starts its own pipeline (a resumed one continues it)
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)
            self._pending_rng = None
        elif self.trainer.world_size > 1:
            # give every rank its own stream of times and noise (same base seed on all ranks otherwise)
            torch.manual_seed((torch.initial_seed() + 7919 * self.trainer.global_rank) % (2**63))
        if self.ema is not None:
            self._hot["ema_step"] = int(self.ema.step)
            self._hot["ema_initted"] = bool(self.ema.initted)
        self._hot.pop("ema_pairs", None)
        self._nonfinite.reset()
        self._hot.pop("graph", None)
        if self.cuda_graph:
            self._setup_graph()

    def on_train_end(self) -> None:
        graph = self._hot.pop("graph", None)
        if graph is not None:
            self.graph_stats = {"steps": graph.calls, "eager_steps": graph.eager_calls, "captured": graph.graph is not None}
        self._stop_pairing()
        self._check_deferred_nonfinite()

    def _datamodule(self):
        trainer = getattr(self, "_trainer", None)
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def metadata(self) -> dict:
        """The plain-data ``checkpoint["flowgen"]`` entry for the current state."""
        dm = self._datamodule()
        shape = self.data_shape or (tuple(dm.data_shape) if dm is not None and getattr(dm, "data_shape", None) else None)
        num_classes = self.num_classes
        if self.class_cond and num_classes is None and dm is not None:
            num_classes = getattr(dm, "num_classes", None)
        extra = {
            "objective": self._objective_config if self._objective_config is not None else repr(self.objective),
            "skipped_nonfinite": int(self.skipped_nonfinite),
            "class_cond": self.class_cond,
            "guidance_scale": self.guidance_scale,
            "null_class": getattr(self.model, "null_class", None) if self.class_cond else None,
            "data": dm.describe() if dm is not None and hasattr(dm, "describe") else None,
            "global_step": int(self.global_step) if self._trainer is not None else 0,
        }
        return make_metadata(
            path=self.path, prediction=self.prediction, model_spec=self.model_spec, data_shape=shape,
            weights_prefix=self.weights_prefix, online_prefix="model.", num_classes=num_classes, kind="teacher",
            sampler={"method": self.sample_method, "steps": self.sample_steps}, extra=extra,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._pending_pair is not None:
            self._resolve_pending_pair()
            d, lab, noise = self._pending_pair
            checkpoint[PREFETCH_KEY] = {
                "data": d.detach().cpu(), "labels": lab.detach().cpu() if lab is not None else None,
                "noise": noise.detach().cpu(),
                "generator": self._pair_gen.get_state() if self._pair_gen is not None else self._pair_gen_state,
            }
        self._check_deferred_nonfinite()
        if self.cuda_graph:  # a captured step's tensor learning rates, saved as numbers (loadable anywhere)
            from ..capture import portable_optimizer_state

            for state in checkpoint.get("optimizer_states", []):
                portable_optimizer_state(state)
            for state in checkpoint.get("lr_schedulers", []):
                if isinstance(state, dict) and "_last_lr" in state:
                    state["_last_lr"] = [float(v) if isinstance(v, Tensor) else v for v in state["_last_lr"]]
        meta = self.metadata()
        meta["rng"] = capture_rng_state()
        checkpoint[METADATA_KEY] = meta

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        pending = checkpoint.get(PREFETCH_KEY)
        if pending is not None:
            self._pending_pair = (pending["data"], pending["labels"], pending["noise"])
            self._pair_gen, self._pair_gen_state = None, pending["generator"]
            self._hot["pair_from_checkpoint"] = True
        meta = checkpoint.get(METADATA_KEY) or {}
        self._pending_rng = meta.get("rng")
        self.skipped_nonfinite = int(meta.get("skipped_nonfinite", 0) or 0)
        if meta.get("data_shape") is not None:
            self.data_shape = tuple(meta["data_shape"])
        self._hot["ema_step"] = None

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._check_deferred_nonfinite()
        self._val_ref, self._val_labels, self._val_loss = [], [], []

    def validation_step(self, batch, batch_idx: int):
        data, labels = _unpack(batch)
        gen = torch.Generator(device=data.device).manual_seed(self.val_seed * 1_000_003 + batch_idx)
        cond = labels if (self.class_cond and labels is not None) else None
        out = self.objective.compute(self.generator_model, data, cond, generator=gen)
        self._val_loss.append(out.loss.detach() * data.shape[0])
        self._val_ref.append(data)
        if labels is not None:
            self._val_labels.append(labels)

    def on_validation_epoch_end(self) -> None:
        if not self._val_ref:
            return
        ref = torch.cat(self._val_ref)
        n = ref.shape[0]
        metrics = {"val/loss": float(torch.stack(self._val_loss).sum()) / n}
        if not self.trainer.sanity_checking:
            n = min(n, self.val_num_samples)
            result = self.sample(n, generator_seed=self.val_seed, device=ref.device)
            samples = result.samples
            self.last_samples, self.last_reference = samples.detach(), ref[:n]
            metrics.update(self._metrics(samples, ref[:n]))
            metrics["val/nfe"] = float(result.nfe)
        self.last_metrics = metrics
        sync = self.trainer.world_size > 1  # every rank computes the same numbers; the mean keeps them
        for k, v in metrics.items():
            self.log(k, v, on_step=False, on_epoch=True, prog_bar=k in ("val/w2", "val/fd"), batch_size=n, sync_dist=sync)

    def _default_metrics(self, shape) -> list[str]:
        if self.val_metrics is not None:
            return list(self.val_metrics)
        return ["w2"] if tuple(shape) == (2,) else []

    def _metrics(self, samples: Tensor, ref: Tensor) -> dict[str, float]:
        out = {}
        names = self._default_metrics(samples.shape[1:])
        s, r = samples.detach().double().cpu(), ref.detach().double().cpu()
        if not bool(torch.isfinite(s).all()):
            return {f"val/{k}": float("nan") for k in names}
        if "w2" in names:
            from ..metrics import wasserstein2

            out["val/w2"] = float(wasserstein2(s.flatten(1), r.flatten(1)))
        if "mmd" in names:
            from ..metrics import mmd

            out["val/mmd"] = float(mmd(s.flatten(1), r.flatten(1)))
        if "fd" in names or "coverage" in names:
            # the classifier trains (and caches) on first use; Lightning validates under inference mode
            from ..metrics.classifier import pretrained_digits_classifier

            with torch.inference_mode(False), torch.enable_grad():
                pretrained_digits_classifier()
        if "fd" in names:
            from ..metrics import digits_frechet_distance

            out["val/fd"] = float(digits_frechet_distance(s.float(), r.float()))
        if "coverage" in names:
            from ..metrics import class_coverage

            out["val/coverage"] = float(class_coverage(s.float()).coverage)
        return out

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, num: int, *, method: str | None = None, steps: int | None = -1, cond: Tensor | None = None,
               generator_seed: int | None = None, device=None, guidance_scale: float | None = -1.0):
        """Draw ``num`` samples with the generator weights (EMA) and the configured sampler.

        Args:
            num: number of samples.
            method, steps: override the configured sampler (``steps=-1`` keeps the configured value).
            cond: ``(num,)`` labels for a class-conditional model (default: classes in turn).
            generator_seed: seed of the noise (default: the global RNG).
            device: where to sample (default: the module's device).
            guidance_scale: classifier-free guidance (``-1`` keeps the configured value).

        Returns:
            :class:`flowgen.samplers.SampleResult` with ``samples (num, *D)``, ``nfe``, ``grid``.
        """
        from ..samplers import sample

        if self.data_shape is None:
            dm = self._datamodule()
            if dm is None or not getattr(dm, "data_shape", None):
                raise ValueError("data_shape is unknown: train first or attach a data module")
            self.data_shape = tuple(dm.data_shape)
        device = torch.device(device) if device is not None else self.device
        gen = None
        if generator_seed is not None:
            gen = torch.Generator(device=device).manual_seed(int(generator_seed))
        net = self.generator_model
        weight = next(net.parameters(), None)  # float64 weights (precision="64-true") sample in float64
        dtype = torch.float64 if weight is not None and weight.dtype == torch.float64 else torch.float32
        noise = torch.randn((num, *self.data_shape), generator=gen, device=device, dtype=dtype)
        was_training = net.training
        net.eval()
        model = _CastInputs.wrap(net)
        kwargs = {}
        if self.class_cond:
            k = self.num_classes or getattr(net, "num_classes", None)
            if cond is None:
                if k is None:
                    raise ValueError("a class-conditional model needs cond or num_classes to sample")
                cond = torch.arange(num, device=device) % int(k)
            kwargs["cond"] = cond
            gs = self.guidance_scale if guidance_scale == -1.0 else guidance_scale
            if gs is not None and getattr(net, "null_class", None) is not None:
                kwargs["guidance_scale"] = gs
                kwargs["null_cond"] = torch.full_like(cond, int(net.null_class))
        try:
            method = method or self.sample_method
            steps = default_steps(method, self.sample_steps) if steps == -1 else steps
            result = sample(model, self.path, noise, prediction=self.prediction, method=method, steps=steps,
                            generator=gen, **kwargs)
        finally:
            net.train(was_training)
        return result
