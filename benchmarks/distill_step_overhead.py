"""Host synchronisations and time per eager distillation step, on a CUDA device.

Each distiller's loss object (:class:`flowgen.distill.ProgressiveDistillation` with 2 and 4 teacher
steps per student step, :class:`flowgen.distill.ConsistencyDistillation` with a Heun teacher step
and an EMA target, :class:`flowgen.distill.OneStepDistillation`) drives a plain loop: loss,
backward, ``torch.optim.Adam`` step, with the digits recipes' U-Net (base 16 channels, mults
[1, 2], random weights) as teacher and student and a batch of 128 8×8 images on the device.

* ``syncs_per_step``: warnings raised by ``torch.cuda.set_sync_debug_mode("warn")`` over 10 steps,
  divided by 10 — every host read of a device value (finiteness and range checks, ``float(t)``);
* ``ms_per_step``: wall time of 50 steps after 5 warm-up steps, device synchronised at both ends.

Each case runs twice: with the loss objects' argument checks (their default, as in a custom loop)
and inside ``flowgen._validation.value_checks(False)``, as the distillation modules train on an
accelerator.

Run on a machine with a CUDA GPU::

    python benchmarks/distill_step_overhead.py [--out benchmarks/results]

Writes ``distill_step_overhead.json`` and ``.md`` under ``--out`` and prints both.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import torch

from flowgen._validation import value_checks

HERE = Path(__file__).resolve().parent


def _cases(device: torch.device, batch: int):
    from flowgen.distill import ConsistencyDistillation, ConstantCurriculum, OneStepDistillation, ProgressiveDistillation
    from flowgen.nn import UNet
    from flowgen.paths import RectifiedFlow

    torch.manual_seed(0)
    path = RectifiedFlow()

    def net():
        return UNet(in_channels=1, base_channels=16, channel_mults=[1, 2], num_classes=None).to(device)

    teacher = net().eval().requires_grad_(False)
    student = net()
    data = torch.randn(batch, 1, 8, 8, device=device)
    noise, endpoint = torch.randn_like(data), torch.randn_like(data)
    g = torch.Generator().manual_seed(0)
    kw = dict(path=path, teacher_prediction="velocity")
    pd2 = ProgressiveDistillation(teacher, student_steps=8, **kw)
    pd4 = ProgressiveDistillation(teacher, student_steps=4, factor=4, **kw)
    cd = ConsistencyDistillation(teacher, curriculum=ConstantCurriculum(18, 0.95), spacing="uniform", **kw)
    f, target = cd.consistency_function(student), cd.consistency_function(net().requires_grad_(False))
    one = OneStepDistillation(path, "velocity")
    cases = {
        "progressive (k = 2)": lambda: pd2.loss(student, data, generator=g).loss,
        "progressive (k = 4)": lambda: pd4.loss(student, data, generator=g).loss,
        "consistency distillation (Heun, EMA target)": lambda: cd.loss(f, data, target_net=target, generator=g).loss,
        "one-step distillation (reflow pairs)": lambda: one.loss(student, noise, endpoint).loss,
    }
    return cases, torch.optim.Adam(student.parameters(), lr=1e-4)


def measure(device: torch.device, *, batch: int = 128, steps: int = 50, checks: bool = True) -> dict:
    """``{case: {"syncs_per_step", "ms_per_step"}}`` (syncs ``None`` off CUDA), under ``value_checks(checks)``."""
    with value_checks(checks):
        return _measure(device, batch=batch, steps=steps)


def _measure(device: torch.device, *, batch: int, steps: int) -> dict:
    cases, opt = _cases(device, batch)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out = {}
    for name, loss in cases.items():
        def step():
            opt.zero_grad(set_to_none=True)
            loss().backward()
            opt.step()

        for _ in range(5):
            step()
        sync()
        syncs = None
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    for _ in range(10):
                        step()
                    sync()
            finally:
                torch.cuda.set_sync_debug_mode(0)
            syncs = len(caught) / 10
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        out[name] = {"syncs_per_step": syncs, "ms_per_step": round((time.perf_counter() - t0) / steps * 1e3, 2)}
        print(name, out[name], flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50, help="timed steps per case")
    p.add_argument("--out", default=str(HERE / "results"), help="results folder")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    on = measure(device, batch=a.batch, steps=a.steps, checks=True)
    off = measure(device, batch=a.batch, steps=a.steps, checks=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    r = {"device": name, "torch": torch.__version__, "batch": a.batch, "steps": a.steps,
         "results": on, "results_without_value_checks": off}
    md = [f"Eager distillation steps on {name} (torch {torch.__version__}), digits U-Net, batch {a.batch}", "",
          "| step | host syncs per step (checks on / off) | ms per step (checks on / off) |", "|---|---|---|"]

    def cell(v):
        return "n/a" if v is None else v

    md += [f"| {k} | {cell(on[k]['syncs_per_step'])} / {cell(off[k]['syncs_per_step'])} | "
           f"{on[k]['ms_per_step']} / {off[k]['ms_per_step']} |" for k in on]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "distill_step_overhead.json"), "w") as fh:
        json.dump(r, fh, indent=2)
    with open(os.path.join(a.out, "distill_step_overhead.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    print(json.dumps(r, indent=1))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
