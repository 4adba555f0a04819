"""Variants of the toy consistency-distillation recipe, scored on evaluation sets the benchmark never uses.

For a ``distill_quality.py --quick`` work folder, trains each variant (the benchmark's quick
consistency-distillation arguments plus the variant's LightningCLI overrides) from the same quick
teacher, and scores R_1 and R_2 of every variant and of the benchmark's own student (``base``) on
held-out sets drawn with another ``val_seed`` than the benchmark's, so that a recipe change chosen
here is not chosen on the benchmark's evaluation sets. Finished runs are reused.

    python benchmarks/consistency_variants.py --work <work> --data gmm --seeds 0,1,2 \
        --variant "N40=--model.init_args.num_scales 40" --variant "S18k=--trainer.max_steps 18000"

Prints JSON and a markdown table; ``--out`` writes both.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"NAME=--a 1 --b 2"`` → ``("NAME", ["--a", "1", "--b", "2"])``."""
    name, sep, rest = text.partition("=")
    if not sep or not name or name == "base" or not rest.split():
        raise ValueError(f"--variant must be NAME=ARGS with NAME not 'base' and ARGS not empty, got {text!r}")
    return name, rest.split()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="the distill_quality.py --quick --work folder (holds <data>_seed<S>/)")
    p.add_argument("--data", default="gmm", choices=("moons", "checkerboard", "gmm"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variant", action="append", default=[], help="NAME=LightningCLI overrides (repeatable)")
    p.add_argument("--repeats", type=int, default=8, help="evaluation sets")
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--val-seed", type=int, default=777, help="the evaluation sets' val_seed (the benchmark's is 12345)")
    p.add_argument("--out", help="folder for <name>.json and <name>.md")
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    try:
        variants = [("base", [])] + [parse_variant(v) for v in args.variant]
    except ValueError as err:
        p.error(str(err))

    import torch

    import distill_quality as dq
    from _common import command_line, emit, machine_line
    from flowgen.checkpoint import load_generator
    from flowgen.distill_cli import (
        distill_student,
        evaluate_entries,
        make_protocol,
        reference_samples,
        student_entries,
        train_teacher,
        with_ratios,
    )
    from flowgen.lightning.distill import load_student

    torch.set_num_threads(1)
    start = time.time()
    recipe = os.path.join(dq.ROOT, dq.RECIPES["toy"][1]["consistency_distillation"])
    quick = dq.data_args("toy", args.data) + dq.quick_args("toy", args.data, "consistency_distillation") + dq.COMMON
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        root = os.path.join(args.work, f"{args.data}_seed{seed}")
        targs = dq.data_args("toy", args.data) + dq.quick_args("toy", args.data, "teacher") + dq.COMMON
        tck, _ = train_teacher(os.path.join(dq.ROOT, dq.RECIPES["toy"][0]), os.path.join(root, "teacher"), seed=seed, args=targs)
        teacher, path, prediction, meta = load_generator(tck)
        meta = copy.deepcopy(meta)
        meta["data"]["init_args"]["val_seed"] = args.val_seed
        protocol = make_protocol(meta, num=args.num, repeats=args.repeats, seed=seed)
        ref, ref_row = reference_samples(teacher, path, prediction, protocol)
        for name, extra in variants:
            folder = os.path.join(root, "consistency_distillation" if name == "base" else os.path.join("cd_variants", name))
            students, sec = distill_student(recipe, folder, teacher=tck, seed=seed, args=quick + extra)
            gen = load_student(students.get("consistency_distillation", students["last"]))
            r = [ref_row] + evaluate_entries(student_entries("cd", gen, [1, 2], seed=seed), protocol, reference=ref)
            with_ratios(r, protocol.floor, floors=protocol.floors)
            row = {"seed": seed, "variant": name, "args": extra, "train_seconds": sec,
                   "tau": (gen.step_times or {}).get(2, [None, None])[1],
                   "R1": r[1]["R"], "R2": r[2]["R"], "R1_se": r[1].get("R_se"), "R2_se": r[2].get("R_se")}
            rows.append(row)
            print(f"seed {seed} {name}: R_1 {row['R1']:.3f} R_2 {row['R2']:.3f} ({sec:.0f} s)", file=sys.stderr, flush=True)

    info = {"machine": machine_line(),
            "data": args.data, "repeats": args.repeats, "num": args.num, "val_seed": args.val_seed,
            "minutes": (time.time() - start) / 60, "command": command_line(__file__, argv)}
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"# Consistency-distillation variants: {args.data}, quick teacher", "",
             f"Machine: {info['machine']}; {args.repeats} evaluation sets of {args.num} samples drawn with val_seed "
             f"{args.val_seed} (not the benchmark's); {info['minutes']:.1f} min (finished training runs reused).", "",
             "R_k as in distill_quality.py; `base` is the benchmark's own student; every variant adds its overrides "
             "to the benchmark's quick arguments and starts from the same teacher.", "",
             "| variant | overrides | " + " | ".join(f"seed {s} R_1 / R_2" for s in seeds) + " | mean R_1 | mean R_2 | train s |",
             "|---|---|" + "---|" * len(seeds) + "---|---|---|"]
    for name, extra in variants:
        mine = {r["seed"]: r for r in rows if r["variant"] == name}
        cells = [f"{mine[s]['R1']:.3f} / {mine[s]['R2']:.3f}" for s in seeds]
        m1 = sum(mine[s]["R1"] for s in seeds) / len(seeds)
        m2 = sum(mine[s]["R2"] for s in seeds) / len(seeds)
        lines.append(f"| {name} | {' '.join(extra) or '–'} | " + " | ".join(cells) + f" | {m1:.3f} | {m2:.3f} | {sum(mine[s]['train_seconds'] for s in seeds) / len(seeds):.0f} |")
    lines += ["", f"Command: `{info['command']}`", ""]
    emit({"info": info, "rows": rows}, "\n".join(lines), out=args.out,
         name=args.name or f"consistency_variants_{args.data}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
