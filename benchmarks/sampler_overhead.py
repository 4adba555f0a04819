"""Per-sample overhead of flowgen's Euler sampler over a bare hand-written loop, side by side with peers.

Run (peers are installed only in the benchmark venv):

    /work/bench-venv/bin/python benchmarks/sampler_overhead.py [--quick] [--no-stream]

What is timed (CPU, float32, torch.no_grad for every contender, 64 Euler steps of the same
3×256 MLP ``Linear(D+1→256)-SiLU ×3 → D`` with ``t`` concatenated, D = 2):

* ``bare``: ``for i: t = torch.full((B,), 1 - i/N); x = x + dt * model(x, t)``;
* ``flowgen``: ``flowgen.samplers.sample(model, RectifiedFlow(), noise, prediction="velocity",
  method="euler", steps=64)`` — the whole public call, grid construction and checks included;
* ``torchdiffeq``: ``odeint(f, noise, torch.linspace(1, 0, 65), method="euler")``;
* ``flow_matching``: Meta's ``ODESolver(velocity_model=wrapper).sample(noise, step_size=1/64)``;
* ``diffusers``: ``FlowMatchEulerDiscreteScheduler`` — ``set_timesteps(64)`` then
  ``x = scheduler.step(model(x, t), t, x, return_dict=False)[0]`` per step.

Peers get the model's time argument with no conversion (the MLP is random, so the time
convention changes nothing in the cost). Repetitions are interleaved (every round runs every
contender once, in a shuffled order) and medians are reported, with ratios to the bare loop
from the same rounds. A 1-step generator (``steps=1``) is timed against one bare model call.

``--stream`` (on by default) measures the peak resident memory of sampling 10⁶ 2-D samples with
:func:`flowgen.samplers.sample_stream` in a fresh subprocess.

Writes ``benchmarks/results/sampler_overhead.json`` and ``.md``.
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
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder, also when imported as a module
from _common import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


class MLP(nn.Module):
    """``Linear(D+1→256)-SiLU, Linear(256→256)-SiLU, Linear(256→256)-SiLU, Linear(256→D)``; t concatenated."""

    def __init__(self, dim: int = 2, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, dim),
        )

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=1))


def machine_info() -> dict:
    cpu = cpu_name()
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?",
    }
    for mod in ("torchdiffeq", "flow_matching", "diffusers"):
        try:
            info[mod] = getattr(__import__(mod), "__version__", "installed")
        except Exception as err:  # noqa: BLE001 - report why a peer is missing
            info[mod] = f"not importable ({type(err).__name__})"
    return info


def contenders(model: nn.Module, steps: int) -> dict:
    """name → function(noise) → samples, for the importable contenders."""
    from flowgen.paths import RectifiedFlow
    from flowgen.samplers import sample

    path = RectifiedFlow()
    out = {}

    def bare(noise):
        x, n = noise, steps
        dt = -1.0 / n
        b = noise.shape[0]
        for i in range(n):
            t = torch.full((b,), 1.0 - i / n)
            x = x + dt * model(x, t)
        return x

    out["bare"] = bare
    out["flowgen"] = lambda noise: sample(model, path, noise, prediction="velocity", method="euler", steps=steps).samples

    out.update(peer_contenders(model, steps))
    return out


def peer_contenders(model: nn.Module, steps: int, device=None) -> dict:
    """name → function(noise) for the importable peers (torchdiffeq, flow_matching, diffusers) on ``device``."""
    out = {}
    try:
        from torchdiffeq import odeint

        grid = torch.linspace(1.0, 0.0, steps + 1, device=device)

        def tdq(noise):
            b = noise.shape[0]
            return odeint(lambda t, x: model(x, t.expand(b)), noise, grid, method="euler")[-1]

        out["torchdiffeq"] = tdq
    except ImportError:
        pass

    try:
        from flow_matching.solver import ODESolver
        from flow_matching.utils import ModelWrapper

        class Wrapped(ModelWrapper):
            def forward(self, x, t, **extras):
                return self.model(x, t.expand(x.shape[0]))

        solver = ODESolver(velocity_model=Wrapped(model))
        out["flow_matching"] = lambda noise: solver.sample(x_init=noise, step_size=1.0 / steps, method="euler")
    except ImportError:
        pass

    try:
        from diffusers import FlowMatchEulerDiscreteScheduler

        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)

        def diff(noise):
            sched.set_timesteps(steps, device=device)
            x, b = noise, noise.shape[0]
            for t in sched.timesteps:
                x = sched.step(model(x, t.expand(b)), t, x, return_dict=False)[0]
            return x

        out["diffusers"] = diff
    except ImportError:
        pass
    return out


def one_step_contenders(model: nn.Module) -> dict:
    from flowgen.paths import RectifiedFlow
    from flowgen.samplers import sample

    path = RectifiedFlow()

    def model_call(noise):
        return model(noise, torch.ones(noise.shape[0]))

    def bare(noise):
        return noise - model(noise, torch.ones(noise.shape[0]))

    return {
        "model_call": model_call,
        "bare": bare,
        "flowgen": lambda noise: sample(model, path, noise, prediction="velocity", method="euler", steps=1).samples,
    }


def time_interleaved(fns: dict, noise: torch.Tensor, rounds: int, warmup: int = 3) -> dict:
    """Per contender, per round: ``(wall seconds, process CPU seconds)``; contenders shuffled each round."""
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn(noise)
        times = {k: [] for k in fns}
        names = list(fns)
        for _ in range(rounds):
            random.shuffle(names)
            for k in names:
                c0, t0 = time.process_time(), time.perf_counter()
                fns[k](noise)
                times[k].append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def summarise(times: dict, batch: int, ref: str = "bare") -> dict:
    out = {}
    for clock, idx in (("wall", 0), ("cpu", 1)):
        series = {k: [v[idx] for v in vals] for k, vals in times.items()}
        med = {k: statistics.median(v) for k, v in series.items()}
        # Ratio within each round (same machine state), then the median over rounds.
        round_ratio = {k: statistics.median(a / b for a, b in zip(series[k], series[ref])) for k in series}
        for k in series:
            out.setdefault(k, {"rounds": len(series[k])})
            out[k][clock] = {
                "median_ms": 1e3 * med[k],
                "per_sample_us": 1e6 * med[k] / batch,
                "ratio_to_bare": med[k] / med[ref],
                "median_round_ratio": round_ratio[k],
                "min_ms": 1e3 * min(series[k]),
            }
    return out


STREAM_CHILD = r"""
import resource, sys, json, time, torch
sys.path.insert(0, {root!r})
from benchmarks.sampler_overhead import MLP
from flowgen.paths import RectifiedFlow
from flowgen.samplers import sample_stream, sample
torch.manual_seed(0)
model = MLP().eval()
n, bs, steps, mode = {n}, {bs}, {steps}, {mode!r}
def status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")
def rss_mb():
    return status_mb("VmHWM")  # peak resident set size since the last reset
