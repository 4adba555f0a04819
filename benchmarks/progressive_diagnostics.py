"""Where does a few-step progressive student lose quality? Two diagnostics on a finished benchmark run.

1. **Segment swaps.** The student's ``K`` DDIM steps run on the grid ``t_0 = 1 > … > t_K = 0``. For
   each step ``k`` the teacher's exact ODE (dopri5) runs everywhere but step ``k``, which the student
   takes; ``R_k^{(only k)}`` then measures what that one step costs. Also reported: the student from
   the teacher's exact state at ``t_k`` on (``from k``), and each step's RMS error against the
   teacher's exact segment.
2. **Exact-segment fine-tuning** (``--finetune-steps``): the student is trained further on the
   teacher's own ODE segments ``x_{t_k} → x_{t_{k+1}}`` (dopri5 trajectories from fresh noise,
   ``--trajectories`` of them, 1024 held out), with the progressive loss (truncated-SNR weighted,
   in the student's prediction space). If the student fit exact targets well, its R_K would fall
   towards the teacher's; the held-out segment losses say whether it under- or over-fits. With
   ``--experts`` every step gets its own copy of the student, fine-tuned on that step's segments only
   (K times the parameters at the same cost per step): if one network shared by the K steps were what
   limits the fit, the copies would fit, and score, better.
3. **Stochastic sampling** (``--stochastic``): the same student and ``K`` evaluations, sampled with DDIM
   at ``eta > 0`` (fresh noise replaces part of the predicted noise at every step) and with Meng et
   al.'s stochastic sampler for distilled students (arXiv:2210.03142: a deterministic step of twice the
   length, then the forward process back up one step; the last step deterministic). Re-noising can
   wash out earlier steps' errors, or add its own.
4. **End-to-end fine-tuning** (``--finetune-steps`` with ``--end-to-end``): the student is trained
   through its whole ``K``-step sampler, the loss being the squared distance of its sample to the
   teacher's exact endpoint from the same noise. The per-step loss only shows the student the
   teacher's states; end to end, a later step can learn to undo an earlier step's error on the states
   the student itself visits, and the loss is the distillation error itself.

Run after ``distill_quality.py --data digits --quick-teacher`` (its ``--work`` folder)::

    python benchmarks/progressive_diagnostics.py --work <work> --seed 0 --steps 4 --finetune-steps 3000

Prints JSON and a markdown table; ``--out`` writes both. R is against the teacher's chained dopri5
(one solve per grid segment) on the benchmark's evaluation sets.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _segments(teacher, path, pred, x, grid):
    """The teacher's exact states at every grid time from ``x`` at ``grid[0]`` (one dopri5 solve per segment)."""
    from flowgen.samplers import integrate

    states = [x]
    for k in range(grid.numel() - 1):
        states.append(integrate(teacher, path, states[-1], prediction=pred, method="dopri5", grid=grid[k:k + 2]).samples)
    return states


def segment_swaps(teacher, path, pred, student, protocol) -> dict:
    """Distances (per evaluation set) of the teacher, the student, and the swaps described in the module docstring."""
    import torch

    from flowgen.samplers import integrate

    g = student.grid.to(torch.float64)
    k_steps = g.numel() - 1

    def run_student(x, k0, k1):
        return integrate(student.model, student.path, x, prediction=student.prediction, method="ddim", grid=g[k0:k1 + 1]).samples

    out: dict[str, list[float]] = {}
    with torch.no_grad():
        for i in range(protocol.repeats):
            x0 = protocol.noises[i] * float(path.sigma(g[:1])[0])
            exact = _segments(teacher, path, pred, x0, g)
            out.setdefault("teacher", []).append(protocol.distance(exact[-1], i))
            out.setdefault("student", []).append(protocol.distance(run_student(x0, 0, k_steps), i))
            for k in range(k_steps):
                one = run_student(exact[k], k, k + 1)
                out.setdefault(f"rms {k}", []).append(float((one - exact[k + 1]).flatten(1).pow(2).sum(1).mean().sqrt()))
                rest = _segments(teacher, path, pred, one, g[k + 1:])[-1]
                out.setdefault(f"only {k}", []).append(protocol.distance(rest, i))
                if k:
                    out.setdefault(f"from {k}", []).append(protocol.distance(run_student(exact[k], k, k_steps), i))
    return out


