"""How much does a consistency student's 2-step R depend on its intermediate time τ?

For a finished ``distill_quality.py`` run (its ``--work`` folder), evaluates the consistency-distillation
student's 1-step sampler and its 2-step sampler at every candidate τ of the end-of-training search
(the interior times of the final training grid, as ``ConsistencyModule`` searches them) on the
benchmark's own evaluation sets, and marks the τ the search chose. Use it to see whether the
search's pick matters beyond the evaluation noise.

    python benchmarks/consistency_step_times.py --work <work> --data gmm --seed 0 --repeats 16

Prints JSON and a markdown table; ``--out`` writes both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="the distill_quality.py --work folder (holds <data>_seed<S>/)")
    p.add_argument("--data", default="gmm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=16, help="evaluation sets (as distill_quality.py --repeats)")
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--out", help="folder for <name>.json and <name>.md")
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)

    import torch

    from _common import command_line, emit, machine_line
    from flowgen.checkpoint import load_generator
    from flowgen.distill import ConsistencyGenerator
    from flowgen.distill_cli import Entry, evaluate_entries, make_protocol, reference_samples, with_ratios
    from flowgen.lightning.distill import load_student

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    root = os.path.join(args.work, f"{args.data}_seed{args.seed}")
    teacher, path, pred, meta = load_generator(os.path.join(root, "teacher", "checkpoints", "last.ckpt"))
    protocol = make_protocol(meta, num=args.num, repeats=args.repeats, seed=args.seed)
    ref, ref_row = reference_samples(teacher, path, pred, protocol)
    gen = load_student(os.path.join(root, "consistency_distillation", "students", "consistency_distillation.ckpt"))
    candidates = _candidates(root, gen, path)
    tuned = gen.step_times[2][1] if 2 in gen.step_times else None

    def two_step(tau):
        g2 = ConsistencyGenerator(gen.model, path, t_min=gen.t_min, t_max=gen.t_max, step_times={2: [gen.t_max, tau]},
                                  rho=gen.rho, spacing=gen.spacing)
        # the generator seeds of distill_cli.student_entries, so the tuned τ reproduces the benchmark's row
        return lambda noise, i: g2.sample(noise, steps=2, generator=torch.Generator().manual_seed(args.seed + 31 * i + 2))

    entries = [Entry("student", "1 step", 1, lambda noise, i: gen.sample(noise, steps=1), nfe=1, group="student")]
    entries += [Entry("student", f"{tau:.4f}", 2, two_step(tau), nfe=2, group="student") for tau in candidates]
    rows = [ref_row] + evaluate_entries(entries, protocol, reference=ref)
    with_ratios(rows, protocol.floor, floors=protocol.floors)
    table = [{"tau": tau, "steps": r["steps"], "R": r["R"], "R_se": r.get("R_se"), "tuned": tau is not None and tau == tuned}
             for tau, r in zip([None] + candidates, rows[1:])]
    info = {"machine": machine_line(),
            "work": args.work, "data": args.data, "seed": args.seed, "repeats": args.repeats, "num": args.num, "tuned_tau": tuned,
            "seconds": time.perf_counter() - t0,
            "command": command_line(__file__, argv)}
    payload = {"info": info, "rows": table}
    emit(payload, markdown(payload), out=args.out, name=args.name or f"consistency_step_times_{args.data}_seed{args.seed}")
    return 0


def _candidates(root: str, gen, path) -> list[float]:
    """The search's candidates (:func:`flowgen.lightning.distill.tune_candidates`), ``num_scales`` from the run's config."""
    import yaml

    from flowgen.lightning.distill import tune_candidates

    with open(os.path.join(root, "consistency_distillation", "config.yaml")) as fh:
        init = yaml.safe_load(fh)["model"]["init_args"]
    if init.get("curriculum", "constant") != "constant":
        raise ValueError("only the constant curriculum (num_scales) is supported here")
    return tune_candidates(int(init.get("num_scales", 18)), path, t_min=gen.t_min, t_max=gen.t_max, rho=gen.rho,
                           spacing=gen.spacing, limit=int(init.get("tune_candidates", 24)))


def markdown(payload: dict) -> str:
    info = payload["info"]
    lines = [f"# Consistency 2-step time: {info['data']}, seed {info['seed']}", "",
             f"Machine: {info['machine']}; {info['repeats']} evaluation sets of {info['num']} samples; {info['seconds'] / 60:.1f} min.", "",
             "R_k of the consistency-distillation student on the benchmark's evaluation sets: its 1-step sampler, then its 2-step "
             "sampler at each candidate intermediate time τ of the end-of-training search (**bold**: the τ the search chose).", "",
             "| τ | steps | R_k | eval se |", "|---|---|---|---|"]
    for r in payload["rows"]:
        tau = "–" if r["tau"] is None else (f"**{r['tau']:.4f}**" if r["tuned"] else f"{r['tau']:.4f}")
        se = "–" if r["R_se"] is None else f"{r['R_se']:.3f}"
        lines.append(f"| {tau} | {r['steps']} | {r['R']:.3f} | {se} |")
    lines += ["", f"Command: `{info['command']}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
