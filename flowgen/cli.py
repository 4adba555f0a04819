"""The ``flowgen`` command line.

Subcommands:

* ``flowgen fit --config recipes/<recipe>.yaml [--trainer.max_steps N] [--data.path F] [--seed_everything S]
  [--ckpt_path last]`` — LightningCLI over :class:`flowgen.lightning.FlowModule` and the data modules of
  :mod:`flowgen.lightning.data` (also ``validate``). Checkpoints go to ``<trainer.default_root_dir>/checkpoints``
  (``last.ckpt`` kept current), CSV logs (and TensorBoard if installed) to ``<root>/logs/version_N``.
* ``flowgen sample --ckpt C [--steps K] [--method M] --num N --out samples.npy|samples.pt|grid.png`` — streams
  the samples in batches (bounded memory).
* ``flowgen evaluate --ckpt C [--steps K ...] [--method M ...] [--num N] [--json out.json]`` — a metrics table
  (W2 / MMD / log-likelihood / digits FD and coverage, NFE, time) printed and written as JSON.
* ``flowgen quickstart`` — train a teacher on a built-in data set, sample, evaluate and plot, in minutes on a CPU.
* ``flowgen distill`` — reserved for the distillers (dispatched to ``flowgen.distill.cli.main`` when present).

Errors in the input (unknown config keys, wrong types, bad files, unsafe checkpoints) are reported as one
line naming the key or file; set ``FLOWGEN_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time

__all__ = ["main", "FlowgenCLI", "run_lightning_cli"]

_USAGE = """usage: flowgen <command> [options]

commands:
  fit         train with a YAML recipe (LightningCLI):  flowgen fit --config recipes/rf_moons.yaml
  validate    run validation of a recipe/checkpoint (LightningCLI)
  sample      draw samples from a checkpoint:           flowgen sample --ckpt last.ckpt --num 1000 --out s.npy
  evaluate    metrics table + JSON for a checkpoint:    flowgen evaluate --ckpt last.ckpt
  quickstart  train, sample, evaluate and plot a teacher on a built-in data set in minutes
  distill     distill a teacher into a few-step student (flowgen.distill)

run 'flowgen <command> --help' for the options of a command.
"""


class _UserError(Exception):
    """An error in the user's input: printed as one line."""


def _message(err: BaseException) -> str:
    """One readable message; jsonargparse's union errors are reduced to their reasons."""
    msg = str(err)
    if "Does not validate against any of the Union subtypes" in msg:
        reasons = [ln.strip()[2:] for ln in msg.splitlines() if ln.strip().startswith("- ")]
        reasons = [r for r in reasons if "NoneType" not in r]
        if reasons:
            msg = "; ".join(reasons)
    # torch's C++ errors append a native stack trace ("frame #0: c10::Error ..."): keep the message only
    lines = [ln for ln in msg.splitlines() if ln.strip()]
    if any(ln.startswith("frame #") or "Exception raised from" in ln for ln in lines):
        msg = lines[0]
    return msg


def _fail(prog: str, err: BaseException) -> int:
    if os.environ.get("FLOWGEN_DEBUG"):
        raise err
    print(f"{prog}: error: {_message(err)}", file=sys.stderr)
    return 1


