"""Minibatch OT couplings on the CPU: time per coupling of a data batch with a noise batch.

    python benchmarks/ot_solvers.py [--sizes 256 1024 4096] [--repeats 5] [--threads 1]

Every contender pairs the same two-moons batch with the same standard-normal noise (2-D, float32):

* ``flowgen_exact``: :class:`flowgen.objectives.ExactOTCoupling` (cost matrix, POT's network simplex
  through :func:`flowgen._ot.assignment`, re-indexing of the noise);
* ``scipy_assignment``: scipy's ``linear_sum_assignment`` on the same float64 cost (flowgen's solver
  before POT; run once at the largest size, where it takes tens of seconds);
* ``flowgen_sinkhorn``: :class:`flowgen.objectives.SinkhornCoupling` (default ``reg``), for reference;
* ``torchcfm_exact``: torchcfm's ``OTPlanSampler(method="exact").sample_plan`` (POT's ``ot.emd`` and a
  draw of pairs from the plan), run in the benchmark venv when torchcfm is not importable here.

The medians of ``--repeats`` fresh batches are reported (one repeat for scipy above 1024 points).
Writes ``benchmarks/results/ot_solvers.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from _common import cpu_name  # noqa: E402

VENV_PY = "/work/bench-venv/bin/python"


def batches(n: int, repeat: int):
    from flowgen.data.toys import sample_toy

    g = torch.Generator().manual_seed(1000 * n + repeat)
    return sample_toy("moons", n, generator=g), torch.randn(n, 2, generator=g)


def _time(fn, n: int, repeats: int) -> list[float]:
    out = []
    for r in range(repeats):
        data, noise = batches(n, r)
        t0 = time.perf_counter()
        fn(data, noise)
        out.append(time.perf_counter() - t0)
    return out


def flowgen_contenders() -> dict:
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    from flowgen.objectives import ExactOTCoupling, SinkhornCoupling
    from flowgen.objectives.coupling import _plan_cost

    exact, sinkhorn = ExactOTCoupling(), SinkhornCoupling()

    def scipy_assignment(data, noise):
        cols = linear_sum_assignment(_plan_cost(data, noise).numpy().astype(np.float64))[1]
        return noise[torch.as_tensor(cols)]

    return {"flowgen_exact": exact, "scipy_assignment": scipy_assignment, "flowgen_sinkhorn": sinkhorn}


def torchcfm_contenders() -> dict:
    from torchcfm.optimal_transport import OTPlanSampler

    sampler = OTPlanSampler(method="exact")
    # torchcfm's convention: x0 = source (noise), x1 = target (data)
    return {"torchcfm_exact": lambda data, noise: sampler.sample_plan(noise, data)}


def run(contenders: dict, sizes: list[int], repeats: int) -> dict:
    res = {}
    for n in sizes:
        for name, fn in contenders.items():
            k = 1 if (name == "scipy_assignment" and n > 1024) else repeats
            fn(*batches(80, 99))  # warm-up (imports; 80 points take the network simplex)
            ts = _time(fn, n, k)
            res.setdefault(str(n), {})[name] = {"median_ms": 1e3 * statistics.median(ts), "repeats": k}
            print(f"n={n} {name}: {1e3 * statistics.median(ts):.1f} ms", file=sys.stderr, flush=True)
    return res


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}


def markdown(report: dict) -> str:
    m = report["machine"]
    names = ["flowgen_exact", "torchcfm_exact", "scipy_assignment", "flowgen_sinkhorn"]
    lines = [
        "# Minibatch OT couplings on the CPU (ms per coupling, 2-D moons vs normal noise, float32)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared), torch {m['torch']}, {m['threads']} thread(s). "
        f"Medians over {report['repeats']} batches (scipy above 1024 points: one). torchcfm: {report['torchcfm']}.",
        "",
        "| n | " + " | ".join(names) + " | scipy / flowgen_exact |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for n, row in report["results_ms"].items():
        cells = [f"{row[k]['median_ms']:.1f}" if k in row else "–" for k in names]
        ratio = row["scipy_assignment"]["median_ms"] / row["flowgen_exact"]["median_ms"]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {ratio:.1f}× |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--torchcfm-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.torchcfm_only:
        print(json.dumps(run(torchcfm_contenders(), args.sizes, args.repeats)))
        return 0
    res = run(flowgen_contenders(), args.sizes, args.repeats)
    try:
        res_cfm, peer = run(torchcfm_contenders(), args.sizes, args.repeats), sys.executable
    except ImportError:
        res_cfm, peer = {}, "not available"
        if os.path.exists(VENV_PY):
            out = subprocess.run([VENV_PY, __file__, "--torchcfm-only", "--threads", str(args.threads), "--repeats",
                                  str(args.repeats), "--sizes", *map(str, args.sizes)], capture_output=True, text=True)
            if out.returncode == 0:
                res_cfm, peer = json.loads(out.stdout.strip().splitlines()[-1]), f"run with {VENV_PY}"
            else:
                peer = f"failed: {out.stderr[-300:]}"
    for n, row in res_cfm.items():
        res[n].update(row)
    report = {"benchmark": "ot_solvers", "machine": machine(), "repeats": args.repeats, "torchcfm": peer, "results_ms": res}
    md = markdown(report)
    print(json.dumps(report, indent=2))
    print(md)
    if not args.no_write:
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        with open(os.path.join(HERE, "results", "ot_solvers.json"), "w") as fh:
            fh.write(json.dumps(report, indent=2) + "\n")
        with open(os.path.join(HERE, "results", "ot_solvers.md"), "w") as fh:
            fh.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
