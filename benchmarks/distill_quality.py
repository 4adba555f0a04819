"""Distillation quality: R_k of every method's student against its teacher, on 2-D toys and the digits.

For each data set and seed: train a rectified-flow teacher with the teacher recipe, distil it with
the recipes of ``recipes/distill/`` (progressive, consistency distillation, reflow + 1-step
distillation, consistency training), then measure, with ``d`` the squared W2 between 2000 samples
and held-out data (the digits classifier Fréchet distance for the digits) and ``floor`` the same
distance between two independent data draws,

    R_k = (d(student at k steps) − floor) / (d(teacher's adaptive dopri5) − floor),

the distillation error (RMS distance between student and teacher-dopri5 endpoints on the same
noise), sampling throughput against the teacher's dopri5, and each method's training wall time
relative to the teacher's. ``d`` is the mean over ``--repeats`` evaluation sets (independent
held-out draws and noise); every model is evaluated on the same sets.

Everything runs in this process through the same code as ``flowgen fit`` / ``flowgen distill``
(in-process LightningCLI), so the numbers are those of the recipes.

Usage::

    python benchmarks/distill_quality.py --quick                      # toys, reduced budgets (≈ 50 min on 2 CPU cores)
    python benchmarks/distill_quality.py                              # toys, the recipes' full budgets, 3 seeds
    python benchmarks/distill_quality.py --data digits --seeds 0      # the digits (U-Net teacher; hours on a CPU)
    python benchmarks/distill_quality.py --data digits --quick-teacher  # a budget teacher, full student budgets

Results: ``benchmarks/results/distill_quality.json`` and ``.md`` (with the machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
from _common import cpu_name  # noqa: E402

TOYS = ("moons", "checkerboard", "gmm")

#: Targets of issue 5: (method, k) → R_k bound.
TARGETS = {("consistency_distillation", 1): 1.3, ("consistency_distillation", 2): 1.1, ("progressive", 4): 1.1,
           ("progressive", 2): 1.3, ("progressive", 1): 2.0, ("reflow", 1): 1.3,
           ("progressive_endpoint", 4): 1.1, ("progressive_endpoint", 2): 1.3, ("progressive_endpoint", 1): 2.0}

#: data → (teacher recipe, {method: distillation recipe}).
RECIPES = {
    "toy": ("recipes/rf_moons.yaml", {
        "progressive": "recipes/distill/progressive_moons.yaml",
        "consistency_distillation": "recipes/distill/cd_moons.yaml",
        "reflow": "recipes/distill/reflow_moons.yaml",
        "consistency_training": "recipes/distill/ct_moons.yaml",
        "progressive_endpoint": "recipes/distill/endpoint_moons.yaml",
    }),
    "digits": ("recipes/rf_digits.yaml", {
        "progressive": "recipes/distill/progressive_digits.yaml",
        "consistency_distillation": "recipes/distill/cd_digits.yaml",
        "reflow": "recipes/distill/reflow_digits.yaml",
        "consistency_training": "recipes/distill/ct_digits.yaml",
        "progressive_endpoint": "recipes/distill/endpoint_digits.yaml",
    }),
}

#: --quick overrides (LightningCLI arguments) per data kind: the toys' budgets that fit ~50 min on 2 shared cores.
QUICK = {
    "toy": {
        # lr pinned at 1e-3: the quick results were measured with it (the teacher recipes now use 2e-3)
        "teacher": ["--trainer.max_steps", "4000", "--model.model.init_args.hidden", "128", "--model.lr", "0.001"],
        "progressive": ["--trainer.max_steps", "8600", "--model.init_args.student_steps", "128", "--model.init_args.lr", "0.001",
                        "--model.init_args.steps_per_round", "[500, 500, 600, 800, 1000, 1200, 1600, 2400]"],
        "consistency_distillation": ["--trainer.max_steps", "9000", "--data.init_args.batch_size", "512"],
        "reflow": ["--trainer.max_steps", "4000", "--model.init_args.steps_per_round", "1500",
                   "--model.init_args.distill_steps", "2500", "--model.init_args.num_pairs", "20000"],
        "consistency_training": ["--trainer.max_steps", "3000"],
        "progressive_endpoint": ["--trainer.max_steps", "1000", "--model.init_args.num_pairs", "5000"],
    },
    "digits": {
        "teacher": ["--trainer.max_steps", "1500", "--model.model.init_args.base_channels", "16"],
        "progressive": ["--trainer.max_steps", "1200", "--model.init_args.student_steps", "16",
                        "--model.init_args.steps_per_round", "200"],
        "consistency_distillation": ["--trainer.max_steps", "1000"],
        "reflow": ["--trainer.max_steps", "1000", "--model.init_args.distill_steps", "1000",
                   "--model.init_args.num_pairs", "2000"],
        "consistency_training": ["--trainer.max_steps", "1000"],
        "progressive_endpoint": ["--trainer.max_steps", "300", "--model.init_args.num_pairs", "2048"],
    },
}

#: --quick overrides for one data set, after its kind's. The mixture is learnt so fast that a 4000-step
#: teacher sits within sampling noise of the data floor (R_k's denominator is then noise): its quick
#: teacher stops at 1000 steps, where its dopri5 excess is about the floor (measured over 8 sets).
QUICK_DATA = {
    "gmm": {"teacher": ["--trainer.max_steps", "1000"]},
}

def quick_args(kind: str, name: str, stage: str) -> list[str]:
    """The --quick overrides of one stage (``"teacher"`` or a method): its data kind's, then its data set's."""
    return QUICK[kind].get(stage, []) + QUICK_DATA.get(name, {}).get(stage, [])


COMMON = ["--trainer.val_check_interval", "1000000", "--trainer.limit_val_batches", "0", "--trainer.logger", "false"]


def machine() -> dict:
    import torch

    cpu = cpu_name()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}


def thread_check(steps: int = 30) -> dict:
    """ms per training step of the 3×256 MLP teacher (batch 256) with 1 and 2 torch threads (why --threads 1)."""
    import torch

    from flowgen.nn import MLP
    from flowgen.objectives import rectified_flow

    out, before = {}, torch.get_num_threads()
    for n in (1, 2):
        torch.set_num_threads(n)
        torch.manual_seed(0)
        net, obj = MLP(2, hidden=256, depth=3), rectified_flow()
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        x = torch.randn(256, 2)
        times = []
        for i in range(steps + 5):
            t0 = time.perf_counter()
            loss = obj(net, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 5:
                times.append(time.perf_counter() - t0)
        out[f"{n}_thread_ms_per_step"] = 1000 * statistics.median(times)
    torch.set_num_threads(before)
    return out


def data_args(kind: str, name: str) -> list[str]:
    return ["--data.init_args.name", name] if kind == "toy" else []


def student_plan(method: str, students: dict) -> list[tuple[str, list[int]]]:
    """Which exported student to evaluate at which numbers of steps: ``[(file, steps)]``."""
    if method == "progressive":
        return [(students[f"progressive_N{k}"], [k]) for k in (4, 2, 1) if f"progressive_N{k}" in students]
    if method == "reflow":
        return [(students["reflow_distilled"], [1])]
    return [(students.get(method, students["last"]), [1, 2])]


def endpoint_runs(recipe: str, root: str, teacher_ckpt: str, seed: int, args: list[str], done: dict, log):
    """Endpoint distillation of the progressive students N = 4, 2, 1 (one run each, sharing the teacher's pairs).

    Returns ``(students, seconds, plan)``: the seconds are progressive distillation's plus every
    endpoint run's (pair generation included), i.e. the whole procedure's training time.
    """
    from flowgen.distill_cli import fine_tune_snapshots

    if "progressive" not in done:
        raise SystemExit("--methods: progressive_endpoint fine-tunes the progressive students; list progressive before it")
    prog, prog_seconds = done["progressive"]
    steps = tuple(k for k in (4, 2, 1) if f"progressive_N{k}" in prog)
    students, sec = fine_tune_snapshots(recipe, os.path.join(root, "progressive_endpoint"), teacher=teacher_ckpt, seed=seed,
                                        args=args, snapshots=prog, steps=steps, log=log)
    return students, prog_seconds + sec, [(students[f"endpoint_N{k}"], [k]) for k in steps]


def run_one(kind: str, name: str, seed: int, *, work: str, quick: bool, methods: list[str], repeats: int, num: int,
            log, quick_teacher: bool = False, teacher_channels: int | None = None) -> dict:
    """Teacher + every method for one data set and seed; returns the rows and timings."""

    from flowgen.checkpoint import load_generator
    from flowgen.distill_cli import (
        distill_student,
        evaluate_entries,
        make_protocol,
        reference_samples,
        student_entries,
        teacher_entries,
        train_teacher,
        with_ratios,
    )
    from flowgen.lightning.distill import load_student

    teacher_recipe, recipes = RECIPES[kind]
    root = os.path.join(work, f"{name}_seed{seed}")
    targs = data_args(kind, name) + (quick_args(kind, name, "teacher") if quick or quick_teacher else []) + COMMON
    if teacher_channels is not None:  # after the quick overrides, which set the digits U-Net's width to 16
        targs += ["--model.model.init_args.base_channels", str(teacher_channels)]
    teacher_ckpt, teacher_s = train_teacher(os.path.join(ROOT, teacher_recipe), os.path.join(root, "teacher"), seed=seed, args=targs)
    log(f"  teacher {teacher_s:.1f} s")
    teacher, path, prediction, meta = load_generator(teacher_ckpt)
    protocol = make_protocol(meta, num=num, repeats=repeats, seed=seed)
    ref, ref_row = reference_samples(teacher, path, prediction, protocol)
    rows = [ref_row] + evaluate_entries(teacher_entries(teacher, path, prediction, euler=(1, 2, 4, 8), heun=()), protocol,
                                        reference=ref, count_model=teacher)
    times = {"teacher": teacher_s}
    done = {}
    for method in methods:
        sargs = data_args(kind, name) + (quick_args(kind, name, method) if quick else []) + COMMON
        if method == "progressive_endpoint":
            students, sec, plan = endpoint_runs(os.path.join(ROOT, recipes[method]), root, teacher_ckpt, seed, sargs, done, log)
        else:
            students, sec = distill_student(os.path.join(ROOT, recipes[method]), os.path.join(root, method), teacher=teacher_ckpt,
                                            seed=seed, args=sargs)
            plan = student_plan(method, students)
        done[method] = (students, sec)
        times[method] = sec
        for file, steps in plan:
            gen = load_student(file)
            r = evaluate_entries(student_entries(method, gen, steps, seed=seed), protocol, reference=ref)
            for row in r:
                row["group"] = method
                row["train_seconds"] = sec
            rows += r
        log(f"  {method} {sec:.1f} s")
    floor = protocol.floor
    with_ratios(rows, floor, floors=protocol.floors)
    d_ref = ref_row["d"]
    for r in rows:
        r.update(data=name, seed=seed)
    return {"data": name, "seed": seed, "floor": floor, "floor_values": protocol.floors, "d_teacher": d_ref,
            "teacher_excess": d_ref - floor, "times": times, "rows": rows, "metric": protocol.metric}


def _mean_std(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


#: R_k is reported as measurable on a data set only where every seed's teacher excess d − floor exceeds
#: this fraction of the floor; below it the denominator is within the finite-sample noise of d.
MIN_EXCESS = 0.25


def conditioned(results: list[dict], data: str) -> bool:
    """Whether R_k is well conditioned on ``data``: the teacher is measurably above the floor for every seed."""
    return all(r["teacher_excess"] > MIN_EXCESS * r["floor"] for r in results if r["data"] == data)


def summarise(results: list[dict]) -> list[dict]:
    """One line per (data, model, sampler, steps): R_k, RMS, throughput ratio and time ratio, mean ± std over seeds."""
    keys = []
    for res in results:
        for r in res["rows"]:
            key = (res["data"], r["group"], r["sampler"], r["steps"])
            if key not in keys:
                keys.append(key)
    out = []
    for data, group, sampler, steps in keys:
        rs = [(res, r) for res in results if res["data"] == data for r in res["rows"]
              if (r["group"], r["sampler"], r["steps"]) == (group, sampler, steps)]
        ref_tp = {res["seed"]: next(r["samples_per_s"] for r in res["rows"] if r["group"] == "teacher_reference")
                  for res, _ in rs}
        line = {"data": data, "model": group, "sampler": sampler, "steps": steps, "seeds": len(rs),
                "nfe": statistics.fmean([r["nfe"] for _, r in rs if r["nfe"] is not None]) if any(r["nfe"] for _, r in rs) else None}
        line["R"], line["R_std"] = _mean_std([r["R"] for _, r in rs])
        se = [r.get("R_se") for _, r in rs]
        # the evaluation's standard error of the seed mean (each seed's jackknife error, combined)
        line["R_eval_se"] = (math.sqrt(sum(x * x for x in se)) / len(se)
                             if se and all(x is not None and math.isfinite(x) for x in se) else None)
        line["d"], line["d_std"] = _mean_std([r["d"] for _, r in rs])
        line["rms"], line["rms_std"] = _mean_std([r["rms_to_reference"] for _, r in rs])
        line["throughput_vs_dopri5"], _ = _mean_std([r["samples_per_s"] / ref_tp[res["seed"]] for res, r in rs])
        line["time_vs_teacher"], line["time_vs_teacher_std"] = _mean_std(
            [res["times"].get(group) / res["times"]["teacher"] if group in res["times"] else None for res, r in rs])
        target = TARGETS.get((group, steps))
        line["target"] = target
        line["well_conditioned"] = conditioned(results, data)
        line["met"] = (None if target is None or line["R"] is None or not line["well_conditioned"]
                       else bool(line["R"] <= target))
        out.append(line)
    return out


def _pm(m, s, d=3):
    if m is None:
        return "–"
    return f"{m:.{d}g} ± {s:.2g}" if s else f"{m:.{d}g}"


def markdown(summary: list[dict], results: list[dict], info: dict) -> str:
    lines = ["# Distillation quality (R_k)", "",
             f"Machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, torch {info['machine']['torch']}, "
             f"{info['machine']['threads']} thread(s) (median ms per 3×256-MLP teacher step: "
             f"{info['thread_check']['1_thread_ms_per_step']:.1f} with 1 thread, {info['thread_check']['2_thread_ms_per_step']:.1f} "
             f"with 2). Mode: {'quick' if info['quick'] else ('quick teacher, full student budgets' if info.get('quick_teacher') else 'full')}"
             f"{'' if info.get('teacher_channels') is None else ', teacher U-Net of %d base channels' % info['teacher_channels']}; "
             f"seeds {info['seeds']}; {info['repeats']} evaluation set(s) of {info['num']} samples; "
             f"total {info['seconds'] / 60:.1f} min.", "",
             "R_k = (d(student, k steps) − floor)/(d(teacher dopri5) − floor), d = squared W2 to held-out data "
             "(digits: classifier Fréchet distance). RMS = distillation error against the teacher's dopri5 endpoints "
             "on the same noise (multistep consistency sampling re-noises, so its RMS is not a pure map distance). "
             "Throughput relative to the teacher's dopri5; training time relative to the teacher's. "
             "R_k's std is over seeds; eval se is the evaluation sets' share of the uncertainty of the mean "
             "(each seed's jackknife standard error over its paired sets, combined).", "",
             "| data | model | sampler | steps | NFE | R_k (mean ± std) | eval se | target | met | RMS | throughput × | train time × |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        met = "–" if s["met"] is None else ("yes" if s["met"] else "**no**")
        if s["target"] is not None and not s.get("well_conditioned", True):
            met = "not measurable"
        lines.append(f"| {s['data']} | {s['model']} | {s['sampler']} | {s['steps'] if s['steps'] is not None else 'adaptive'} | "
                     f"{_pm(s['nfe'], 0, 3)} | {_pm(s['R'], s['R_std'])} | {_pm(s.get('R_eval_se'), 0, 2)} | {s['target'] or '–'} | {met} | "
                     f"{_pm(s['rms'], s['rms_std'])} | {_pm(s['throughput_vs_dopri5'], 0, 3)} | "
                     f"{_pm(s['time_vs_teacher'], s['time_vs_teacher_std'])} |")
    lines += ["", "Per seed: floor, teacher d and its excess over the floor (the denominator of R_k):", "",
              "| data | seed | floor | d(teacher dopri5) | excess | teacher train s |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['data']} | {r['seed']} | {r['floor']:.4g} | {r['d_teacher']:.4g} | {r['teacher_excess']:.4g} | "
                     f"{r['times']['teacher']:.1f} |")
    lines += ["", "Per seed, the targeted R_k with its evaluation standard error (jackknife over the evaluation sets):", "",
              "| data | seed | model | steps | R_k | eval se |", "|---|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            if (r["group"], r["steps"]) in TARGETS and r.get("R") is not None:
                lines.append(f"| {res['data']} | {res['seed']} | {r['group']} | {r['steps']} | {r['R']:.3f} | "
                             f"{_pm(r.get('R_se'), 0, 2)} |")
    bad = sorted({r["data"] for r in results if not conditioned(results, r["data"])})
    if bad:
        lines += ["", f"Not measurable: on {', '.join(bad)} the teacher's dopri5 distance exceeds the floor by less "
                  f"than {MIN_EXCESS:g}× the floor for some seed (its excess is within finite-sample noise), so R_k's denominator is noise and no "
                  "target is judged there; compare the students' d and RMS instead."]
    if info.get("note"):
        lines += ["", info["note"]]
    lines += ["", f"Command: `{info['command']}`"]
    return "\n".join(lines) + "\n"


def merge(files: list[str], *, out: str, name: str) -> int:
    """Combine results JSON files written with the same protocol (one per seed, say) into ``out/name``."""
    payloads = []
    for f in files:
        with open(f) as fh:
            payloads.append(json.load(fh))
    keys = ("quick", "quick_teacher", "teacher_channels", "repeats", "num", "methods")
    first = payloads[0]["info"]
    for f, pl in zip(files[1:], payloads[1:]):
        differ = [k for k in keys if pl["info"].get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"--merge: {f} was run with other {', '.join(differ)} than {files[0]}")
    results = [r for pl in payloads for r in pl["results"]]
    seen = [(r["data"], r["seed"]) for r in results]
    if len(set(seen)) != len(seen):
        raise SystemExit(f"--merge: a (data, seed) appears in more than one file: {sorted(seen)}")
    info = dict(first, seeds=sorted({r["seed"] for r in results}), data=list(dict.fromkeys(r["data"] for r in results)),
                seconds=sum(pl["info"]["seconds"] for pl in payloads),
                command=" && ".join(pl["info"]["command"] for pl in payloads)
                + " && python benchmarks/distill_quality.py --merge " + " ".join(os.path.basename(f) for f in files),
                note=f"Merged from {len(files)} results files (--merge): the total time is the sum of their runs' times, "
                     "which overlap where the runs went side by side.")
    summary = summarise(results)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as fh:
        json.dump({"info": info, "summary": summary, "results": results}, fh, indent=1, default=str)
    with open(os.path.join(out, f"{name}.md"), "w") as fh:
        fh.write(markdown(summary, results, info))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced training budgets (see QUICK)")
    p.add_argument("--quick-teacher", action="store_true",
                   help="the --quick teacher with the recipes' full student budgets: R_k needs a teacher measurably "
                        "above the data floor, which the full-budget teachers are not (see the results)")
    p.add_argument("--teacher-channels", type=int, metavar="C",
                   help="digits: the teacher U-Net's base channels (the students start from its weights), after "
                        "--quick/--quick-teacher's 16; the recipe's own width is 32")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="combine results JSON files of the same protocol (e.g. one per seed, run side by side) into "
                        "--out/--name and exit")
    p.add_argument("--data", default=",".join(TOYS), help="comma-separated: moons, checkerboard, gmm, 8gaussians, digits")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="progressive,consistency_distillation,reflow,consistency_training",
                   help="comma-separated; progressive_endpoint (endpoint distillation of the progressive students) needs "
                        "progressive listed before it")
    p.add_argument("--repeats", type=int, default=3, help="evaluation sets per model (noise and held-out draws)")
    p.add_argument("--num", type=int, default=2000, help="samples per evaluation set")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on small shared machines)")
    p.add_argument("--work", default=os.path.join(ROOT, "flowgen_runs", "bench_distill"), help="run folder (reused: finished runs are not redone)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results folder")
    p.add_argument("--name", default="distill_quality", help="results file stem")
    p.add_argument("--render", metavar="JSON", help="rewrite the markdown table of a results JSON and exit")
    args = p.parse_args(argv)
    if args.teacher_channels is not None and args.teacher_channels < 1:
        p.error(f"--teacher-channels must be a positive integer, got {args.teacher_channels}")
    if args.teacher_channels is not None and any(d.strip() != "digits" for d in args.data.split(",") if d.strip()):
        p.error("--teacher-channels sets the digits U-Net's width; use it with --data digits only")
    if args.merge:
        return merge(args.merge, out=args.out, name=args.name)
    if args.render:
        with open(args.render) as fh:
            payload = json.load(fh)
        payload["summary"] = summarise(payload["results"])
        with open(args.render, "w") as fh:
            json.dump(payload, fh, indent=2)
        with open(os.path.splitext(args.render)[0] + ".md", "w") as fh:
            fh.write(markdown(payload["summary"], payload["results"], payload["info"]))
        return 0

    import warnings

    import torch

    threads = thread_check()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)

    datasets = [d.strip() for d in args.data.split(",") if d.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    t0 = time.perf_counter()
    results = []

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    for name in datasets:
        kind = "digits" if name == "digits" else "toy"
        for seed in seeds:
            log(f"[{name} seed {seed}] {time.perf_counter() - t0:.0f} s elapsed")
            results.append(run_one(kind, name, seed, work=args.work, quick=args.quick, methods=methods,
                                   repeats=args.repeats, num=args.num, log=log, quick_teacher=args.quick_teacher,
                                   teacher_channels=args.teacher_channels))
    summary = summarise(results)
    info = {"machine": machine(), "quick": args.quick, "quick_teacher": args.quick_teacher,
            "teacher_channels": args.teacher_channels, "seeds": seeds, "data": datasets, "methods": methods,
            "repeats": args.repeats, "num": args.num, "seconds": time.perf_counter() - t0,
            "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])),
            "quick_overrides": QUICK if args.quick else None, "thread_check": threads}
    os.makedirs(args.out, exist_ok=True)
    payload = {"info": info, "summary": summary, "results": results}
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as fh:
        json.dump(payload, fh, indent=1, default=str)
    md = markdown(summary, results, info)
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as fh:
        fh.write(md)
    print(json.dumps({"summary": summary, "info": info}, indent=1, default=str))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
