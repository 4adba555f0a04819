"""Per-step training overhead of flowgen against a bare PyTorch loop (batch 256, the 3×256 MLP).

Run with the system python (the torchcfm reference is run in /work/bench-venv when present):

    python benchmarks/training_overhead.py [--quick] [--rounds R] [--steps K]

Every contender trains ``flowgen.nn.MLP(2)`` (3 hidden layers of 256, SiLU, sinusoidal time
embedding) with Adam at batch 256 on two-moons data drawn fresh each step:

* ``a_bare``: hand-written rectified-flow loss in a plain loop
  (``t ~ U``, ``x_t = (1−t)·data + t·noise``, ``mse(model(x_t, t), noise − data)``);
* ``b_objective``: the same loop calling ``flowgen.objectives.rectified_flow()(model, data)``;
* ``c_lightning``: :class:`flowgen.lightning.FlowModule` (EMA off, so the work equals ``a``) under
  a ``lightning.Trainer`` built by :func:`flowgen.lightning.make_trainer` (CSV logging every 50
  steps, no progress bar, no checkpoints or validation inside the timed window), data from
  :class:`flowgen.lightning.ToyDataModule` (whole batches, no DataLoader);
* ``c_lightning_ema``: the same with flowgen's default EMA (an extra weight update per step);
* ``plain_lightning``: for reference, a plain LightningModule with the hand loss, ``self.log`` on
  every step and a ``DataLoader`` over a ``TensorDataset`` (batch collation on the CPU);
* ``d_indep`` / ``d_ot`` / ``d_sinkhorn``: the objective loop with independent, exact minibatch OT
  (POT's network simplex) and Sinkhorn couplings (flow matching); ``*_prefetch``: the same with
  :func:`flowgen.objectives.prefetch_pairs` (the next batch paired on a worker thread);
* ``e_lightning_indep`` / ``e_lightning_ot`` / ``e_lightning_ot_prefetch``: ``FlowModule`` (EMA off)
  with flow matching, independent and exact-OT couplings, the last with ``prefetch_pairs=True``;
* ``torchcfm_indep`` / ``torchcfm_ot``: torchcfm's ``ConditionalFlowMatcher`` and
  ``ExactOptimalTransportConditionalFlowMatcher`` (POT's exact EMD) in the same loop, run in
  the benchmark venv (a different torch build: compare its ratio, not its times).

Timing: per-step wall time of steady-state steps (Lightning: between consecutive
``on_train_batch_start`` calls, so Trainer set-up is excluded). Rounds are interleaved (each round
runs every contender once, in a shuffled order) and the median per-step time over all rounds is
reported, with ratios of medians. These machines are shared and noisy: look at the ratios.

Writes ``benchmarks/results/training_overhead.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder, also when imported as a module
from _common import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BATCH = 256
VENV_PY = "/work/bench-venv/bin/python"


def machine_info() -> dict:
    cpu = cpu_name()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "load_avg_1min": load}


# ------------------------------------------------------------------------------- contenders
def _model():
    from flowgen.nn import MLP

    return MLP(2)


def _data(gen):
    from flowgen.data.toys import sample_toy

    return sample_toy("moons", BATCH, generator=gen)


def loop_bare(steps: int) -> list[float]:
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        data = _data(gen)
        t = torch.rand(BATCH)
        noise = torch.randn_like(data)
        x_t = (1 - t)[:, None] * data + t[:, None] * noise
        loss = ((model(x_t, t) - (noise - data)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def _objective_loop(objective, steps: int) -> list[float]:
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        data = _data(gen)
        loss = objective(model, data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def loop_objective(steps):
    from flowgen.objectives import rectified_flow

    return _objective_loop(rectified_flow(), steps)


def loop_indep(steps):
    from flowgen.objectives import flow_matching

    return _objective_loop(flow_matching(coupling="independent"), steps)


def loop_ot(steps):
    from flowgen.objectives import flow_matching

    return _objective_loop(flow_matching(coupling="ot"), steps)


def loop_sinkhorn(steps):
    from flowgen.objectives import flow_matching

    return _objective_loop(flow_matching(coupling="sinkhorn"), steps)


def _prefetch_loop(objective, steps: int) -> list[float]:
    """The objective loop fed by :func:`flowgen.objectives.prefetch_pairs` (next batch paired on a worker thread)."""
    from flowgen.objectives import prefetch_pairs

    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    batches = (_data(gen) for _ in range(steps))
    times = []
    t0 = time.perf_counter()
    for data, noise in prefetch_pairs(objective, batches, generator=torch.Generator().manual_seed(1)):
        loss = objective(model, data, noise=noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
    return times


def loop_ot_prefetch(steps):
    from flowgen.objectives import flow_matching

    return _prefetch_loop(flow_matching(coupling="ot"), steps)


def loop_sinkhorn_prefetch(steps):
    from flowgen.objectives import flow_matching

    return _prefetch_loop(flow_matching(coupling="sinkhorn"), steps)


class _StepTimer:
    """Lightning callback: wall time between consecutive training-batch starts."""

    def __new__(cls):
        import lightning.pytorch as pl

        class Timer(pl.Callback):
            def __init__(self):
                self.stamps = []

            def on_train_batch_start(self, *args):
                self.stamps.append(time.perf_counter())

            def on_train_end(self, *args):
                self.stamps.append(time.perf_counter())

            def times(self):
                return [b - a for a, b in zip(self.stamps, self.stamps[1:])]

        return Timer()


def _fit(module, data, steps: int, root: str) -> list[float]:
    from flowgen.lightning import make_trainer

    timer = _StepTimer()
    trainer = make_trainer(root, max_steps=steps, checkpoint_every=10**9, val_every=None, progress=False,
                           logger=True, plot_samples=False, callbacks=[timer], accelerator="cpu", devices=1,
                           limit_val_batches=0, log_every_n_steps=50)
    trainer.fit(module, data)
    return timer.times()[2:]  # drop the first steps (lazy init)


def loop_lightning(steps, *, ema: bool, root: str, coupling: str | None = None, prefetch: bool = False):
    from flowgen.lightning import FlowModule, ToyDataModule
    from flowgen.objectives import flow_matching, rectified_flow

    objective = rectified_flow() if coupling is None else flow_matching(coupling=coupling)
    module = FlowModule(_model(), objective, lr=1e-3, ema=ema, prefetch_pairs=prefetch,
                        model_spec={"class_path": "flowgen.nn.MLP", "init_args": {"dim": 2}})
    return _fit(module, ToyDataModule("moons", batch_size=BATCH, val_size=16), steps + 2, root)


def loop_plain_lightning(steps, *, root: str):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from flowgen.data.toys import sample_toy

    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _model()

        def training_step(self, batch, batch_idx):
            (data,) = batch
            t = torch.rand(data.shape[0])
            noise = torch.randn_like(data)
            x_t = (1 - t)[:, None] * data + t[:, None] * noise
            loss = ((self.model(x_t, t) - (noise - data)) ** 2).mean()
            self.log("loss", loss, on_step=True, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.model.parameters(), lr=1e-3)

    data = sample_toy("moons", BATCH * (steps + 4), generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(data), batch_size=BATCH, shuffle=True, drop_last=True)
    timer = _StepTimer()
    trainer = pl.Trainer(max_steps=steps + 2, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, logger=pl.loggers.CSVLogger(root), log_every_n_steps=50,
                         callbacks=[timer], accelerator="cpu", devices=1, limit_val_batches=0)
    trainer.fit(Plain(), loader)
    return timer.times()[2:]


def _torchcfm_loop(kind: str, steps: int) -> list[float]:
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher, ExactOptimalTransportConditionalFlowMatcher

    fm = ConditionalFlowMatcher(sigma=0.0) if kind == "indep" else ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        data = _data(gen)
        noise = torch.randn_like(data)
        # torchcfm's convention: x0 = source (noise), x1 = target (data), time 0 → 1
        t, xt, ut = fm.sample_location_and_conditional_flow(noise, data)
        loss = ((model(xt, t) - ut) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------- runner
def run(rounds: int, steps: int, only_torchcfm: bool = False, only: list[str] | None = None) -> dict:
    import tempfile

    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    root = tempfile.mkdtemp(prefix="fg_bench_")
    if only_torchcfm:
        contenders = {"torchcfm_indep": lambda k: _torchcfm_loop("indep", k), "torchcfm_ot": lambda k: _torchcfm_loop("ot", k)}
    else:
        contenders = {
            "a_bare": loop_bare,
            "b_objective": loop_objective,
            "c_lightning": lambda k: loop_lightning(k, ema=False, root=root),
            "c_lightning_ema": lambda k: loop_lightning(k, ema=True, root=root),
            "plain_lightning": lambda k: loop_plain_lightning(k, root=root),
            "e_lightning_indep": lambda k: loop_lightning(k, ema=False, root=root, coupling="independent"),
            "e_lightning_ot": lambda k: loop_lightning(k, ema=False, root=root, coupling="ot"),
            "e_lightning_ot_prefetch": lambda k: loop_lightning(k, ema=False, root=root, coupling="ot", prefetch=True),
            "d_indep": loop_indep,
            "d_ot": loop_ot,
            "d_sinkhorn": loop_sinkhorn,
            "d_ot_prefetch": loop_ot_prefetch,
            "d_sinkhorn_prefetch": loop_sinkhorn_prefetch,
        }
    if only:
        contenders = {k: v for k, v in contenders.items() if k in only}
    for fn in contenders.values():  # warm-up (imports, allocator)
        fn(3)
    samples: dict[str, list[float]] = {k: [] for k in contenders}
    per_round: dict[str, list[float]] = {k: [] for k in contenders}
    order = list(contenders)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            ts = contenders[name](steps)
            samples[name].extend(ts)
            per_round[name].append(statistics.median(ts))
    return {name: {"median_ms": 1e3 * statistics.median(ts), "round_medians_ms": [1e3 * x for x in per_round[name]],
                   "steps_timed": len(ts)} for name, ts in samples.items()}


def _ratio(res, a, b):
    return res[a]["median_ms"] / res[b]["median_ms"] if a in res and b in res else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--quick", action="store_true", help="3 rounds of 15 steps (smoke run)")
    p.add_argument("--torchcfm-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--only", nargs="+", default=None, help="run only these contenders (no results written)")
    p.add_argument("--suffix", default="", help="results go to training_overhead<suffix>.json/.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, steps = (3, 15) if args.quick else (args.rounds, args.steps)
    if args.torchcfm_only:
        print(json.dumps({"results": run(rounds, steps, only_torchcfm=True), "machine": machine_info()}))
        return 0

    t0 = time.time()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if args.only:
        res = run(rounds, steps, only=args.only)
        for k, v in res.items():
            print(f"{k:18s} {v['median_ms']:.3f} ms/step")
        return 0
    res = run(rounds, steps)
    peer = {"available": False}
    try:
        import torchcfm  # noqa: F401

        res.update(run(rounds, steps, only_torchcfm=True))
        peer = {"available": True, "python": sys.executable}
    except ImportError:
        if os.path.exists(VENV_PY):
            extra = ["--threads", str(args.threads)] if args.threads else []
            out = subprocess.run([VENV_PY, __file__, "--torchcfm-only", "--rounds", str(rounds), "--steps", str(steps), *extra],
                                 capture_output=True, text=True, timeout=3600)
            if out.returncode == 0:
                blob = json.loads(out.stdout.strip().splitlines()[-1])
                res.update(blob["results"])
                peer = {"available": True, "python": VENV_PY, "machine": blob["machine"]}
            else:
                peer = {"available": False, "error": out.stderr[-500:]}
    ratios = {
        "b_objective / a_bare (target <= 1.03)": _ratio(res, "b_objective", "a_bare"),
        "c_lightning / a_bare (target <= 1.2)": _ratio(res, "c_lightning", "a_bare"),
        "c_lightning_ema / a_bare": _ratio(res, "c_lightning_ema", "a_bare"),
        "plain_lightning / a_bare (issue: 1.5 measured)": _ratio(res, "plain_lightning", "a_bare"),
        "d_ot / d_indep (target <= 2)": _ratio(res, "d_ot", "d_indep"),
        "d_sinkhorn / d_indep": _ratio(res, "d_sinkhorn", "d_indep"),
        "d_ot_prefetch / d_indep (pairing on a worker thread)": _ratio(res, "d_ot_prefetch", "d_indep"),
        "d_sinkhorn_prefetch / d_indep": _ratio(res, "d_sinkhorn_prefetch", "d_indep"),
        "e_lightning_ot / e_lightning_indep (FlowModule, exact OT)": _ratio(res, "e_lightning_ot", "e_lightning_indep"),
        "e_lightning_ot_prefetch / e_lightning_indep (FlowModule prefetch_pairs=True)":
            _ratio(res, "e_lightning_ot_prefetch", "e_lightning_indep"),
        "torchcfm_ot / torchcfm_indep (issue: 2.5-5)": _ratio(res, "torchcfm_ot", "torchcfm_indep"),
    }
    report = {"benchmark": "training_overhead", "batch": BATCH, "model": "flowgen.nn.MLP(2): 3x256 SiLU",
              "rounds": rounds, "steps_per_round": steps, "machine": machine_info(), "torchcfm": peer,
              "results_ms_per_step": res, "ratios": ratios, "wall_seconds": round(time.time() - t0, 1),
              "load_avg_1min_at_start": load_start}
    md = _markdown(report)
    print(json.dumps(report, indent=2))
    print(md)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"training_overhead{args.suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / f"training_overhead{args.suffix}.md").write_text(md + "\n")
    return 0


def _markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Training overhead per step (batch 256, 3×256 MLP, Adam, CPU)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"1-min load average {r.get('load_avg_1min_at_start')} at the start and {m['load_avg_1min']} at the end "
        f"(the machine is shared). {r['rounds']} interleaved rounds × {r['steps_per_round']} steps; "
        "medians over all timed steps.",
        "",
        "| contender | median ms/step | × a_bare |",
        "|---|---|---|",
    ]
    res = r["results_ms_per_step"]
    base = res["a_bare"]["median_ms"]
    for name, v in res.items():
        ref = base if not name.startswith("torchcfm") else res.get("torchcfm_indep", {}).get("median_ms", base)
        note = "" if not name.startswith("torchcfm") else " (× torchcfm_indep)"
        lines.append(f"| {name} | {v['median_ms']:.3f} | {v['median_ms'] / ref:.3f}{note} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    for k, v in r["ratios"].items():
        lines.append(f"| {k} | {'n/a' if v is None else f'{v:.3f}'} |")
    if r["torchcfm"].get("python") and r["torchcfm"]["python"] != sys.executable:
        tm = r["torchcfm"].get("machine", {})
        lines += ["", f"torchcfm rows ran in {r['torchcfm']['python']} (torch {tm.get('torch')}); compare its ratio only."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
