"""GPU overhead of flowgen's sampling and training against bare loops, CUDA-graph floors and peers.

Run on a machine with a CUDA GPU (peers optional: torchdiffeq, flow_matching, diffusers)::

    python benchmarks/gpu_overhead.py [--quick]

Sampling (64 Euler steps of the 3×256 MLP of ``sampler_overhead.py``, float32, no_grad), per batch:

* ``bare``: the hand-written eager loop ``x = x + dt * model(x, t)``;
* ``bare_captured``: the same loop recorded once as a CUDA graph and replayed — the *captured floor*;
* ``flowgen``: ``flowgen.samplers.sample(...)`` (eager, the whole public call);
* ``flowgen_captured``: :class:`flowgen.samplers.CapturedSampler` replay (copy in, replay, copy out,
  finiteness check);
* ``torchdiffeq`` / ``flow_matching`` / ``diffusers``: the peers' eager loops, as in ``sampler_overhead.py``.

Each figure is the median over interleaved rounds of one call's wall time, with the device
synchronised before and after.

Training (``flowgen.nn.MLP(2)``, moons drawn on the device, Adam), per batch, ms per step over a
window of steps after warm-up (device synchronised at both ends):

* ``bare``: a hand-written rectified-flow loss and optimiser step (``torch.optim.Adam``, its default
  foreach implementation); ``bare_fused``: the same with ``Adam(fused=True)``, the optimiser
  ``FlowModule`` uses on CUDA;
* ``objective``: the same loop with ``flowgen.objectives.rectified_flow()``;
* ``lightning_floor``: the bare loss in a minimal LightningModule, with flowgen's Trainer and
  :class:`flowgen.lightning.ToyDataModule` — what Lightning's loop alone costs;
* ``flowmodule`` / ``flowmodule_no_ema``: :class:`flowgen.lightning.FlowModule` under a Lightning
  ``Trainer`` with :class:`flowgen.lightning.ToyDataModule` (batches drawn on the device);
* ``plain_lightning``: a plain LightningModule fed by a ``DataLoader`` over a CPU tensor dataset
  (the pattern the issue measured);
* ``fm_independent`` / ``fm_sinkhorn`` / ``fm_exact_ot``: ``flow_matching(coupling=...)`` loops;
  ``fm_sinkhorn_prefetch``: the Sinkhorn loop with :func:`flowgen.objectives.prefetch_pairs`
  (pairing one batch ahead on a worker thread); exact OT only up to ``--exact-max-batch``;
* ``flowmodule_independent`` / ``flowmodule_sinkhorn_prefetch``: ``FlowModule`` with those objectives
  (``prefetch_pairs=True``);
* ``bare_graph``: the bare loop with its step (loss, backward, fused Adam) captured once by
  :class:`flowgen.capture.StepGraph` and replayed — the captured floor of training;
* ``flowmodule_graph`` (+ ``_independent``, ``_sinkhorn_prefetch``): ``FlowModule(cuda_graph=True)``,
  EMA, logging and Lightning's loop around the replayed step.

With ``--digits``, also ``FlowModule`` with the digits teacher's U-Net (``recipes/rf_digits.yaml``:
base 32 channels, mults [1, 2]) on :class:`flowgen.lightning.DigitsDataModule` (batch 128, drawn on
the device), eager and with ``cuda_graph=True``.

Writes ``benchmarks/results/gpu_overhead.json`` and ``.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from sampler_overhead import MLP, peer_contenders  # noqa: E402  (the CPU benchmark's MLP and peer loops)


def _sync():
    torch.cuda.synchronize()


def machine_info() -> dict:
    info = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "cpu_cores": os.cpu_count()}
    for mod in ("torchdiffeq", "flow_matching", "diffusers", "lightning"):
        try:
            info[mod] = getattr(__import__(mod), "__version__", "installed")
        except Exception as err:  # noqa: BLE001 - report why a peer is missing
            info[mod] = f"not importable ({type(err).__name__})"
    return info


# ------------------------------------------------------------------------------- sampling
def sampling_contenders(model, batch: int, steps: int, dev) -> dict:
    from flowgen.paths import RectifiedFlow
    from flowgen.samplers import CapturedSampler, sample

    path = RectifiedFlow()
    out = {}

    def bare(noise):
        x, n, b = noise, steps, noise.shape[0]
        dt = -1.0 / n
        for i in range(n):
            x = x + dt * model(x, torch.full((b,), 1.0 - i / n, device=dev))
        return x

    out["bare"] = bare

    static_in = torch.zeros(batch, 2, device=dev)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            bare(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = bare(static_in)

    def bare_captured(noise):
        static_in.copy_(noise)
        graph.replay()
        return static_out.clone()

    out["bare_captured"] = bare_captured
    out["flowgen"] = lambda noise: sample(model, path, noise, prediction="velocity", method="euler", steps=steps).samples
    captured = CapturedSampler(model, path, shape=(batch, 2), prediction="velocity", method="euler", steps=steps, device=dev)
    out["flowgen_captured"] = lambda noise: captured(noise).samples

    out.update(peer_contenders(model, steps, device=dev))
    return out


def time_sampling(batches, steps: int, rounds: int) -> dict:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = MLP(2).to(dev).eval()
    res = {}
    with torch.no_grad():
        for batch in batches:
            fns = sampling_contenders(model, batch, steps, dev)
            noise = torch.randn(batch, 2, device=dev)
            ref = fns["bare"](noise)
            check = {k: float((f(noise) - ref).abs().max()) for k, f in fns.items()}
            times = {k: [] for k in fns}
            for _ in range(3):
                for f in fns.values():
                    f(noise)
            _sync()
            for _ in range(rounds):
                order = list(fns)
                random.shuffle(order)
                for k in order:
                    _sync()
                    t0 = time.perf_counter()
                    fns[k](noise)
                    _sync()
                    times[k].append(time.perf_counter() - t0)
            med = {k: 1000 * statistics.median(v) for k, v in times.items()}
            res[str(batch)] = {"ms": med, "vs_captured_floor": {k: v / med["bare_captured"] for k, v in med.items()},
                               "vs_bare": {k: v / med["bare"] for k, v in med.items()}, "max_abs_diff_to_bare": check}
            print(f"sampling batch {batch}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items()), flush=True)
    return res


# ------------------------------------------------------------------------------- training
def _data(batch, gen, dev):
    from flowgen.data.toys import sample_toy

    return sample_toy("moons", batch, generator=gen, device=dev)


def _loop(step_fn, batch: int, steps: int, warm: int, *, fused: bool = False, prefetch=None) -> float:
    """ms per step of ``step_fn(model, data)`` over ``steps`` steps after ``warm`` warm-up steps.

    With ``prefetch`` (an objective), batches are paired one ahead by ``prefetch_pairs`` and the
    step is ``prefetch(model, data, noise=noise)``.
    """
    from flowgen.nn import MLP as FlowMLP
    from flowgen.objectives import prefetch_pairs

    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = FlowMLP(2).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if fused else {}))
    gen = torch.Generator(device=dev).manual_seed(0)
    pairs = None
    if prefetch is not None:
        stream = (_data(batch, gen, dev) for _ in range(warm + steps + 1))
        pairs = iter(prefetch_pairs(prefetch, stream, generator=torch.Generator(device=dev).manual_seed(1)))

    def one():
        if pairs is not None:
            data, noise = next(pairs)
            loss = prefetch(model, data, noise=noise)
        else:
            loss = step_fn(model, _data(batch, gen, dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warm):
        one()
    _sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    _sync()
    return 1000 * (time.perf_counter() - t0) / steps


def _graph_loop(batch: int, steps: int, warm: int) -> float:
    """ms per step of the bare loss with the whole step replayed as a CUDA graph (fresh data copied in)."""
    from flowgen.capture import StepGraph, make_capturable
    from flowgen.nn import MLP as FlowMLP

    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = FlowMLP(2).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    make_capturable(opt)
    graph = StepGraph(lambda d: _bare_loss(model, d), opt, list(model.parameters()))
    gen = torch.Generator(device=dev).manual_seed(0)
    for _ in range(warm):
        graph(_data(batch, gen, dev))
    _sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        graph(_data(batch, gen, dev))
    _sync()
    return 1000 * (time.perf_counter() - t0) / steps


def _bare_loss(model, data):
    t = torch.rand(data.shape[0], device=data.device)
    noise = torch.randn_like(data)
    x_t = (1 - t)[:, None] * data + t[:, None] * noise
    return ((model(x_t, t) - (noise - data)) ** 2).mean()


class _Window:
    """Lightning callback: wall time from the start of batch ``warm`` to the end of training, synchronised."""

    def __new__(cls, warm: int):
        import lightning.pytorch as pl

        class Window(pl.Callback):
            def __init__(self):
                self.t0 = self.t1 = None
                self.count = 0

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if trainer.global_step == warm:
                    _sync()
                    self.t0 = time.perf_counter()
                if self.t0 is not None:
                    self.count += 1

            def on_train_end(self, *args):
                _sync()
                self.t1 = time.perf_counter()

            def ms(self):
                return 1000 * (self.t1 - self.t0) / self.count

        return Window()


def _lightning(module, data, steps: int, warm: int, **kw) -> float:
    from flowgen.lightning import make_trainer

    window = _Window(warm)
    with tempfile.TemporaryDirectory() as root:
        trainer = make_trainer(root, max_steps=warm + steps, checkpoint_every=10**9, val_every=None, progress=False,
                               logger=True, plot_samples=False, callbacks=[window], accelerator="gpu", devices=1,
                               limit_val_batches=0, log_every_n_steps=50, **kw)
        trainer.fit(module, data)
    return window.ms()


def _flowmodule(batch, steps, warm, *, ema: bool = True, objective=None, prefetch_pairs: bool = False,
                cuda_graph: bool = False) -> float:
    from flowgen.lightning import FlowModule, ToyDataModule
    from flowgen.nn import MLP as FlowMLP
    from flowgen.objectives import rectified_flow

    torch.manual_seed(0)
    module = FlowModule(FlowMLP(2), objective or rectified_flow(), lr=1e-3, ema=ema, prefetch_pairs=prefetch_pairs,
                        cuda_graph=cuda_graph, model_spec={"class_path": "flowgen.nn.MLP", "init_args": {"dim": 2}})
    return _lightning(module, ToyDataModule("moons", batch_size=batch, val_size=16), steps, warm)


def time_digits(steps: int, warm: int) -> dict:
    """FlowModule on the digits U-Net, eager and captured: ms per step."""
    from flowgen.lightning import DigitsDataModule, FlowModule
    from flowgen.nn import UNet
    from flowgen.objectives import rectified_flow

    spec = {"class_path": "flowgen.nn.UNet", "init_args": {"in_channels": 1, "base_channels": 32, "channel_mults": [1, 2]}}
    out = {}
    for name, graphed in (("flowmodule_unet", False), ("flowmodule_unet_graph", True)):
        torch.manual_seed(0)
        module = FlowModule(UNet(**spec["init_args"]), rectified_flow(), lr=5e-4, ema_decay=0.999, cuda_graph=graphed,
                            model_spec=spec)
        out[name] = _lightning(module, DigitsDataModule(batch_size=128, on_device=True, labels=False), steps, warm)
        print(f"  {name}: {out[name]:.3f} ms/step", flush=True)
    return {"ms_per_step": out, "speedup": out["flowmodule_unet"] / out["flowmodule_unet_graph"]}


def _lightning_floor(batch, steps, warm) -> float:
    """The bare loss in a minimal LightningModule, with flowgen's Trainer and whole-batch device data."""
    import lightning.pytorch as pl

    from flowgen.lightning import ToyDataModule
    from flowgen.lightning.module import LightHookNames
    from flowgen.nn import MLP as FlowMLP

    class Floor(LightHookNames, pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = FlowMLP(2)

        def training_step(self, batch_, batch_idx):
            return _bare_loss(self.model, batch_)

        def configure_optimizers(self):
            return torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)

    torch.manual_seed(0)
    return _lightning(Floor(), ToyDataModule("moons", batch_size=batch, val_size=16), steps, warm)