def stochastic_sampling(student, path, protocol, *, etas, seed: int) -> dict:
    """Distances (per evaluation set) of the student's ``K``-evaluation stochastic samplers (module docstring, 3.)."""
    import torch

    from flowgen.samplers import ddim_step, sample

    g = student.grid.to(torch.float64)
    k_steps = g.numel() - 1
    a = path.alpha(g).tolist()
    s = path.sigma(g).tolist()
    times = g.tolist()

    def meng(x, gen):
        for k in range(k_steps):
            # deterministic: the last step to t_K, every other one two steps down
            y = ddim_step(student.model, student.path, x, t=times[k], s=times[min(k + 2, k_steps)], prediction=student.prediction)
            if k == k_steps - 1:
                return y
            r = a[k + 1] / a[k + 2]  # forward process t_{k+2} -> t_{k+1}
            x = r * y + max(s[k + 1] ** 2 - (r * s[k + 2]) ** 2, 0.0) ** 0.5 * torch.randn(x.shape, generator=gen, dtype=x.dtype)

    out: dict[str, list[float]] = {}
    with torch.no_grad():
        for i in range(protocol.repeats):
            x0 = protocol.noises[i] * s[0]
            for eta in etas:
                gen = torch.Generator().manual_seed(seed + 31 * i + 2000)
                x = sample(student.model, student.path, protocol.noises[i], prediction=student.prediction, method="ddim",
                           grid=student.grid, eta=eta, generator=gen).samples
                out.setdefault(f"ddim eta={eta:g}", []).append(protocol.distance(x, i))
            if k_steps >= 2:
                out.setdefault("meng", []).append(protocol.distance(meng(x0, torch.Generator().manual_seed(seed + 31 * i + 1000)), i))
    return out


def trajectories(teacher, path, pred, grid, *, num: int, shape, seed: int, chunk: int = 2048):
    """``(K + 1, num, *D)``: the teacher's exact states at the grid times from fresh noise."""
    import torch

    gen = torch.Generator().manual_seed(10_000_000 + seed)
    parts = []
    with torch.no_grad():
        for lo in range(0, num, chunk):
            x = torch.randn((min(chunk, num - lo), *shape), generator=gen) * float(path.sigma(grid[:1])[0])
            parts.append(torch.stack(_segments(teacher, path, pred, x, grid)))
    return torch.cat(parts, 1)


def per_step_model(nets, times):
    """A module calling ``nets[k]`` at the grid time ``times[k]`` (every call's ``t`` must be one of them, shared by the batch)."""
    import torch

    class PerStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.nets = torch.nn.ModuleList(nets)
            self.register_buffer("times", times.detach().to(torch.float64).clone())

        def forward(self, x, t, *args, **kwargs):
            t0 = t.reshape(-1)[0]
            gap = (self.times - float(t0)).abs()
            k = int(gap.argmin())
            if float(gap[k]) > 1e-6 or not bool((t == t0).all()):
                raise ValueError(f"t must be one grid time of {self.times.tolist()} shared by the batch, got {t.reshape(-1)[:4].tolist()}")
            return self.nets[k](x, t, *args, **kwargs)

    return PerStep()