# =============================================================================================
# fit / validate: LightningCLI
# =============================================================================================
def _lightning_cli_class():
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
    from lightning.pytorch.cli import LightningCLI
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

    from .lightning.callbacks import SamplePlotCallback, TrainingClock
    from .lightning.checkpoint_io import SafeCheckpointIO
    from .lightning.trainer import default_loggers

    class FlowgenCLI(LightningCLI):
        """LightningCLI with flowgen's defaults: step checkpoints in ``<root>/checkpoints`` with ``last.ckpt``,
        :class:`SafeCheckpointIO`, CSV logs, a light progress bar, sample figures and a training clock."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults({
                "checkpoint.save_last": True,
                "checkpoint.every_n_train_steps": 500,
                "checkpoint.filename": "step={step}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.save_top_k": 1,
            })
            parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath",
                                  compute_fn=lambda root: os.path.join(root or ".", "checkpoints"))

        def _set_seed(self) -> None:
            seed = self._get(self.config, "seed_everything")
            if seed is not None and not isinstance(seed, bool) and (not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1):
                raise ValueError(f"seed_everything must be true, false or an integer in [0, {2**32 - 1}], got {seed!r}")
            super()._set_seed()

        def instantiate_trainer(self, **kwargs):
            cfg = self._get(self.config_init, "trainer", default={}) or {}
            root = cfg.get("default_root_dir") or "."
            plugins = cfg.get("plugins")
            plugins = [] if plugins is None else (list(plugins) if isinstance(plugins, (list, tuple)) else [plugins])
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                plugins.append(SafeCheckpointIO())
            kwargs["plugins"] = plugins
            if cfg.get("logger") in (None, True):
                kwargs["logger"] = default_loggers(root)
            callbacks = list(cfg.get("callbacks") or [])
            extra = []
            if cfg.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
                extra.append(TQDMProgressBar(refresh_rate=20))
            if not any(isinstance(c, SamplePlotCallback) for c in callbacks):
                extra.append(SamplePlotCallback())
            if not any(isinstance(c, TrainingClock) for c in callbacks):
                extra.append(TrainingClock())
            if extra:
                kwargs["callbacks"] = callbacks + extra
            return super().instantiate_trainer(**kwargs)

    return FlowgenCLI


def run_lightning_cli(args: list[str] | None, *, model_class=None, datamodule_class=None, subclass_mode_model: bool = False,
                      prog: str = "flowgen", run: bool = True):
    """Run flowgen's LightningCLI on ``args`` (e.g. ``["fit", "--config", "recipes/rf_moons.yaml"]``).

    Reusable by other flowgen commands (distillation passes its own module class).

    Returns:
        The ``LightningCLI`` object (``.model``, ``.datamodule``, ``.trainer``).
    """
    from .lightning import FlowModule
    from .lightning.data import WholeBatchDataModule

    cli_cls = _lightning_cli_class()
    return cli_cls(
        model_class or FlowModule,
        datamodule_class or WholeBatchDataModule,
        subclass_mode_model=subclass_mode_model,
        subclass_mode_data=True,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": prog},
    )


def _ckpt_path_arg(argv: list[str]) -> str | None:
    """The value of ``--ckpt_path`` in ``argv`` (``--ckpt_path X`` or ``--ckpt_path=X``), if any."""
    for i, a in enumerate(argv):
        if a == "--ckpt_path" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--ckpt_path="):
            return a.split("=", 1)[1]
    return None


def _config_text(argv: list[str]) -> str:
    """The command line and the text of every ``--config`` file it names (missing files are skipped)."""
    parts = list(argv)
    for i, a in enumerate(argv):
        name = argv[i + 1] if a == "--config" and i + 1 < len(argv) else (a.split("=", 1)[1] if a.startswith("--config=") else None)
        if name and os.path.isfile(name):
            with open(name, encoding="utf-8", errors="replace") as fh:
                parts.append(fh.read())
    return "\n".join(parts)


def _check_ckpt_class_paths(ckpt: dict, argv: list[str], source: str) -> None:
    """Refuse a checkpoint whose ``hyper_parameters`` name classes outside flowgen's trusted prefixes.

    LightningCLI turns a checkpoint's hyper-parameters into configuration (``--ckpt_path FILE``), and
    jsonargparse imports every ``class_path`` in it. A class is accepted when its module starts with a
    trusted prefix (:data:`flowgen.checkpoint.TRUSTED_MODULE_PREFIXES`, ``torch.optim.``,
    ``lightning.``) or when the user's own command line or ``--config`` file names it.
    """
    from .checkpoint import TRUSTED_MODULE_PREFIXES

    trusted = tuple(TRUSTED_MODULE_PREFIXES) + ("torch.optim.", "lightning.")
    allowed = _config_text(argv)
    bad = []

    def named(class_path: str) -> bool:  # the whole dotted name, not a fragment of a longer one
        return re.search(rf"(?<![\w.]){re.escape(class_path)}(?![\w.])", allowed) is not None

    def walk(obj, where):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in ("class_path", "_class_path") and isinstance(v, str) and not v.startswith(trusted) and not named(v):
                    bad.append(f"{where}[{k!r}] = {v!r}")
                walk(v, f"{where}[{k!r}]")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")

    walk(ckpt.get("hyper_parameters") or {}, "checkpoint['hyper_parameters']")
    if bad:
        raise ValueError(f"--ckpt_path {source}: {bad[0]} names a class outside the trusted modules "
                         f"({', '.join(trusted)}) that your command line and config do not name; refusing to import it. "
                         "Name the class in your --config to trust it")


def _cmd_lightning(argv: list[str]) -> int:
    import pickle

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from .checkpoint import CheckpointError, safe_load

    try:
        # LightningCLI reads --ckpt_path itself (torch.load, weights_only=True) before the Trainer's safe plugin:
        # check the file first, so an unsafe or damaged checkpoint gets flowgen's one-line refusal
        ckpt = _ckpt_path_arg(argv)
        if ckpt and ckpt not in ("last", "best", "hpc", "registry") and os.path.isfile(ckpt):
            _check_ckpt_class_paths(safe_load(ckpt), argv, ckpt)
        # LightningCLI warns when given args that equal the process's own; let it read them itself then
        run_lightning_cli(None if argv == sys.argv[1:] else argv)
    except SystemExit as exc:  # argparse / jsonargparse errors (they already printed the key)
        return int(exc.code) if isinstance(exc.code, int) else 2
    except (CheckpointError, ValueError, TypeError, FileNotFoundError, FloatingPointError, MisconfigurationException,
            pickle.UnpicklingError) as err:  # Lightning's own config checks (e.g. max_steps=-3) are user errors too
        return _fail(f"flowgen {argv[0]}", err)
    return 0


# =============================================================================================
# sample
# =============================================================================================
def _device(name: str | None):
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:  # torch: "Expected one of cpu, cuda, ... device type at start of device string"
        raise _UserError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, auto): {_message(err)}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise _UserError(f"--device {name}: CUDA is not available on this machine")
    return dev


def _load(args):
    from .checkpoint import load_generator

    trusted = tuple(args.trust_module or ())
    return load_generator(args.ckpt, map_location=args.device, weights=args.weights, trusted=trusted)


def _sampling_plan(meta: dict, method, steps):
    """``(method, steps)`` to use: the checkpoint's sampler fills what is not given; adaptive methods take no steps."""
    from .lightning.module import default_steps

    sampler = meta.get("sampler") or {}
    method = method or sampler.get("method") or "euler"
    if steps is None:
        steps = default_steps(method, sampler.get("steps") or 50)
    return method, steps


