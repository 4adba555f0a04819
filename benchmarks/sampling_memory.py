"""Peak memory of sampling 10⁶ 2-D samples: streamed in chunks vs all at once.

Run:

    python benchmarks/sampling_memory.py [--num 1000000] [--steps 4] [--hidden 128]

Every configuration runs in a fresh Python subprocess (``--worker NAME``), so its peak is its
own. On the CPU the peak is the process's maximum resident set size (``resource.getrusage``,
``ru_maxrss``; tracemalloc does not see torch's allocations); the number reported is the
increase over the same process just before sampling (after imports, building the model and a
small warm-up call), i.e. what the sampling itself needed. On a CUDA device
(``--device cuda``) it is ``torch.cuda.max_memory_allocated`` after a reset.

Configurations (same model: flowgen's ``MLP(2, hidden, depth=3)``, Euler, rectified flow):

* ``all_at_once``: ``sample(model, path, noise)`` with ``noise`` of shape ``(N, 2)``: every
  activation of the network is ``N × hidden``;
* ``batch_size``: the same call with ``batch_size=B`` (chunks of ``B``, one ``(N, 2)`` output);
* ``stream``: ``for chunk in sample_stream(..., batch_size=B)`` keeping only a running sum and
  sum of squares of the samples (the consumer holds nothing; a writer to disk behaves the same);
* ``stream_to_array``: ``sample_stream`` with each chunk copied into a preallocated ``(N, 2)``
  array (what ``flowgen sample --num N`` does before writing the file).

Writes ``benchmarks/results/sampling_memory.json`` and ``.md`` with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder, also when imported as a module
from _common import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = ("all_at_once", "batch_size", "stream", "stream_to_array")


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def worker(name: str, num: int, steps: int, hidden: int, batch: int, device: str) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from flowgen.nn import MLP
    from flowgen.paths import RectifiedFlow
    from flowgen.samplers import sample, sample_stream

    torch.manual_seed(0)
    dev = torch.device(device)
    model = MLP(2, hidden=hidden, depth=3).to(dev).eval()
    path = RectifiedFlow()
    kw = dict(prediction="velocity", method="euler", steps=steps)
    with torch.no_grad():
        sample(model, path, torch.randn(64, 2, device=dev), **kw)  # warm-up: allocator, thread pool, kernels
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated() / 2**20
    else:
        before = _rss_mib()
    t0 = time.perf_counter()
    gen = torch.Generator(device=dev).manual_seed(1)
    if name == "all_at_once":
        out = sample(model, path, torch.randn(num, 2, generator=gen, device=dev), **kw).samples
        mean, sq = out.double().mean(0), (out.double() ** 2).mean(0)
        n = out.shape[0]
    elif name == "batch_size":
        out = sample(model, path, torch.randn(num, 2, generator=gen, device=dev), batch_size=batch, **kw).samples
        mean, sq = out.double().mean(0), (out.double() ** 2).mean(0)
        n = out.shape[0]
    elif name == "stream":
        s = torch.zeros(2, dtype=torch.float64, device=dev)
        s2 = torch.zeros(2, dtype=torch.float64, device=dev)
        n = 0
        for res in sample_stream(model, path, num_samples=num, shape=(2,), batch_size=batch, generator=gen, device=dev, **kw):
            x = res.samples.double()
            s += x.sum(0)
            s2 += (x * x).sum(0)
            n += x.shape[0]
        mean, sq = s / n, s2 / n
    elif name == "stream_to_array":
        out = torch.empty(num, 2, device=dev)
        n = 0
        for res in sample_stream(model, path, num_samples=num, shape=(2,), batch_size=batch, generator=gen, device=dev, **kw):
            out[n : n + res.samples.shape[0]] = res.samples
            n += res.samples.shape[0]
        mean, sq = out.double().mean(0), (out.double() ** 2).mean(0)
    else:
        raise SystemExit(f"unknown configuration {name!r}")
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _rss_mib()
    wall = time.perf_counter() - t0
    return {
        "config": name, "num": int(n), "peak_mib": peak, "before_mib": before, "sampling_mib": peak - before,
        "wall_s": wall, "mean": [float(v) for v in mean], "second_moment": [float(v) for v in sq],
        "measure": "torch.cuda.max_memory_allocated" if cuda else "ru_maxrss",
    }


def machine() -> dict:
    import torch

    cpu = cpu_name()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "platform": platform.platform()}


def render(result: dict) -> str:
    """The markdown table of a result dict (also used with ``--render`` on a saved JSON)."""
    st, summary, m = result["settings"], result["results"], result["machine"]
    lines = [
        f"# Peak memory of sampling {st['num']:,} 2-D samples ({st['device']})",
        "",
        (f"{st['model']}, Euler {st['steps']} steps, rectified flow; chunk size {st['batch']}. "
         f"Peak = {st['measure']} of a fresh process, minus the same process just before sampling; "
         f"median of {st['repeats']} processes."),
        "",
        "| configuration | sampling peak (MiB) | ratio to all at once | process peak (MiB) | wall (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in CONFIGS:
        r = summary[c]
        lines.append(f"| {c} | {r['sampling_mib_median']:.1f} | {r['ratio_to_all_at_once']:.3f} | {r['peak_mib_median']:.1f} | "
                     f"{r['wall_s_median']:.2f} |")
    lines += ["", ("All four configurations produce the same samples (same noise stream; equal first and second moments "
                   "in the JSON). Wall times are end to end on a shared machine under whatever load it had; they are not a "
                   "speed comparison (see benchmarks/sampler_overhead.py for that)."),
              "", f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8192, help="chunk size of the streamed configurations")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per configuration (the median is reported)")
    ap.add_argument("--worker", choices=CONFIGS)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--render", help="rewrite the .md of a saved JSON result and exit")
    args = ap.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(render(result))
        return 0
    if args.worker:
        print(json.dumps(worker(args.worker, args.num, args.steps, args.hidden, args.batch, args.device)))
        return 0
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for _ in range(args.repeats):
        for c in CONFIGS:
            cmd = [sys.executable, __file__, "--worker", c, "--num", str(args.num), "--steps", str(args.steps),
                   "--hidden", str(args.hidden), "--batch", str(args.batch), "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[c].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    summary = {}
    for c, rs in runs.items():
        vals = sorted(r["sampling_mib"] for r in rs)
        summary[c] = {
            "sampling_mib_median": vals[len(vals) // 2],
            "sampling_mib_runs": [r["sampling_mib"] for r in rs],
            "peak_mib_median": sorted(r["peak_mib"] for r in rs)[len(rs) // 2],
            "wall_s_median": sorted(r["wall_s"] for r in rs)[len(rs) // 2],
            "mean": rs[0]["mean"], "second_moment": rs[0]["second_moment"],
        }
    ref = summary["all_at_once"]["sampling_mib_median"]
    for c in CONFIGS:
        summary[c]["ratio_to_all_at_once"] = summary[c]["sampling_mib_median"] / ref if ref > 0 else None
    result = {
        "benchmark": "sampling_memory",
        "settings": {"num": args.num, "dim": 2, "steps": args.steps, "method": "euler", "model": f"MLP(2, hidden={args.hidden}, depth=3)",
                     "batch": args.batch, "device": args.device, "repeats": args.repeats, "measure": runs["stream"][0]["measure"]},
        "machine": machine(),
        "results": summary,
        "runs": runs,
    }
    md = render(result)
    print(json.dumps(result, indent=1))
    print(md)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "sampling_memory.json").write_text(json.dumps(result, indent=1) + "\n")
        (RESULTS / "sampling_memory.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