def finetune(student, states, *, steps: int, lr: float, batch: int, seed: int, held_out: int = 1024,
             experts: bool = False, log=print) -> dict:
    """Train ``student.model`` on the exact segments in ``states`` (cosine lr); held-out losses before and after.

    With ``experts`` the student's network is first copied once per step, each copy trained on its own
    step's segments only, and ``student.model`` becomes a :func:`per_step_model` of the copies.
    """
    import copy

    import torch

    from flowgen.distill.progressive import TruncatedSNRWeight, _solve_target, _weighted
    from flowgen.objectives.metrics import get_metric

    g, sp = student.grid.to(torch.float64), student.prediction
    k_steps = g.numel() - 1
    nets = [copy.deepcopy(student.model) for _ in range(k_steps)] if experts else [student.model]
    weight, metric = TruncatedSNRWeight(), get_metric("l2")
    val, train = states[:, :held_out], states[:, held_out:]

    def seg_loss(st, idx, k):
        x_t, x_end = st[k, idx], st[k + 1, idx]
        t = torch.full((len(idx),), float(g[k]))
        s = torch.full((len(idx),), float(g[k + 1]))
        target = _solve_target(x_t, x_end, t, s, student.path, sp)
        return _weighted(nets[k if experts else 0](x_t, t), target, t, student.path, sp, weight, metric)

    def held_out_losses():
        for net in nets:
            net.eval()
        with torch.no_grad():
            return [float(seg_loss(val, torch.arange(val.shape[1]), k).mean()) for k in range(k_steps)]

    before = held_out_losses()
    params = [p for net in nets for p in net.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    rng = torch.Generator().manual_seed(seed)
    train_loss = float("nan")
    for it in range(steps):
        for net in nets:
            net.train()
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * it / steps))
        k = torch.randint(0, k_steps, (batch,), generator=rng)
        idx = torch.randint(0, train.shape[1], (batch,), generator=rng)
        loss = sum(seg_loss(train, idx[k == kk], kk).sum() for kk in range(k_steps) if bool((k == kk).any())) / batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        train_loss = float(loss.detach())
        if (it + 1) % 500 == 0:
            log(f"  fine-tune step {it + 1}: train loss {train_loss:.3g}")
    for net in nets:
        net.eval()
    if experts:
        student.model = per_step_model(nets, g[:-1])
    return {"held_out": held_out, "held_out_before": before, "held_out_after": held_out_losses(), "last_train_loss": train_loss}