def _cond_for(meta: dict, model, lo: int, hi: int, class_label, device):
    import torch

    if not meta.get("class_cond"):
        if class_label is not None:
            raise _UserError("--class-label was given but the checkpoint's model is not class-conditional")
        return None, None
    k = meta.get("num_classes") or getattr(model, "num_classes", None)
    if class_label is not None:
        if k is not None and not (0 <= class_label < k):
            raise _UserError(f"--class-label must lie in [0, {k - 1}], got {class_label}")
        cond = torch.full((hi - lo,), int(class_label), device=device, dtype=torch.long)
    else:
        cond = torch.arange(lo, hi, device=device) % int(k)
    null = meta.get("null_class", getattr(model, "null_class", None))
    return cond, (None if null is None else torch.full_like(cond, int(null)))


def few_step_generator(model, meta: dict):
    """The checkpoint's own few-step sampler, if it has one, else ``None``.

    * ``meta["generator"]`` (a distilled student's :meth:`flowgen.distill.Generator.to_metadata`):
      rebuilt with :func:`flowgen.distill.generators.generator_from_metadata` around the network;
    * a network that defines ``sample(noise, steps=k)`` itself.
    """
    spec = meta.get("generator")
    if isinstance(spec, dict):
        from .distill.generators import generator_from_metadata

        return generator_from_metadata(model, spec)
    if callable(getattr(model, "sample", None)):
        return model
    return None


