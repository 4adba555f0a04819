"""Teacher quality against torchcfm, side by side in one run (issue 4, "Quality and speed", first bullet).

Target: on the 2-D toys, flowgen's rectified-flow teacher reaches ≤ 0.9× torchcfm's W2 to held-out
data (adaptive sampler), and its OT-coupled teacher ≤ 0.9× torchcfm's OT-CFM.

Run in the benchmark venv (torchcfm is installed only there):

    /work/bench-venv/bin/python benchmarks/teacher_quality.py [--steps K] [--seeds S] [--datasets moons ...]

Set-up, identical for both libraries unless stated:

* network: ``flowgen.nn.MLP(2)`` (3 hidden layers of 256, SiLU, sinusoidal time embedding), one
  initial state per seed (``torch.manual_seed(1000 + seed)``) copied into every contender;
* data: ``flowgen.data.toys.sample_toy(name, 256)`` drawn fresh each step from a generator seeded
  ``seed`` — the same batches for every contender;
* time and noise: one generator seeded ``10000 + seed`` per contender draws ``u ~ U(0, 1)`` ``(256,)``
  then ``noise ~ N(0, I)`` ``(256, 2)`` each step. flowgen's objective draws exactly these
  (``objective(model, data, generator=g)``: uniform time, then noise); torchcfm gets
  ``x0 = noise``, ``x1 = data`` and ``t = 1 − u`` (its t = 0 is noise), so with the independent
  coupling both libraries see the same ``x_t`` and targets of opposite sign;
* objectives: flowgen ``rectified_flow()`` / ``flow_matching(coupling="ot")`` (exact minibatch OT,
  a permutation from POT's network simplex, ``flowgen._ot.assignment``); torchcfm ``ConditionalFlowMatcher(sigma=0)`` /
  ``ExactOptimalTransportConditionalFlowMatcher(sigma=0)`` (POT's exact EMD, pairs drawn from the
  plan with replacement through numpy's global RNG, seeded ``seed``); loss: mean squared error;
* optimiser: Adam, constant learning rate, batch 256, the same number of steps. Each library trains
  at its own recipe's rate: flowgen at its teacher recipe's ``model.lr`` (``recipes/rf_<data>.yaml``,
  ``recipes/ot_cfm_<data>.yaml``), torchcfm at 1e-3 (its 2-D examples use
  ``torch.optim.Adam(model.parameters())``). A third contender, ``torchcfm_flowlr``, trains
  torchcfm's objective with flowgen's rate and EMA, so the table separates the recipe from the
  library;
* EMA: flowgen's training layer keeps an EMA of the weights by default
  (:class:`flowgen.lightning.FlowModule`: ema-pytorch ``EMA(beta=0.999, update_after_step=100,
  update_every=1, power=0.75)``, read from FlowModule's signature here) and samples with it. The
  script trains one network per contender and evaluates both its online weights and its EMA:
  ``flowgen`` rows are the EMA (flowgen's default), ``flowgen_noema`` the online weights of the
  same run. torchcfm itself keeps no EMA; its ``torchcfm`` rows are the online weights, and the
  ``torchcfm_ema`` rows (the same ema-pytorch EMA on torchcfm's run) are shown for transparency;
* sampling: 2000 samples from the same standard-normal noise for every contender, dopri5 with
  ``atol = rtol = 1e-5``: ``flowgen.samplers.sample(..., method="dopri5")`` (t from 1 to 0) for
  flowgen; ``torchdiffeq.odeint`` dopri5 from t = 0 to 1 on ``model(x, t)`` for torchcfm;
* metric: exact W2 (``flowgen.metrics.wasserstein2``) to 2000 held-out points; the floor is the W2
  between two independent 2000-point data draws.

Reported: mean ± std over seeds per dataset and coupling, the ratio of means flowgen/torchcfm, and
the mean ± std of the per-seed ratios; also flowgen's online weights / torchcfm and flowgen's EMA /
torchcfm with the same EMA, which separate the library from the EMA. Writes
``benchmarks/results/teacher_quality.json`` and ``.md``; ``--render`` rebuilds the summary and the
table from that JSON without training. Use ``--threads 1`` (default): one torch thread is faster for
this MLP on shared cores.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder, also when imported as a module
from _common import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BATCH = 256
N_EVAL = 2000
DATASETS = ("moons", "8gaussians", "checkerboard")
TARGET = 0.9
#: torchcfm's 2-D examples train with ``torch.optim.Adam(model.parameters())``: Adam's default lr.
TORCHCFM_LR = 1e-3


def recipe_lr(dataset: str, coupling: str) -> float:
    """The learning rate of flowgen's teacher recipe for ``dataset`` (``recipes/rf_*`` or ``recipes/ot_cfm_*``)."""
    import yaml

    name = f"rf_{dataset}.yaml" if coupling == "independent" else f"ot_cfm_{dataset}.yaml"
    return float(yaml.safe_load((ROOT / "recipes" / name).read_text())["model"]["lr"])