def finetune_end_to_end(student, states, *, steps: int, lr: float, batch: int, seed: int, held_out: int = 1024,
                        log=print) -> dict:
    """Train ``student.model`` through its whole ``K``-step DDIM sampler against the teacher's exact endpoints.

    The loss is the squared distance between the student's ``K``-step sample from a trajectory's noise
    and the teacher's exact endpoint (``states[K]``), back-propagated through all ``K`` evaluations, so
    a later step can learn to undo an earlier one's error on the states the student itself visits
    (the per-step loss only ever shows it the teacher's states). Held-out endpoint RMS before and after.
    """
    import torch

    from flowgen.samplers import ddim_step

    g, sp = student.grid.to(torch.float64).tolist(), student.prediction
    k_steps = len(g) - 1
    net = student.model
    val, train = states[:, :held_out], states[:, held_out:]

    def run(x):
        for k in range(k_steps):
            x = ddim_step(net, student.path, x, t=g[k], s=g[k + 1], prediction=sp)
        return x

    def held_out_rms():
        net.eval()
        with torch.no_grad():
            return float((run(val[0]) - val[k_steps]).flatten(1).pow(2).sum(1).mean().sqrt())

    before = held_out_rms()
    for q in net.parameters():
        q.requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    rng = torch.Generator().manual_seed(seed)
    train_loss = float("nan")
    for it in range(steps):
        net.train()
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * it / steps))
        idx = torch.randint(0, train.shape[1], (batch,), generator=rng)
        loss = (run(train[0, idx]) - train[k_steps, idx]).flatten(1).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        train_loss = float(loss.detach())
        if (it + 1) % 500 == 0:
            log(f"  end-to-end step {it + 1}: train loss {train_loss:.3g}")
    net.eval()
    return {"held_out": held_out, "held_out_rms_before": before, "held_out_rms_after": held_out_rms(), "last_train_loss": train_loss}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="the distill_quality.py --work folder (holds digits_seed<S>/)")
    p.add_argument("--data", default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=4, help="the progressive student's N (its snapshot progressive_N<steps>.ckpt)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--finetune-steps", type=int, default=0)
    p.add_argument("--trajectories", type=int, default=24576)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--experts", action="store_true", help="fine-tune one copy of the student per step, each on its own step's segments")
    p.add_argument("--end-to-end", action="store_true",
                   help="fine-tune through the student's whole K-step sampler against the teacher's exact endpoints instead of per segment")
    p.add_argument("--stochastic", action="store_true", help="also score the student's stochastic samplers (DDIM eta, Meng et al.)")
    p.add_argument("--etas", default="0,0.1,0.2,0.3,0.5,1", help="DDIM eta values for --stochastic")
    p.add_argument("--cache", help="a .pt file for the teacher trajectories: loaded if it exists (it must match --trajectories), else written")
    p.add_argument("--out", help="folder for <name>.json and <name>.md")
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    try:
        etas = [float(v) for v in args.etas.split(",")]
    except ValueError:
        p.error(f"--etas must be comma-separated numbers, got {args.etas!r}")
    if not all(0.0 <= e <= 1.0 for e in etas):
        p.error(f"--etas must be numbers in [0, 1], got {args.etas!r}")

    import torch

    from _common import command_line, emit, machine_line
    from flowgen.checkpoint import load_generator
    from flowgen.distill_cli import make_protocol
    from flowgen.lightning.distill import load_student

    torch.set_num_threads(1)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    root = os.path.join(args.work, f"{args.data}_seed{args.seed}")
    teacher, path, pred, meta = load_generator(os.path.join(root, "teacher", "checkpoints", "last.ckpt"))
    protocol = make_protocol(meta, num=args.num, repeats=args.repeats, seed=args.seed)
    student = load_student(os.path.join(root, "progressive", "students", f"progressive_N{args.steps}.ckpt"))
    if student.grid.numel() - 1 != args.steps:
        raise ValueError(f"--steps {args.steps} does not match the student's grid of {student.grid.numel() - 1} steps")

    def ratios(d: dict) -> dict:
        den = sum(d["teacher"]) / len(d["teacher"]) - protocol.floor
        return {k: (sum(v) / len(v) if k.startswith("rms") else (sum(v) / len(v) - protocol.floor) / den) for k, v in d.items()}

    log(f"[{args.data} seed {args.seed}] segment swaps, N = {args.steps}")
    swaps = segment_swaps(teacher, path, pred, student, protocol)
    result = {"swaps": ratios(swaps), "swaps_raw": swaps}
    if args.stochastic:
        log("  stochastic sampling")
        sto = stochastic_sampling(student, path, protocol, etas=etas, seed=args.seed)
        result["stochastic"] = ratios({"teacher": swaps["teacher"], **sto})
        result["stochastic_raw"] = sto
    if args.finetune_steps:
        log(f"  teacher trajectories: {args.trajectories}")
        t1 = time.perf_counter()
        if args.cache and os.path.exists(args.cache):
            states = torch.load(args.cache)
            if tuple(states.shape[:2]) != (args.steps + 1, args.trajectories):
                raise ValueError(f"--cache {args.cache} holds {tuple(states.shape[:2])} states, expected {(args.steps + 1, args.trajectories)}")
            result["trajectories_from"] = args.cache
        else:
            states = trajectories(teacher, path, pred, student.grid.to(torch.float64), num=args.trajectories,
                                  shape=tuple(meta["data_shape"]), seed=args.seed)
            result["trajectory_seconds"] = time.perf_counter() - t1
            if args.cache:
                torch.save(states, args.cache)
        t1 = time.perf_counter()
        if args.end_to_end:
            result["finetune"] = finetune_end_to_end(student, states, steps=args.finetune_steps, lr=args.lr, batch=args.batch,
                                                     seed=args.seed, log=log)
        else:
            result["finetune"] = finetune(student, states, steps=args.finetune_steps, lr=args.lr, batch=args.batch,
                                          seed=args.seed, experts=args.experts, log=log)
        result["finetune"]["seconds"] = time.perf_counter() - t1
        after = segment_swaps(teacher, path, pred, student, protocol)
        result["after_finetune"] = ratios(after)
    info = {"machine": machine_line(),
            "work": args.work, "seed": args.seed, "steps": args.steps, "repeats": args.repeats, "num": args.num,
            "finetune_steps": args.finetune_steps, "trajectories": args.trajectories, "lr": args.lr, "batch": args.batch,
            "experts": args.experts, "end_to_end": args.end_to_end, "stochastic": args.stochastic,
            "seconds": time.perf_counter() - t0, "floor": protocol.floor,
            "command": command_line(__file__, argv)}
    payload = {"info": info, "result": result}
    emit(payload, markdown(payload), out=args.out, name=args.name or (f"progressive_diagnostics_{args.data}_seed{args.seed}_N{args.steps}"
                                                              f"{'_experts' if args.experts else ''}{'_e2e' if args.end_to_end else ''}"))
    return 0