def generate(model, path, prediction, meta: dict, *, num: int, method=None, steps=None, batch_size: int = 10000,
             seed: int = 0, device="cpu", class_label=None, guidance_scale=None, progress: bool = False):
    """Yield ``(samples chunk, NFE per sample)`` for ``num`` samples, ``batch_size`` at a time.

    Distilled students (see :func:`few_step_generator`) are sampled with their own ``sample(noise,
    steps=k)`` unless a ``method`` is given (NFE counted by a forward hook on the network);
    everything else goes through :func:`flowgen.samplers.sample`.
    """
    import torch

    from .samplers import sample

    shape = tuple(meta.get("data_shape") or (meta.get("generator") or {}).get("event_shape") or ())
    if not shape:
        raise _UserError("the checkpoint has no data_shape metadata; cannot draw noise of the right shape")
    own = few_step_generator(model, meta) if method is None else None
    if own is not None and steps is None:
        steps = getattr(own, "default_steps", None) or (meta.get("sampler") or {}).get("steps") or 1
    else:
        method, steps = _sampling_plan(meta, method, steps)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    gs = guidance_scale if guidance_scale is not None else meta.get("guidance_scale")
    bar = None
    if progress and num > batch_size:
        from tqdm.auto import tqdm

        bar = tqdm(total=num, unit="sample", desc="sampling", leave=False)
    calls = [0]
    hook = None
    if own is not None and isinstance(model, torch.nn.Module):
        hook = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        for lo in range(0, num, batch_size):
            hi = min(lo + batch_size, num)
            noise = torch.randn((hi - lo, *shape), generator=gen, device=device)
            cond, null = _cond_for(meta, model, lo, hi, class_label, device)
            with torch.no_grad():
                if own is not None:
                    calls[0] = 0
                    kw = {"cond": cond} if cond is not None else {}
                    out = own.sample(noise, steps=steps, **kw)
                    x = out.samples if hasattr(out, "samples") else out
                    nfe = int(getattr(out, "nfe", calls[0] if hook is not None else steps))
                else:
                    kw = {}
                    if cond is not None:
                        kw["cond"] = cond
                        if gs is not None and null is not None:
                            kw.update(guidance_scale=gs, null_cond=null)
                    res = sample(model, path, noise, prediction=prediction, method=method, steps=steps, generator=gen, **kw)
                    x, nfe = res.samples, res.nfe
            if bar is not None:
                bar.update(hi - lo)
            yield x, nfe
    finally:
        if hook is not None:
            hook.remove()
        if bar is not None:
            bar.close()


def _cmd_sample(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="flowgen sample", description="Draw samples from a flowgen checkpoint.")
    p.add_argument("--ckpt", required=True, help="checkpoint file (teacher or student)")
    p.add_argument("--num", type=int, default=1000, help="number of samples")
    p.add_argument("--out", default="samples.npy", help="output: .npy (streamed), .pt, or .png (scatter / image grid)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--method", default=None, help="sampler method: euler, heun, rk4, ddim, dpm_solver_pp_2m, dopri5, ...")
    p.add_argument("--batch-size", type=int, default=10000, help="samples per chunk (bounded memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, or auto")
    p.add_argument("--weights", choices=("ema", "online"), default="ema")
    p.add_argument("--class-label", type=int, default=None, help="class for a class-conditional model (default: all in turn)")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--trust-module", action="append", help="module prefix whose model classes may be built")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        return _sample(args)
    except Exception as err:  # noqa: BLE001 - user-facing one-line errors
        if isinstance(err, (_UserError, ValueError, TypeError, FileNotFoundError, ImportError)):
            return _fail("flowgen sample", err)
        raise


