"""A subprocess that does flowgen work and kills itself with SIGKILL at a chosen point.

Used by ``test_faults.py``; every run is CPU-only, single-threaded and deterministic, so a resumed
run can be compared bit for bit with an uninterrupted one. Usage::

    python _rel_fault_worker.py <job> <json options>

Jobs:

* ``train`` — a FlowModule on a 2-D toy through ``make_trainer`` (checkpoint every step, exact
  resume from ``last.ckpt`` when it exists); kills itself at ``kill_step`` in ``kill_phase``:
  ``batch_start`` (before the step's batch), ``before_optimizer`` (after backward, before the
  update), ``mid_save`` (half-way through writing the step's checkpoint). Writes the final
  state dict to ``out``.
* ``pairs`` — :func:`flowgen.distill.generate_pairs`; kills itself while writing shard
  ``kill_shard`` (half the bytes of its temporary file written).
* ``save`` — :func:`flowgen.checkpoint.atomic_save` (or the digits classifier cache writer) of
  ``version``, killed half-way through the write when ``kill`` is set.
* ``distill`` — progressive distillation (3 rounds) or reflow (a round and the 1-step phase) from a
  teacher checkpoint, killed before a batch, half-way through a checkpoint (``mid_save``), or
  half-way through writing the ``kill_step``-th reflow pair shard (``pair_shard``).

A kill point that is never reached exits with code 3, so a test cannot pass vacuously.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
KILLED_MARK = "KILL-POINT-REACHED"


def die() -> None:
    sys.stdout.write(KILLED_MARK + "\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_during_next_save(match=lambda obj: True):
    """Replace ``torch.save`` so that the next matching save writes half its bytes, flushes, and SIGKILLs the process."""
    import torch

    real = torch.save

    def partial(obj, f, *args, **kwargs):
        if not match(obj):
            return real(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        raw = buf.getvalue()
        if hasattr(f, "write"):
            f.write(raw[: len(raw) // 2])
            f.flush()
            os.fsync(f.fileno())
        else:
            with open(f, "wb") as fh:
                fh.write(raw[: len(raw) // 2])
        die()

    torch.save = partial


def job_train(o: dict) -> None:
    import lightning.pytorch as pl
    import torch

    from flowgen.checkpoint import safe_load
    from flowgen.lightning import FlowModule, ToyDataModule, make_trainer
    from flowgen.nn import MLP
    from flowgen.objectives import rectified_flow

    torch.set_num_threads(1)
    root = o["root"]
    last = os.path.join(root, "checkpoints", "last.ckpt")
    resume = os.path.exists(last)
    pl.seed_everything(o.get("seed", 7) if not resume else 999, verbose=False)  # a resumed run owes nothing to its seed
    spec = {"class_path": "flowgen.nn.MLP", "init_args": {"dim": 2, "hidden": 16, "depth": 2}}
    module = FlowModule(MLP(2, hidden=16, depth=2), rectified_flow(), lr=3e-3, ema_decay=0.9, ema_warmup_steps=1,
                        model_spec=spec)
    data = ToyDataModule("moons", batch_size=32, val_size=32, batches_per_epoch=3, seed=11)
    kill_step, phase = o.get("kill_step"), o.get("kill_phase")

    class Killer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if phase == "batch_start" and trainer.global_step == kill_step:
                die()
            if phase == "mid_save" and trainer.global_step == kill_step:
                # the checkpoint written at the end of this step (every step) dies half-way
                kill_during_next_save(lambda obj: isinstance(obj, dict) and "optimizer_states" in obj)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if phase == "before_optimizer" and trainer.global_step == kill_step:
                die()

    trainer = make_trainer(root, max_steps=o["steps"], checkpoint_every=1, progress=False, logger=False, plot_samples=False,
                           accelerator="cpu", devices=1, deterministic=True, limit_val_batches=0,
                           callbacks=[Killer()] if kill_step is not None else [])
    trainer.fit(module, data, ckpt_path=last if resume else None)
    if kill_step is not None and kill_step < o["steps"] and not resume:
        sys.exit(3)  # the kill point was never reached
    ck = safe_load(last)
    torch.save({"state_dict": module.state_dict(), "global_step": trainer.global_step, "last_global_step": ck["global_step"],
                "resumed": resume}, o["out"])


def job_pairs(o: dict) -> None:
    import torch

    import flowgen
    from flowgen.distill import generate_pairs

    torch.set_num_threads(1)

    class Teacher(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return torch.tanh(x) - 0.5 * x * t[:, None]

    if o.get("kill_shard") is not None:
        k = int(o["kill_shard"])
        kill_during_next_save(lambda obj: isinstance(obj, dict) and int(obj.get("shard", torch.tensor(-1))) == k)
    ds = generate_pairs(Teacher(), flowgen.paths.RectifiedFlow(), num=o["num"], batch_size=o["batch"], shape=(2,),
                        out_dir=o["out_dir"], prediction="velocity", method="heun", steps=4, seed=5)
    if o.get("kill_shard") is not None:
        sys.exit(3)
    print(json.dumps({"generated": ds.generated}))


def job_save(o: dict) -> None:
    import torch

    from flowgen import checkpoint as ck

    obj = {"state_dict": {"w": torch.full((64, 64), float(o["version"]))}, "version": torch.tensor(o["version"])}
    if o.get("kill"):
        kill_during_next_save()
    ck.atomic_save(obj, o["path"])  # the one atomic writer (checkpoints, the classifier cache, reflow shards)
    if o.get("kill"):
        sys.exit(3)


def make_teacher_checkpoint(path) -> str:
    """A small teacher checkpoint written directly (random MLP velocity model, full flowgen metadata)."""
    from collections import OrderedDict

    import torch

    from flowgen.checkpoint import atomic_save, make_metadata
    from flowgen.nn import MLP
    from flowgen.paths import RectifiedFlow

    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=2)
    spec = {"class_path": "flowgen.nn.MLP", "init_args": {"dim": 2, "hidden": 16, "depth": 2}}
    meta = make_metadata(path=RectifiedFlow(), prediction="velocity", model_spec=spec, data_shape=(2,), weights_prefix="ema.",
                         sampler={"method": "euler", "steps": 8})
    atomic_save({"state_dict": OrderedDict(("ema." + k, v) for k, v in net.state_dict().items()), "flowgen": meta}, path)
    return str(path)


DISTILL_STEPS = {"progressive": 8, "reflow": 6}


def job_distill(o: dict) -> None:
    """A distillation run (progressive: rounds N=4 -> 2 -> 1 of [2, 3, 3] steps; reflow: 1 round + 1-step distillation)."""
    import lightning.pytorch as pl
    import torch

    from flowgen.lightning import ToyDataModule, make_trainer
    from flowgen.lightning.distill import ProgressiveDistillModule, ReflowModule

    torch.set_num_threads(1)
    root, method = o["root"], o["method"]
    last = os.path.join(root, "checkpoints", "last.ckpt")
    resume = os.path.exists(last)
    pl.seed_everything(5 if not resume else 999, verbose=False)
    common = dict(lr=3e-3, seed=3, export_dir="", val_num_samples=16)
    if method == "progressive":
        module = ProgressiveDistillModule(o["teacher"], student_steps=4, steps_per_round=[2, 3, 3], **common)
    else:
        module = ReflowModule(o["teacher"], reflow_rounds=1, steps_per_round=3, distill_steps=3, num_pairs=48,
                              pair_batch_size=16, pair_method="heun", pair_steps=3, stats_samples=16, stats_steps=3,
                              pair_dir=os.path.join(root, "pairs"), **common)
    kill_step, phase = o.get("kill_step"), o.get("kill_phase")
    callbacks = []
    if phase == "pair_shard":
        # the kill_step-th shard written in this process (counting every pair generation) dies half-way
        count = {"n": 0}

        def match(obj):
            if isinstance(obj, dict) and "shard" in obj and "endpoint" in obj:
                count["n"] += 1
                return count["n"] == kill_step
            return False

        kill_during_next_save(match)
    elif kill_step is not None:

        class Killer(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == kill_step:
                    if phase == "batch_start":
                        die()
                    if phase == "mid_save":
                        kill_during_next_save(lambda obj: isinstance(obj, dict) and "optimizer_states" in obj)

        callbacks.append(Killer())
    trainer = make_trainer(root, max_steps=DISTILL_STEPS[method], checkpoint_every=1, progress=False, logger=False,
                           plot_samples=False, accelerator="cpu", devices=1, deterministic=True, limit_val_batches=0,
                           callbacks=callbacks)
    data = ToyDataModule("moons", batch_size=32, val_size=32, batches_per_epoch=3, seed=11)
    trainer.fit(module, data, ckpt_path=last if resume else None)
    if kill_step is not None and not resume:
        sys.exit(3)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    torch.save({"state_dict": state, "global_step": trainer.global_step, "phase": int(module.phase), "resumed": resume}, o["out"])


JOBS = {"train": job_train, "pairs": job_pairs, "save": job_save, "distill": job_distill}


if __name__ == "__main__":
    job, opts = sys.argv[1], json.loads(sys.argv[2])
    JOBS[job](opts)