def markdown(payload: dict) -> str:
    info, res = payload["info"], payload["result"]
    k_steps = info["steps"]
    lines = [f"# Progressive diagnostics: {os.path.basename(info['work'].rstrip('/'))}, seed {info['seed']}, N = {k_steps}", "",
             f"Machine: {info['machine']}; {info['repeats']} evaluation sets of {info['num']} samples; {info['seconds'] / 60:.1f} min.", "",
             "R = (d − floor)/(d(teacher) − floor), the teacher being its dopri5 solved segment by segment on the student's grid. "
             "`only k`: the teacher's exact ODE everywhere but step k, which the student takes; `from k`: the teacher's exact "
             "state at t_k, then the student; RMS: one student step from the teacher's exact state against the exact segment.", ""]
    cols = ["student"] + [f"only {k}" for k in range(k_steps)] + [f"from {k}" for k in range(1, k_steps)]
    tuned = ("after end-to-end fine-tuning" if info.get("end_to_end") else
             "after exact-segment fine-tuning" + (", one copy per step" if info.get("experts") else ""))
    rows = [("as distilled", res["swaps"])] + ([(tuned, res["after_finetune"])] if "after_finetune" in res else [])
    lines += ["| student | R_N | " + " | ".join(f"R ({c})" for c in cols[1:]) + " | " + " | ".join(f"RMS step {k}" for k in range(k_steps)) + " |",
              "|" + "---|" * (2 + len(cols) - 1 + k_steps)]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " | "
                     + " | ".join(f"{r[f'rms {k}']:.4f}" for k in range(k_steps)) + " |")
    if "stochastic" in res:
        sto = {k: v for k, v in res["stochastic"].items() if k != "teacher"}
        lines += ["", f"Stochastic sampling ({k_steps} evaluations each; `ddim eta=0` is the deterministic sampler above; "
                  "`meng`: Meng et al.'s two-steps-down, one-step-up scheme):", "",
                  "| sampler | " + " | ".join(sto) + " |", "|---|" + "---|" * len(sto),
                  "| R_N | " + " | ".join(f"{v:.3f}" for v in sto.values()) + " |"]
    if "finetune" in res and info.get("end_to_end"):
        ft = res["finetune"]
        made = (f"from {res['trajectories_from']}" if "trajectories_from" in res
                else f"{res['trajectory_seconds'] / 60:.1f} min to make")
        lines += ["", f"End-to-end fine-tuning (the loss: squared distance of the student's {k_steps}-step sample to the "
                  f"teacher's exact endpoint on the same noise, through all {k_steps} evaluations): {info['finetune_steps']} steps, "
                  f"lr {info['lr']} (cosine), batch {info['batch']}, on {info['trajectories'] - ft['held_out']} teacher "
                  f"trajectories ({made}); held-out endpoint RMS {ft['held_out_rms_before']:.4f} → {ft['held_out_rms_after']:.4f}; "
                  f"last training loss {ft['last_train_loss']:.3g}; {ft['seconds'] / 60:.1f} min."]
    elif "finetune" in res:
        ft = res["finetune"]
        made = (f"from {res['trajectories_from']}" if "trajectories_from" in res
                else f"{res['trajectory_seconds'] / 60:.1f} min to make")
        copies = f" ({info['steps']} copies of the student, one per step, each on its step's segments)" if info.get("experts") else ""
        lines += ["", f"Fine-tuning{copies}: {info['finetune_steps']} steps, lr {info['lr']} (cosine), batch {info['batch']}, on "
                  f"{info['trajectories'] - ft['held_out']} teacher trajectories ({made}); "
                  f"held-out weighted segment losses before → after: "
                  + ", ".join(f"step {k} {a:.2e} → {b:.2e}" for k, (a, b) in enumerate(zip(ft["held_out_before"], ft["held_out_after"])))
                  + f"; last training loss {ft['last_train_loss']:.2e}."]
    lines += ["", f"Command: `{info['command']}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