def machine_info() -> dict:
    cpu = cpu_name()
    from importlib.metadata import PackageNotFoundError, version

    import scipy
    import torchcfm
    import torchdiffeq

    try:
        ema_version = version("ema-pytorch")
    except PackageNotFoundError:  # pragma: no cover - informational
        ema_version = None
    import flowgen

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torchcfm": getattr(torchcfm, "__version__", "unknown"),
        "torchdiffeq": torchdiffeq.__version__,
        "ema_pytorch": ema_version,
        "scipy": scipy.__version__,
        "flowgen": getattr(flowgen, "__version__", "unknown"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def ema_settings() -> dict:
    """The EMA defaults of flowgen's training layer (FlowModule), read from its signature."""
    from flowgen.lightning import FlowModule

    p = inspect.signature(FlowModule.__init__).parameters
    return {
        "enabled_by_default": p["ema"].default,
        "beta": p["ema_decay"].default,
        "update_after_step": p["ema_warmup_steps"].default,
        "update_every": p["ema_update_every"].default,
        "power": p["ema_power"].default,
    }


def make_ema(model, settings: dict):
    from ema_pytorch import EMA

    return EMA(model, beta=settings["beta"], update_after_step=settings["update_after_step"],
               update_every=settings["update_every"], power=settings["power"], include_online_model=False)


# ------------------------------------------------------------------------------- training
def train(library: str, coupling: str, dataset: str, seed: int, init_state: dict, *, steps: int, lr: float,
          ema_cfg: dict) -> dict:
    """Train one contender; returns its online network, its EMA network and the wall time."""
    import flowgen
    from flowgen.data.toys import sample_toy
    from flowgen.nn import MLP

    model = MLP(2)
    model.load_state_dict(init_state)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ema = make_ema(model, ema_cfg)
    data_gen = torch.Generator().manual_seed(seed)
    gen = torch.Generator().manual_seed(10_000 + seed)

    if library == "flowgen":
        objective = flowgen.objectives.rectified_flow() if coupling == "independent" else \
            flowgen.objectives.flow_matching(coupling=coupling)

        def loss_fn(data):
            return objective(model, data, generator=gen)
    else:
        from torchcfm.conditional_flow_matching import (
            ConditionalFlowMatcher,
            ExactOptimalTransportConditionalFlowMatcher,
        )

        matcher = ConditionalFlowMatcher(sigma=0.0) if coupling == "independent" else \
            ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
        np.random.seed(seed)  # torchcfm's OT plan sampler draws pairs with numpy's global RNG

        def loss_fn(data):
            u = torch.rand(BATCH, generator=gen)
            noise = torch.randn(data.shape, generator=gen)
            t, x_t, target = matcher.sample_location_and_conditional_flow(noise, data, t=1.0 - u)
            return ((model(x_t, t) - target) ** 2).mean()

    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    losses = []
    for step in range(steps):
        data = sample_toy(dataset, BATCH, generator=data_gen)
        loss = loss_fn(data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update()
        if step >= steps - 200:
            losses.append(float(loss.detach()))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    ema.ema_model.eval()
    return {"online": model, "ema": ema.ema_model, "train_s": wall, "train_cpu_s": cpu,
            "final_loss": statistics.fmean(losses)}


# ------------------------------------------------------------------------------- sampling
def sample_flowgen(model, noise: torch.Tensor, tol: float) -> tuple[torch.Tensor, int]:
    from flowgen.paths import RectifiedFlow
    from flowgen.samplers import sample

    out = sample(model, RectifiedFlow(), noise, prediction="velocity", method="dopri5", atol=tol, rtol=tol)
    return out.samples, out.nfe


@torch.no_grad()
def sample_torchcfm(model, noise: torch.Tensor, tol: float) -> tuple[torch.Tensor, int]:
    """torchcfm's own convention: integrate ``dx/dt = v(x, t)`` from t = 0 (noise) to t = 1 (data)."""
    from torchdiffeq import odeint

    nfe = [0]

    def field(t, x):
        nfe[0] += 1
        return model(x, t.to(x.dtype).expand(x.shape[0]))

    traj = odeint(field, noise, torch.tensor([0.0, 1.0]), method="dopri5", atol=tol, rtol=tol)
    return traj[-1], nfe[0]


# ------------------------------------------------------------------------------- driver
def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(rows: dict, floors: dict) -> list[dict]:
    """Means, stds and ratios per dataset and coupling from the per-seed W2 values."""
    summary = []
    for dataset, per_coupling in rows.items():
        fm, fs = mean_std(floors[dataset])
        for coupling, r in per_coupling.items():
            entry = {"dataset": dataset, "coupling": coupling, "floor_mean": fm, "floor_std": fs}
            for variant, w in r.items():
                entry[variant + "_mean"], entry[variant + "_std"] = mean_std(w)
            # ratio_X: X / torchcfm (online weights); ratio_ema_vs_ema: flowgen EMA / torchcfm with the same EMA;
            # ratio_same_recipe: flowgen EMA / torchcfm trained with flowgen's lr and EMA (the library alone)
            for variant, ref_name, key in (("flowgen_ema", "torchcfm_noema", "ratio_flowgen_ema"),
                                           ("flowgen_noema", "torchcfm_noema", "ratio_flowgen_noema"),
                                           ("torchcfm_ema", "torchcfm_noema", "ratio_torchcfm_ema"),
                                           ("flowgen_ema", "torchcfm_ema", "ratio_ema_vs_ema"),
                                           ("flowgen_ema", "torchcfm_flowlr_ema", "ratio_same_recipe")):
                if variant not in r or ref_name not in r:
                    continue
                entry[key] = entry[variant + "_mean"] / entry[ref_name + "_mean"]
                per_seed = [a / b for a, b in zip(r[variant], r[ref_name])]
                entry[key + "_per_seed_mean"], entry[key + "_per_seed_std"] = mean_std(per_seed)
            entry["met"] = entry["ratio_flowgen_ema"] <= TARGET
            summary.append(entry)
    return summary


def run(args) -> dict:
    from flowgen.data.toys import sample_toy
    from flowgen.metrics import wasserstein2
    from flowgen.nn import MLP

    torch.set_num_threads(args.threads)
    ema_cfg = ema_settings()
    info = machine_info()
    load_start = load_avg()
    t_start, c_start = time.perf_counter(), time.process_time()
    couplings = ("independent", "ot")
    rows: dict = {}  # rows[dataset][coupling][variant] -> list of W2 per seed
    nfe: dict = {}
    train_s: dict = {}
    train_cpu_s: dict = {}
    final_loss: dict = {}
    floors: dict = {d: [] for d in args.datasets}
    lrs: dict = {}  # flowgen's learning rate per dataset and coupling
    for dataset in args.datasets:
        rows[dataset] = {c: {} for c in couplings}
        nfe[dataset] = {c: {} for c in couplings}
        train_s[dataset] = {c: {} for c in couplings}
        train_cpu_s[dataset] = {c: {} for c in couplings}
        final_loss[dataset] = {c: {} for c in couplings}
        for seed in range(args.seeds):
            torch.manual_seed(1000 + seed)
            init_state = copy.deepcopy(MLP(2).state_dict())
            heldout = sample_toy(dataset, N_EVAL, generator=torch.Generator().manual_seed(30_000 + seed))
            second = sample_toy(dataset, N_EVAL, generator=torch.Generator().manual_seed(40_000 + seed))
            floors[dataset].append(wasserstein2(second, heldout))
            noise = torch.randn(N_EVAL, 2, generator=torch.Generator().manual_seed(20_000 + seed))
            for coupling in couplings:
                flow_lr = args.flowgen_lr if args.flowgen_lr is not None else recipe_lr(dataset, coupling)
                lrs.setdefault(dataset, {})[coupling] = flow_lr
                # torchcfm_flowlr: torchcfm's objective trained with flowgen's recipe (its lr; the EMA rows)
                contenders = [("flowgen", "flowgen", flow_lr), ("torchcfm", "torchcfm", args.torchcfm_lr)]
                if flow_lr != args.torchcfm_lr:
                    contenders.append(("torchcfm_flowlr", "torchcfm", flow_lr))
                for name, library, lr in contenders:
                    out = train(library, coupling, dataset, seed, init_state, steps=args.steps, lr=lr, ema_cfg=ema_cfg)
                    sampler = sample_flowgen if library == "flowgen" else sample_torchcfm
                    for weights, variant in (("ema", name + "_ema"), ("online", name + "_noema")):
                        samples, n = sampler(out[weights], noise, args.tol)
                        w2 = wasserstein2(samples, heldout)
                        rows[dataset][coupling].setdefault(variant, []).append(w2)
                        nfe[dataset][coupling].setdefault(variant, []).append(n)
                    train_s[dataset][coupling].setdefault(name, []).append(out["train_s"])
                    train_cpu_s[dataset][coupling].setdefault(name, []).append(out["train_cpu_s"])
                    final_loss[dataset][coupling].setdefault(name, []).append(out["final_loss"])
                    print(f"[{time.perf_counter() - t_start:7.1f}s] {dataset:12s} seed {seed} {coupling:11s} {name:15s} "
                          f"lr {lr:g} train {out['train_s']:6.1f}s  W2 ema {rows[dataset][coupling][name + '_ema'][-1]:.4f}  "
                          f"online {rows[dataset][coupling][name + '_noema'][-1]:.4f}  floor {floors[dataset][-1]:.4f}",
                          flush=True)
                if len(contenders) == 2:  # same lr: torchcfm's run is also the one with flowgen's recipe
                    for suffix in ("_ema", "_noema"):
                        rows[dataset][coupling]["torchcfm_flowlr" + suffix] = rows[dataset][coupling]["torchcfm" + suffix]

    summary = summarize(rows, floors)

    return {
        "benchmark": "teacher_quality",
        "target": f"flowgen W2 / torchcfm W2 <= {TARGET} (rectified flow vs CFM; exact-OT flow matching vs OT-CFM)",
        "machine": info,
        "load_avg_start": load_start,
        "load_avg_end": load_avg(),
        "wall_s": time.perf_counter() - t_start,
        "process_cpu_s": time.process_time() - c_start,
        "config": {
            "datasets": list(args.datasets), "seeds": list(range(args.seeds)), "steps": args.steps, "batch": BATCH,
            "optimizer": f"Adam, constant lr: flowgen at its recipe's lr, torchcfm at {args.torchcfm_lr} "
                         "(its 2-D examples: Adam's default), and torchcfm_flowlr at flowgen's lr",
            "flowgen_lr": lrs, "torchcfm_lr": args.torchcfm_lr, "model": "flowgen.nn.MLP(2): 3x256 SiLU, "
            "sinusoidal time embedding (64, scale 1000); same initial weights per seed (torch.manual_seed(1000 + seed))",
            "flowgen": {"independent": "flowgen.objectives.rectified_flow() (uniform time, uniform weighting, L2)",
                        "ot": "flowgen.objectives.flow_matching(coupling='ot') (exact minibatch OT permutation, "
                              "uniform time, uniform weighting, L2)",
                        "ema": ema_cfg | {"note": "ema-pytorch EMA as flowgen.lightning.FlowModule's defaults; "
                                                  "flowgen rows sample the EMA, flowgen_noema the online weights"},
                        "sampler": f"flowgen.samplers.sample(method='dopri5', atol={args.tol}, rtol={args.tol}), t 1 -> 0"},
            "torchcfm": {"independent": "ConditionalFlowMatcher(sigma=0)",
                         "ot": "ExactOptimalTransportConditionalFlowMatcher(sigma=0) (POT exact EMD; pairs sampled from "
                               "the plan with replacement, numpy.random.seed(seed))",
                         "ema": "none (torchcfm_ema rows: the same ema-pytorch EMA on its run, for transparency)",
                         "sampler": f"torchdiffeq.odeint(method='dopri5', atol={args.tol}, rtol={args.tol}), t 0 -> 1"},
            "streams": "data: sample_toy(..., generator seeded seed); per step u ~ U(0,1) (256,) then noise (256, 2) "
                       "from a generator seeded 10000 + seed (flowgen's objective draws exactly these; torchcfm gets "
                       "t = 1 - u, x0 = noise, x1 = data)",
            "eval": f"{N_EVAL} samples from noise seeded 20000 + seed, exact W2 (flowgen.metrics.wasserstein2) to "
                    f"{N_EVAL} held-out points (seed 30000 + seed); floor: W2 between the held-out set and another "
                    f"independent draw (seed 40000 + seed)",
            "torch_threads": args.threads,
        },
        "summary": summary,
        "per_seed": {"w2": rows, "floor": floors, "nfe": nfe, "train_s": train_s, "train_cpu_s": train_cpu_s,
                     "final_loss_last200": final_loss},
    }


def fmt(m: float, s: float) -> str:
    return f"{m:.4f} ± {s:.4f}"


def markdown(res: dict) -> str:
    m, c = res["machine"], res["config"]
    lines = [
        "# Teacher quality: flowgen vs torchcfm (W2 to held-out data, dopri5)",
        "",
        (f"Machine: {m['cpu']}, {m['cores']} cores (shared), torch {m['torch']} ({c['torch_threads']} thread), "
        f"torchcfm {m['torchcfm']}, torchdiffeq {m['torchdiffeq']}, ema-pytorch {m['ema_pytorch']}; "
        f"load average (1/5/15 min) {res['load_avg_start']} at the start, {res['load_avg_end']} at the end; "
        f"whole run {res['wall_s'] / 60:.1f} min wall, {res['process_cpu_s'] / 60:.1f} min CPU (after imports)."),
        "",
        (f"Set-up: {len(c['seeds'])} seeds × {c['steps']} steps, batch {c['batch']}, {c['optimizer']}, {c['model']}. "
        f"Same data batches, times and noise for every contender. {N_EVAL} samples (same noise for all), exact W2 to "
        f"{N_EVAL} held-out points. flowgen = EMA weights (FlowModule's default EMA: "
        f"beta={c['flowgen']['ema']['beta']}, warm-up {c['flowgen']['ema']['update_after_step']} steps, "
        f"power {c['flowgen']['ema']['power']}); flowgen no-EMA = online weights of the same run; "
        f"torchcfm = its online weights (torchcfm keeps no EMA); torchcfm + EMA = the same EMA on torchcfm's run; "
        f"torchcfm, flowgen's recipe = torchcfm's objective trained at flowgen's lr, EMA weights."),
        "",
        ("| dataset | coupling | floor | torchcfm | flowgen (EMA) | flowgen no-EMA | torchcfm + EMA | "
        "torchcfm, flowgen's recipe | flowgen / torchcfm | per-seed | met (≤ 0.9) | no-EMA / torchcfm | "
        "flowgen / (torchcfm + EMA) | flowgen / (torchcfm, flowgen's recipe) |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if "flowgen_lr" in c:
        rates = sorted({lr for per in c["flowgen_lr"].values() for lr in per.values()})
        flow = f"{rates[0]:g} in every cell" if len(rates) == 1 else str(c["flowgen_lr"])
        lines.insert(4, f"Learning rates: flowgen {flow} (its teacher recipes), torchcfm {c['torchcfm_lr']:g}.")
        lines.insert(5, "")
    for e in res["summary"]:
        coupling = "independent (RF vs CFM)" if e["coupling"] == "independent" else "exact OT (vs OT-CFM)"
        same = (fmt(e["torchcfm_flowlr_ema_mean"], e["torchcfm_flowlr_ema_std"]), f"{e['ratio_same_recipe']:.3f}") \
            if "ratio_same_recipe" in e else ("–", "–")
        lines.append(
            f"| {e['dataset']} | {coupling} | {fmt(e['floor_mean'], e['floor_std'])} | "
            f"{fmt(e['torchcfm_noema_mean'], e['torchcfm_noema_std'])} | {fmt(e['flowgen_ema_mean'], e['flowgen_ema_std'])} | "
            f"{fmt(e['flowgen_noema_mean'], e['flowgen_noema_std'])} | {fmt(e['torchcfm_ema_mean'], e['torchcfm_ema_std'])} | "
            f"{same[0]} | "
            f"**{e['ratio_flowgen_ema']:.3f}** | "
            f"{e['ratio_flowgen_ema_per_seed_mean']:.3f} ± {e['ratio_flowgen_ema_per_seed_std']:.3f} | "
            f"{'yes' if e['met'] else 'no'} | {e['ratio_flowgen_noema']:.3f} | {e['ratio_ema_vs_ema']:.3f} | {same[1]} |"
        )
    met = sum(e["met"] for e in res["summary"])
    lines += ["", ("W2 as mean ± std over seeds. Ratios are ratios of means; 'per-seed' is the mean ± std of the "
                  "paired per-seed ratios flowgen (EMA) / torchcfm. The last three columns separate the library from the "
                  "recipe: flowgen's online weights against torchcfm's, flowgen's EMA against the same EMA on "
                  "torchcfm's run, and flowgen against torchcfm trained with flowgen's whole recipe (lr and EMA)."), "",
              (f"Target (flowgen / torchcfm ≤ {TARGET}): met in {met} of {len(res['summary'])} dataset × coupling "
              f"cells with flowgen's default EMA; in {sum(e['ratio_flowgen_noema'] <= TARGET for e in res['summary'])} "
              f"without it; flowgen / (torchcfm + EMA) ≤ {TARGET} in "
              f"{sum(e['ratio_ema_vs_ema'] <= TARGET for e in res['summary'])}; flowgen / (torchcfm, flowgen's recipe) "
              f"≤ {TARGET} in {sum(e.get('ratio_same_recipe', 9) <= TARGET for e in res['summary'])}."), ""]
    nfe = res["per_seed"]["nfe"]
    parts = []
    for d in nfe:
        for cpl in nfe[d]:
            for v in ("flowgen_ema", "torchcfm_noema"):
                parts.append(f"{d}/{cpl}/{v} {statistics.fmean(nfe[d][cpl][v]):.0f}")
    lines.append("Mean dopri5 NFE: " + ", ".join(parts) + ".")
    ts, tc = res["per_seed"]["train_s"], res["per_seed"]["train_cpu_s"]
    parts = []
    for d in ts:
        for cpl in ts[d]:
            for lib in ts[d][cpl]:
                parts.append(f"{d}/{cpl}/{lib} {statistics.fmean(ts[d][cpl][lib]):.0f} s ({statistics.fmean(tc[d][cpl][lib]):.0f} s CPU)")
    lines += ["", f"Mean training time per run ({c['steps']} steps incl. the EMA update, wall (CPU)): " + ", ".join(parts)
              + ". These times come from a shared machine and are informational only (step costs are measured by "
                "benchmarks/training_overhead.py)."]
    lines += ["", ("With the independent coupling, flowgen and torchcfm see the same x_t and targets of opposite sign "
                  "at every step (torchcfm gets t = 1 − u), so 'flowgen no-EMA' vs 'torchcfm' differ only by the time "
                  "fed to the network (t vs 1 − t) and float round-off: their gap shows how much the W2 of a run's "
                  "final online weights varies for reasons unrelated to the library.")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--flowgen-lr", type=float, default=None,
                        help="flowgen's learning rate (default: its teacher recipe's, recipes/rf_* and recipes/ot_cfm_*)")
    parser.add_argument("--torchcfm-lr", type=float, default=TORCHCFM_LR,
                        help="torchcfm's learning rate (default 1e-3: its examples use Adam's default)")
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster for this MLP on shared cores)")
    parser.add_argument("--out", default=str(RESULTS / "teacher_quality"), help="output path without extension")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--render", action="store_true",
                        help="recompute the summary and the markdown from the JSON at --out (no training)")
    args = parser.parse_args(argv)
    if args.render:
        res = json.loads(Path(args.out).with_suffix(".json").read_text())
        res["summary"] = summarize(res["per_seed"]["w2"], res["per_seed"]["floor"])
    else:
        res = run(args)
    print(json.dumps(res["summary"], indent=1))
    md = markdown(res)
    print(md)
    if not args.no_write:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
        out.with_suffix(".md").write_text(md)
    return res


if __name__ == "__main__":
    main()