def _sample(args) -> int:
    import numpy as np
    import torch

    if args.num < 1:
        raise _UserError(f"--num must be >= 1, got {args.num}")
    if args.batch_size < 1:
        raise _UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.steps is not None and args.steps < 1:
        raise _UserError(f"--steps must be >= 1, got {args.steps}")
    ext = os.path.splitext(args.out)[1].lower()
    if ext not in (".npy", ".pt", ".png"):
        raise _UserError(f"--out must end in .npy, .pt or .png, got {args.out!r}")
    args.device = _device(args.device)
    model, path, prediction, meta = _load(args)
    shape = tuple(meta.get("data_shape") or ())
    t0 = time.perf_counter()
    it = generate(model, path, prediction, meta, num=args.num, method=args.method, steps=args.steps,
                  batch_size=args.batch_size, seed=args.seed, device=args.device, class_label=args.class_label,
                  guidance_scale=args.guidance_scale, progress=not args.no_progress)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    nfe = 0
    if ext == ".npy":
        tmp = args.out + ".tmp.npy"
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(args.num, *shape))
        lo = 0
        for x, n in it:
            arr[lo:lo + x.shape[0]] = x.float().cpu().numpy()
            lo += x.shape[0]
            nfe = max(nfe, n)
        arr.flush()
        del arr
        os.replace(tmp, args.out)
    else:
        parts = []
        for x, n in it:
            parts.append(x.float().cpu())
            nfe = max(nfe, n)
        samples = torch.cat(parts)
        if ext == ".pt":
            from .checkpoint import atomic_save

            atomic_save({"samples": samples}, args.out)
        else:
            from .lightning.callbacks import save_samples_figure

            if save_samples_figure(args.out, samples, title="SAMPLES") is None:
                raise _UserError(f"no figure for samples of shape {shape}: use .npy or .pt")
    dt = time.perf_counter() - t0
    own = few_step_generator(model, meta) if args.method is None else None
    if own is not None:
        method, steps = "generator", args.steps if args.steps is not None else getattr(own, "default_steps", None)
    else:
        method, steps = _sampling_plan(meta, args.method, args.steps)
    print(f"wrote {args.num} samples of shape {list(shape)} to {args.out} "
          f"(method={method}, steps={steps}, NFE={nfe} per sample, {dt:.2f} s)")
    return 0


# =============================================================================================
# evaluate
# =============================================================================================
def reference_data(meta: dict, *, num: int | None = None, reference: str | None = None):
    """Held-out data for evaluation: a tensor file, or the data module recorded in the checkpoint."""
    import importlib

    if reference:
        from .data.files import load_tensor_file

        ref = load_tensor_file(reference)
    else:
        spec = meta.get("data")
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise _UserError("the checkpoint does not record its data module; pass --reference data.npy|.pt")
        module, _, name = spec["class_path"].rpartition(".")
        if not module.startswith("flowgen."):
            raise _UserError(f"data module {spec['class_path']!r} is not a flowgen data module; pass --reference")
        cls = getattr(importlib.import_module(module), name)
        ref = cls(**dict(spec.get("init_args") or {})).reference()
    return ref if num is None else ref[:num]


def _toy_name(meta: dict) -> str | None:
    spec = meta.get("data") or {}
    if isinstance(spec, dict) and spec.get("class_path", "").endswith("ToyDataModule"):
        return (spec.get("init_args") or {}).get("name", "moons")
    return None


def evaluate_samples(samples, ref, meta: dict) -> dict:
    """Metrics of ``samples`` against held-out ``ref`` (same count): W2 and MMD for vectors, log-likelihood
    under a known toy density, digits FD and class coverage for 8×8 digit images."""
    import torch

    from .metrics import mmd, wasserstein2

    s, r = samples.detach().double().cpu(), ref.detach().double().cpu()[: samples.shape[0]]
    out: dict = {}
    if not bool(torch.isfinite(s).all()):
        out["nonfinite_samples"] = int((~torch.isfinite(s.flatten(1))).any(1).sum())
        return out
    shape = tuple(s.shape[1:])
    if shape == (1, 8, 8):
        from .metrics import class_coverage, digits_frechet_distance

        out["fd"] = float(digits_frechet_distance(s.float(), r.float()))
        out["coverage"] = float(class_coverage(s.float()).coverage)
    if len(shape) == 1 or s.shape[0] <= 5000:
        out["w2"] = float(wasserstein2(s.flatten(1), r.flatten(1)))
    out["mmd"] = float(mmd(s.flatten(1), r.flatten(1)))
    toy = _toy_name(meta)
    if toy in ("8gaussians", "gmm"):
        from .data.toys import toy_density
        from .metrics import log_likelihood

        out["log_likelihood"] = float(log_likelihood(s, toy_density(toy)))
    return out


def _floor(meta: dict, ref, n: int) -> dict:
    """The same distances between two independent draws of the data (toys only): the best reachable."""
    import torch

    from .metrics import wasserstein2

    toy = _toy_name(meta)
    if toy is None:
        return {}
    from .data.toys import sample_toy

    other = sample_toy(toy, n, generator=torch.Generator().manual_seed(987654321))
    return {"w2_floor": float(wasserstein2(other.double(), ref[:n].double()))}