def _plain_lightning(batch, steps, warm) -> float:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from flowgen.data.toys import sample_toy
    from flowgen.nn import MLP as FlowMLP

    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = FlowMLP(2)

        def training_step(self, batch_, batch_idx):
            loss = _bare_loss(self.model, batch_[0])
            self.log("loss", loss, on_step=True, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.model.parameters(), lr=1e-3)

    data = sample_toy("moons", batch * (warm + steps + 4), generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(data), batch_size=batch, shuffle=True, drop_last=True)
    window = _Window(warm)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(max_steps=warm + steps, enable_progress_bar=False, enable_checkpointing=False,
                             enable_model_summary=False, logger=pl.loggers.CSVLogger(root), log_every_n_steps=50,
                             callbacks=[window], accelerator="gpu", devices=1, limit_val_batches=0)
        trainer.fit(Plain(), loader)
    return window.ms()


def time_training(batches, steps: int, warm: int, ot_steps: int, exact_max_batch: int) -> dict:
    from flowgen.objectives import flow_matching, rectified_flow

    res, errors = {}, {}
    for batch in batches:
        ms = {}
        rf = rectified_flow()
        indep, sink, exact = (flow_matching(coupling=c) for c in ("independent", "sinkhorn", "ot"))
        # interleave the plain loops over two rounds, keep each one's faster round
        for _ in range(2):
            for name, fn, kw in (("bare", _bare_loss, {}), ("bare_fused", _bare_loss, {"fused": True}),
                                 ("objective", lambda m, d: rf(m, d), {}),
                                 ("fm_independent", lambda m, d: indep(m, d), {}), ("fm_sinkhorn", lambda m, d: sink(m, d), {}),
                                 ("fm_sinkhorn_prefetch", None, {"prefetch": sink})):
                ms[name] = min(ms.get(name, float("inf")), _loop(fn, batch, steps, warm, **kw))
        ms["bare_graph"] = _graph_loop(batch, steps, warm)
        if batch <= exact_max_batch:
            ms["fm_exact_ot"] = _loop(lambda m, d: exact(m, d), batch, ot_steps, 1)
        for name, run in (("lightning_floor", lambda: _lightning_floor(batch, steps, warm)),
                          ("flowmodule", lambda: _flowmodule(batch, steps, warm)),
                          ("flowmodule_no_ema", lambda: _flowmodule(batch, steps, warm, ema=False)),
                          ("flowmodule_independent", lambda: _flowmodule(batch, steps, warm, objective=indep)),
                          ("flowmodule_sinkhorn_prefetch",
                           lambda: _flowmodule(batch, steps, warm, objective=sink, prefetch_pairs=True)),
                          ("flowmodule_graph", lambda: _flowmodule(batch, steps, warm, cuda_graph=True)),
                          ("flowmodule_graph_independent",
                           lambda: _flowmodule(batch, steps, warm, objective=indep, cuda_graph=True)),
                          ("flowmodule_graph_sinkhorn_prefetch",
                           lambda: _flowmodule(batch, steps, warm, objective=sink, prefetch_pairs=True, cuda_graph=True)),
                          ("plain_lightning", lambda: _plain_lightning(batch, steps, warm))):
            t0 = time.perf_counter()
            try:
                ms[name] = run()
            except Exception as err:  # noqa: BLE001 — recorded in the results, the other contenders still run
                ms[name] = float("nan")
                errors[f"{name} at batch {batch}"] = f"{type(err).__name__}: {err}"
            print(f"  {name} at batch {batch}: {ms[name]:.3f} ms/step ({time.perf_counter() - t0:.1f} s run)", flush=True)
        ratios = {"sinkhorn": ms["fm_sinkhorn"] / ms["fm_independent"],
                  "sinkhorn_prefetch": ms["fm_sinkhorn_prefetch"] / ms["fm_independent"],
                  "flowmodule_sinkhorn_prefetch": ms["flowmodule_sinkhorn_prefetch"] / ms["flowmodule_independent"],
                  "flowmodule_graph_sinkhorn_prefetch":
                      ms["flowmodule_graph_sinkhorn_prefetch"] / ms["flowmodule_graph_independent"]}
        if "fm_exact_ot" in ms:
            ratios["exact_ot"] = ms["fm_exact_ot"] / ms["fm_independent"]
        res[str(batch)] = {"ms_per_step": ms, "vs_bare": {k: v / ms["bare"] for k, v in ms.items()},
                           "vs_bare_fused": {k: v / ms["bare_fused"] for k, v in ms.items()},
                           "ot_vs_independent": ratios}
        print(f"training batch {batch}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()), flush=True)
    if errors:
        res["errors"] = errors
    return res


# ------------------------------------------------------------------------------- report
def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# GPU overhead", "",
             f"Machine: {m['gpu']}, torch {m['torch']} (CUDA {m['cuda']}), {m['cpu_cores']} CPU cores. "
             f"Peers: torchdiffeq {m['torchdiffeq']}, flow_matching {m['flow_matching']}, diffusers {m['diffusers']}; "
             f"lightning {m['lightning']}.", "",
             f"## Sampling: {r['steps']} Euler steps of the 3×256 MLP, median ms per call ({r['rounds']} interleaved rounds)", "",
             "| batch | contender | ms | × captured floor | × bare eager | max abs diff to bare |", "|---|---|---|---|---|---|"]
    if not r["sampling"]:
        lines.append("| – | not run (`--skip-sampling`) | | | | |")
    for batch, s in r["sampling"].items():
        for k, v in s["ms"].items():
            lines.append(f"| {batch} | {k} | {v:.3f} | {s['vs_captured_floor'][k]:.2f} | {s['vs_bare'][k]:.2f} | "
                         f"{s['max_abs_diff_to_bare'][k]:.1e} |")
    lines += ["", f"## Training: ms per step ({r['train_steps']} steps after {r['warm']} warm-up; exact OT over "
              f"{r['ot_steps']} steps)", "", "| batch | contender | ms/step | × bare | × bare (fused Adam) |",
              "|---|---|---|---|---|"]
    for batch, s in r["training"].items():
        if batch == "errors":
            continue
        for k, v in s["ms_per_step"].items():
            lines.append(f"| {batch} | {k} | {v:.3f} | {s['vs_bare'][k]:.2f} | {s['vs_bare_fused'][k]:.2f} |")
    names = {"sinkhorn": "Sinkhorn", "sinkhorn_prefetch": "Sinkhorn with prefetch_pairs",
             "flowmodule_sinkhorn_prefetch": "FlowModule Sinkhorn (prefetch) over FlowModule independent",
             "flowmodule_graph_sinkhorn_prefetch": "the same with cuda_graph=True",
             "exact_ot": "exact"}
    lines += ["", "OT-coupled step over the independent one:", ""]
    for b, s in r["training"].items():
        if b == "errors":
            lines += [f"- **failed**: {k}: {v}" for k, v in s.items()]
            continue
        lines.append(f"- batch {b}: " + ", ".join(f"{names[k]} {v:.2f}×" for k, v in s["ot_vs_independent"].items()))
    if r.get("digits"):
        d = r["digits"]["ms_per_step"]
        lines += ["", "Digits U-Net teacher (batch 128, `FlowModule`, EMA): "
                  f"eager {d['flowmodule_unet']:.3f} ms/step, `cuda_graph=True` {d['flowmodule_unet_graph']:.3f} ms/step "
                  f"({r['digits']['speedup']:.2f}× faster)."]
    if r.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in r["notes"]]
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def _without_notes(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few rounds and steps (smoke run)")
    p.add_argument("--out", default=str(HERE / "results"), help="results folder")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--skip-sampling", action="store_true")
    p.add_argument("--exact-max-batch", type=int, default=1024,
                   help="largest batch timed with exact OT (solved on the CPU: about 20 s per step at 4096)")
    p.add_argument("--digits", action="store_true", help="also time FlowModule on the digits U-Net, eager and captured")
    p.add_argument("--note", action="append", default=[], help="a note saved with the results (repeatable)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_overhead: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    random.seed(0)
    rounds, steps = (5, 64) if args.quick else (40, 64)
    train_steps, warm, ot_steps = (30, 10, 2) if args.quick else (300, 30, 3)
    r = {"machine": machine_info(), "steps": steps, "rounds": rounds, "train_steps": train_steps, "warm": warm,
         "ot_steps": ot_steps, "notes": list(args.note), "command": " ".join(["python benchmarks/gpu_overhead.py", *_without_notes(sys.argv[1:] if argv is None else argv)])}
    r["sampling"] = {} if args.skip_sampling else time_sampling((64, 1024), steps, rounds)
    r["training"] = {} if args.skip_training else time_training((256, 4096), train_steps, warm, ot_steps, args.exact_max_batch)
    if args.digits:
        r["digits"] = time_digits(train_steps, warm)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_overhead.json"), "w") as fh:
        json.dump(r, fh, indent=2)
    md = markdown(r)
    with open(os.path.join(args.out, "gpu_overhead.md"), "w") as fh:
        fh.write(md)
    print(json.dumps(r, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