# Imports leave a transient high-water mark; reset the peak (Linux >= 4.0) so it measures sampling only.
try:
    open("/proc/self/clear_refs", "w").write("5")
    reset = True
except OSError:
    reset = False
base = status_mb("VmRSS")
t0 = time.perf_counter()
total, count = torch.zeros(2), 0
if mode == "stream":
    for res in sample_stream(model, RectifiedFlow(), num_samples=n, shape=(2,), batch_size=bs, prediction="velocity",
                             method="euler", steps=steps, generator=torch.Generator().manual_seed(0)):
        total += res.samples.sum(0); count += res.samples.shape[0]
else:
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    out = sample(model, RectifiedFlow(), noise, prediction="velocity", method="euler", steps=steps,
                 batch_size=None if mode == "full" else bs).samples
    total += out.sum(0); count = out.shape[0]
print(json.dumps(dict(mode=mode, num_samples=count, batch_size=bs, steps=steps, baseline_rss_mb=base,
                      peak_rss_mb=rss_mb(), peak_reset=reset, seconds=time.perf_counter() - t0)))
"""


def stream_memory(n: int, bs: int, steps: int, mode: str) -> dict:
    code = STREAM_CHILD.format(root=str(ROOT), n=n, bs=bs, steps=steps, mode=mode)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"mode": mode, "error": proc.stderr[-2000:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["sampling_rss_increase_mb"] = out["peak_rss_mb"] - out["baseline_rss_mb"]
    return out


def _table(lines, rows_by_batch, names, clock, key, fmt):
    lines.append("| batch | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for b, rows in rows_by_batch.items():
        lines.append(f"| {b} | " + " | ".join(fmt(rows[k][clock]) if k in rows else "—" for k in names) + " |")
    lines.append("")


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Sampler overhead (CPU)", ""]
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, load average at start {m.get('loadavg', '?')} (other jobs shared the cores); "
                 f"torch {m['torch']}; torchdiffeq {m.get('torchdiffeq')}, flow_matching {m.get('flow_matching')}, diffusers {m.get('diffusers')}.")
    lines.append("")
    lines.append(f"{result['steps']} Euler steps of a 3×256 MLP (D=2, t concatenated), float32, `torch.no_grad`. Every round runs "
                 "every contender once in a shuffled order; ratios are to the bare loop `x = x + dt * model(x, t)` "
                 "(lower is better, < 1 is faster than the bare loop). 'round ratio' = median over rounds of the within-round "
                 "ratio, robust to load drifting between rounds.")
    lines.append("")
    names = result["contenders"]
    for cfg in result["configs"]:
        threads, clock = cfg["threads"], cfg["clock"]
        rounds = ", ".join(f"{r} at batch {b}" for b, r in cfg["rounds"].items())
        lines.append(f"## torch threads = {threads}, {clock} time ({rounds} rounds)")
        lines.append("")
        if clock == "cpu":
            lines.append("Process CPU time with one torch thread: what each contender computes, largely unaffected by "
                         "other jobs on the machine (the primary figure here).")
        else:
            lines.append(f"Wall-clock time of the same runs ({threads} torch thread(s)): sensitive to the other jobs sharing the cores.")
        lines.append("")
        lines.append("Median time per run (ratio of medians to bare):")
        lines.append("")
        _table(lines, cfg["batches"], names, clock, None, lambda r: f"{r['median_ms']:.2f} ms ({r['ratio_to_bare']:.3f}×)")
        lines.append("Median round ratio to bare:")
        lines.append("")
        _table(lines, cfg["batches"], names, clock, None, lambda r: f"{r['median_round_ratio']:.3f}×")
        lines.append("Per-sample time (µs):")
        lines.append("")
        _table(lines, cfg["batches"], names, clock, None, lambda r: f"{r['per_sample_us']:.2f}")
        lines.append("1-step generator (one model evaluation), median time:")
        lines.append("")
        lines.append("| batch | model call | bare `noise - model(noise, 1)` | flowgen `sample(steps=1)` | flowgen − model call |")
        lines.append("|---|---|---|---|---|")
        for b, rows in cfg["one_step"].items():
            mc, br, fg = (rows[k][clock]["median_ms"] * 1e3 for k in ("model_call", "bare", "flowgen"))
            lines.append(f"| {b} | {mc:.0f} µs | {br:.0f} µs | {fg:.0f} µs | {fg - mc:+.0f} µs ({fg / mc:.2f}×) |")
        lines.append("")
    if result.get("stream"):
        lines.append("## Peak resident memory, 10⁶ 2-D samples with the MLP (fresh subprocess each)")
        lines.append("")
        lines.append("Peak RSS is the high-water mark reset after imports (`/proc/self/clear_refs`), so it covers sampling only; "
                     "`full` = one `sample()` call on all samples, `batch_size` = `sample(..., batch_size=16384)` (output "
                     "preallocated), `stream` = `sample_stream(..., batch_size=16384)` consuming each chunk.")
        lines.append("")
        lines.append("| mode | samples | batch_size | steps | peak RSS (MB) | increase over baseline (MB) | seconds |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in result["stream"]:
            if "error" in r:
                lines.append(f"| {r['mode']} | error | | | | | |")
                continue
            lines.append(f"| {r['mode']} | {r['num_samples']:,} | {r['batch_size'] if r['mode'] != 'full' else '—'} | {r['steps']} | "
                         f"{r['peak_rss_mb']:.0f} | {r['sampling_rss_increase_mb']:.0f} | {r['seconds']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (smoke run)")
    parser.add_argument("--no-stream", action="store_true", help="skip the 10^6-sample memory measurement")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--threads", type=int, default=None, help="also time with this many torch threads (wall clock)")
    args = parser.parse_args()

    torch.manual_seed(0)
    random.seed(0)
    steps = 64
    model = MLP().eval()
    fns = contenders(model, steps)
    names = list(fns)
    # Sanity: every contender integrates the same ODE on the same noise (up to the time convention).
    with torch.no_grad():
        probe = torch.randn(8, 2)
        ref = fns["bare"](probe)
        agree = {k: float((fns[k](probe) - ref).abs().max()) for k in ("flowgen", "torchdiffeq", "diffusers") if k in fns}
    default_threads = torch.get_num_threads()
    rounds_for = {64: 100, 256: 60, 1024: 30}
    configs = []
    # Primary: one torch thread, process CPU time (robust to other jobs on the machine).
    # Secondary: torch's default threads, wall-clock time (what a user sees, but load-sensitive).
    plan = [(1, "cpu"), (1, "wall")]
    if args.threads:  # optional: another thread count, wall clock (load-sensitive: with more torch threads than
        plan.append((args.threads, "wall"))  # free cores, OpenMP barriers make every kernel wait on other jobs)
    cache = {}
    for threads, clock in plan:
        torch.set_num_threads(threads)
        if threads in cache:  # the same runs give both clocks
            configs.append(dict(cache[threads], clock=clock))
            continue
        batches, one_step = {}, {}
        for b in (64, 256, 1024):
            rounds = args.rounds or (5 if args.quick else rounds_for[b])
            noise = torch.randn(b, 2, generator=torch.Generator().manual_seed(b))
            batches[b] = summarise(time_interleaved(fns, noise, rounds), b)
            one_step[b] = summarise(time_interleaved(one_step_contenders(model), noise, rounds * 3), b)
            print(f"threads {threads} {clock} batch {b}: " + ", ".join(
                f"{k} {v[clock]['median_ms']:.2f} ms ({v[clock]['ratio_to_bare']:.3f}x, round {v[clock]['median_round_ratio']:.3f}x)"
                for k, v in batches[b].items()), flush=True)
        cache[threads] = {"threads": threads, "clock": clock, "rounds": {b: batches[b]["bare"]["rounds"] for b in batches},
                          "batches": batches, "one_step": one_step}
        configs.append(cache[threads])
    torch.set_num_threads(default_threads)

    stream = []
    if not args.no_stream and not args.quick:
        # Memory does not depend on the number of steps: 2 steps keep this part short.
        stream.append(stream_memory(10**6, 10**6, 2, "full"))
        stream.append(stream_memory(10**6, 16384, 2, "stream"))
        stream.append(stream_memory(10**6, 16384, 2, "batch_size"))
        for r in stream:
            print("memory:", r, flush=True)

    result = {
        "benchmark": "sampler_overhead",
        "machine": machine_info(),
        "steps": steps,
        "dim": 2,
        "model": "Linear(3->256)-SiLU-Linear(256->256)-SiLU-Linear(256->256)-SiLU-Linear(256->2), t concatenated",
        "contenders": names,
        "endpoint_max_abs_diff_vs_bare": agree,
        "configs": configs,
        "stream": stream,
        "targets": {"flowgen_ratio_batch_ge_256": 1.03, "flowgen_ratio_batch_64": 1.15},
    }
    print(json.dumps(result, indent=1, default=str))
    md = markdown(result)
    print(md)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "sampler_overhead.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        (RESULTS / "sampler_overhead.md").write_text(md)


if __name__ == "__main__":
    main()