def _format_table(rows: list[dict]) -> str:
    keys = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)
    cells = [[fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(keys), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(c) for c in cells]
    return "\n".join(out)


def sample_and_score(model, path, prediction, meta: dict, ref, plan, *, seed: int = 0, device="cpu",
                     batch_size: int = 10000, keep_samples: bool = False):
    """For each ``(method, steps)`` of ``plan``: draw ``len(ref)`` samples, time them, score them.

    Returns:
        ``(rows, samples)``: one metrics dict per plan entry, and the samples by plan entry (if kept).
    """
    import torch

    n = ref.shape[0]
    rows, kept = [], {}
    for m, k in plan:
        t0 = time.perf_counter()
        chunks, nfe = [], 0
        for x, c in generate(model, path, prediction, meta, num=n, method=m, steps=k, batch_size=batch_size,
                             seed=seed, device=device):
            chunks.append(x.cpu())
            nfe = max(nfe, c)
        dt = time.perf_counter() - t0
        samples = torch.cat(chunks)
        own = few_step_generator(model, meta) if m is None else None
        if own is not None:
            mm = "generator:" + str((meta.get("generator") or {}).get("generator", type(own).__name__))
            kk = k if k is not None else getattr(own, "default_steps", None)
        else:
            mm, kk = _sampling_plan(meta, m, k)
        row = {"method": mm, "steps": kk, "nfe": nfe, "seconds": round(dt, 4)}
        row.update(evaluate_samples(samples, ref, meta))
        rows.append(row)
        if keep_samples:
            kept[(m, k)] = samples
    return rows, kept


def evaluate_checkpoint(ckpt: str, *, methods=None, steps=None, num: int = 2000, seed: int = 0, device="cpu",
                        reference: str | None = None, batch_size: int = 10000, trusted=(), weights: str = "ema",
                        loaded=None) -> dict:
    """Sample a checkpoint with each (method, steps) and measure it against held-out data.

    Returns:
        ``{"checkpoint", "num_samples", "floor", "rows": [{"method", "steps", "nfe", "seconds", metrics…}]}``.
    """
    from .checkpoint import load_generator

    model, path, prediction, meta = loaded or load_generator(ckpt, map_location=device, weights=weights, trusted=tuple(trusted))
    ref = reference_data(meta, reference=reference)
    n = min(num, ref.shape[0])
    if n < 2:
        raise _UserError(f"need at least 2 reference samples, got {ref.shape[0]}")
    ref = ref[:n]
    from .lightning.module import default_steps

    plan = []
    for m in list(methods) if methods else [None]:
        for k in list(steps) if steps else [None]:
            entry = (m, k if m is None or k is None else default_steps(m, k))
            if entry not in plan:
                plan.append(entry)
    rows, _ = sample_and_score(model, path, prediction, meta, ref, plan, seed=seed, device=device, batch_size=batch_size)
    return {"checkpoint": os.fspath(ckpt) if ckpt is not None else None, "num_samples": n,
            "floor": _floor(meta, ref, n), "kind": meta.get("kind"), "path": meta.get("path"),
            "prediction": meta.get("prediction"), "rows": rows}


def _cmd_evaluate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="flowgen evaluate", description="Metrics of a checkpoint against held-out data.")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--steps", type=int, nargs="+", default=None, help="one or more step counts")
    p.add_argument("--method", nargs="+", default=None, help="one or more sampler methods")
    p.add_argument("--num", type=int, default=2000, help="samples (and held-out points) to compare")
    p.add_argument("--reference", default=None, help="held-out data file (.npy/.pt); default: the checkpoint's data module")
    p.add_argument("--json", default=None, help="where to write the JSON (default: <ckpt>.eval.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=10000)
    p.add_argument("--weights", choices=("ema", "online"), default="ema")
    p.add_argument("--trust-module", action="append")
    args = p.parse_args(argv)
    try:
        if args.num < 2:
            raise _UserError(f"--num must be >= 2, got {args.num}")
        if args.steps and any(k < 1 for k in args.steps):
            raise _UserError(f"--steps must be >= 1, got {args.steps}")
        device = _device(args.device)
        result = evaluate_checkpoint(args.ckpt, methods=args.method, steps=args.steps, num=args.num, seed=args.seed,
                                     device=device, reference=args.reference, batch_size=args.batch_size,
                                     trusted=tuple(args.trust_module or ()), weights=args.weights)
    except Exception as err:  # noqa: BLE001
        if isinstance(err, (_UserError, ValueError, TypeError, FileNotFoundError, ImportError)):
            return _fail("flowgen evaluate", err)
        raise
    out = args.json or os.path.splitext(args.ckpt)[0] + ".eval.json"
    _write_json(out, result)
    print(_format_table(result["rows"]))
    if result["floor"]:
        print("floor (two independent data draws): " + ", ".join(f"{k}={v:.4g}" for k, v in result["floor"].items()))
    print(f"wrote {out}")
    return 0


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


# =============================================================================================
# quickstart: the main job
# =============================================================================================
def _cmd_quickstart(argv: list[str]) -> int:
    from .data.toys import TOY_DATASETS

    p = argparse.ArgumentParser(
        prog="flowgen quickstart",
        description="Train a rectified-flow teacher on a built-in 2-D data set, sample it, evaluate it and plot it.")
    p.add_argument("--out", default=os.path.join("flowgen_runs", "quickstart"), help="run folder")
    p.add_argument("--dataset", default="moons", choices=list(TOY_DATASETS))
    p.add_argument("--objective", default="rectified_flow", choices=("rectified_flow", "ot_cfm"))
    p.add_argument("--max-steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay to 0 over the run)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1 on the CPU: this small MLP trains fastest single-threaded, "
                        "and it stays fast on a shared machine)")
    p.add_argument("--num", type=int, default=2000, help="samples for evaluation and plots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    try:
        return _quickstart(args)
    except Exception as err:  # noqa: BLE001
        if isinstance(err, (_UserError, ValueError, TypeError, FileNotFoundError)):
            return _fail("flowgen quickstart", err)
        raise
    finally:
        torch.set_num_threads(threads)


def _quickstart(args) -> int:
    import warnings

    import lightning.pytorch as pl
    import torch

    for flag, value in (("--max-steps", args.max_steps), ("--batch-size", args.batch_size), ("--num", args.num)):
        if value < 1:  # checked before any work: a bad value must not cost a training run
            raise _UserError(f"{flag} must be >= 1, got {value}")
    if args.threads is not None and args.threads < 1:
        raise _UserError(f"--threads must be >= 1, got {args.threads}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise _UserError(f"--lr must be a positive finite number, got {args.lr}")

    from .checkpoint import load_generator
    from .lightning import FlowModule, ToyDataModule, make_trainer
    from .lightning.callbacks import save_samples_figure
    from .nn import MLP
    from .objectives import flow_matching, rectified_flow
    from .viz import scatter_png

    if args.max_steps < 1:
        raise _UserError(f"--max-steps must be >= 1, got {args.max_steps}")
    t_start = time.perf_counter()
    out = os.path.abspath(args.out)
    device = _device(args.device)
    accel = "gpu" if device.type == "cuda" else "cpu"
    print(f"flowgen quickstart: {args.objective} teacher on '{args.dataset}', {args.max_steps} steps of batch "
          f"{args.batch_size} on {device.type}; outputs in {out}")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*modules in eval mode.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    elif args.threads:
        torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    objective = rectified_flow() if args.objective == "rectified_flow" else flow_matching(coupling="ot")
    steps_total = args.max_steps
    module = FlowModule(MLP(2, hidden=256, depth=3), objective, lr=args.lr, ema_decay=0.999, ema_warmup_steps=100,
                        lr_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps_total),
                        sample_method="euler", sample_steps=50, val_num_samples=1000,
                        model_spec={"class_path": "flowgen.nn.MLP", "init_args": {"dim": 2, "hidden": 256, "depth": 3}})
    data = ToyDataModule(args.dataset, batch_size=args.batch_size, val_size=max(args.num, 1000), batches_per_epoch=1000)
    trainer = make_trainer(out, max_steps=args.max_steps, checkpoint_every=max(1, min(1000, args.max_steps)),
                           val_every=args.max_steps, progress=not args.no_progress, accelerator=accel, devices=1,
                           log_every_n_steps=50)
    t0 = time.perf_counter()
    trainer.fit(module, data)
    train_s = time.perf_counter() - t0
    ckpt = os.path.join(out, "checkpoints", "last.ckpt")
    print(f"trained in {train_s:.1f} s ({1000 * train_s / args.max_steps:.2f} ms/step); checkpoint {ckpt}")

    # evaluate from the checkpoint alone (as `flowgen evaluate` does)
    loaded = load_generator(ckpt, map_location=device)
    t0 = time.perf_counter()
    plan = [("euler", 1), ("euler", 4), ("euler", 16), ("euler", 100), ("heun", 8), ("dopri5", None)]
    ref = reference_data(loaded.metadata)[: args.num]
    rows, samples_by = sample_and_score(*loaded, ref, plan, seed=args.seed, device=device, keep_samples=True)
    result = {"checkpoint": ckpt, "rows": rows, "floor": _floor(loaded.metadata, ref, ref.shape[0])}
    eval_s = time.perf_counter() - t0
    result.update(num_samples=args.num, train_seconds=round(train_s, 2), eval_seconds=round(eval_s, 2),
                  dataset=args.dataset, objective=args.objective, max_steps=args.max_steps)

    figures = os.path.join(out, "figures")
    best = samples_by[("dopri5", None)]
    f1 = save_samples_figure(os.path.join(figures, "samples_dopri5.png"), best, ref, title="DOPRI5")
    panels = [("DATA", [(ref, (0.45, 0.45, 0.45))])]
    for (method, steps), s in samples_by.items():
        if (method, steps) in (("euler", 1), ("euler", 4), ("euler", 16), ("dopri5", None)):
            panels.append((f"{method} {steps}" if steps else method, [(s, (0.12, 0.47, 0.71))]))
    f2 = scatter_png(os.path.join(figures, "samples_vs_steps.png"), panels, size=240)
    metrics_path = os.path.join(out, "metrics.json")
    _write_json(metrics_path, result)
    np_path = os.path.join(out, "samples_dopri5.npy")
    import numpy as np

    np.save(np_path, best.numpy().astype(np.float32))
    total = time.perf_counter() - t_start

    print()
    print(_format_table(rows))
    if result.get("floor"):
        print("floor (two independent data draws): " + ", ".join(f"{k}={v:.4g}" for k, v in result["floor"].items()))
    logs = trainer.loggers[0].log_dir if trainer.loggers else None
    print()
    print(f"flowgen quickstart finished in {total:.1f} s (train {train_s:.1f} s, evaluate {eval_s:.1f} s). Outputs:")
    print(f"  checkpoint   {ckpt}")
    print(f"  metrics      {metrics_path}")
    print(f"  samples      {np_path}")
    print(f"  figures      {f1}")
    print(f"               {f2}")
    if logs:
        print(f"  logs (CSV)   {os.path.join(logs, 'metrics.csv')}")
    print(f"next: flowgen sample --ckpt {ckpt} --method dopri5 --num 10000 --out samples.png")
    return 0


# =============================================================================================
# distill
# =============================================================================================
def _cmd_distill(argv: list[str]) -> int:
    """``flowgen distill``: implemented by the distillers (``flowgen.distill_cli.main``)."""
    from .distill_cli import main as distill_main

    return int(distill_main(argv) or 0)


# =============================================================================================
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``flowgen`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_USAGE)
        return 0 if argv else 2
    if argv[0] in ("--version", "version"):
        from . import __version__

        print(f"flowgen {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd in ("fit", "validate"):
        return _cmd_lightning([cmd, *rest])
    handlers = {"sample": _cmd_sample, "evaluate": _cmd_evaluate, "quickstart": _cmd_quickstart, "distill": _cmd_distill}
    if cmd not in handlers:
        print(f"flowgen: error: unknown command {cmd!r}\n\n{_USAGE}", file=sys.stderr)
        return 2
    return handlers[cmd](rest)


def __getattr__(name):  # lazy: FlowgenCLI needs Lightning's CLI extras
    if name == "FlowgenCLI":
        return _lightning_cli_class()
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main())
