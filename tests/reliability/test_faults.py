"""Faults: SIGKILL at chosen points, then resume — same result as an uninterrupted run; atomic writes.

Each run is a subprocess (:mod:`_rel_fault_worker`) that kills itself with ``SIGKILL`` at a
point chosen by the test (no cleanup handlers run, exactly like ``kill -9`` or an OOM kill):

* training: before a step's batch, after backward but before the optimizer update, and half-way
  through writing a checkpoint; the same command run again resumes from ``last.ckpt`` and ends
  with weights (model, EMA, optimizer-visible state) bit-identical to an uninterrupted run with
  the same seed (CPU, deterministic mode, one thread);
* reflow pair generation killed half-way through writing a shard: rerunning completes the cache
  with exactly the pairs of an uninterrupted run, regenerating only what was missing;
* checkpoint and cache writes killed half-way leave the previous file intact and loadable.

The kill points are drawn from a seeded RNG; the default run uses one training kill point and
one pair-generation kill point, the rest is ``@pytest.mark.slow``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import _rel_fault_worker as W
import pytest
import torch

from flowgen.checkpoint import safe_load

pytestmark = pytest.mark.filterwarnings("ignore")

WORKER = Path(__file__).with_name("_rel_fault_worker.py")
REPO = Path(__file__).resolve().parents[2]
STEPS = 6


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def launch(job: str, **opts) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), job, json.dumps(opts)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=str(REPO))


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run(job: str, **opts) -> tuple[int, str, str]:
    return finish(launch(job, **opts))


def _killed(code, out, err):
    assert code == -signal.SIGKILL and "KILL-POINT-REACHED" in out, f"expected a SIGKILL at the kill point, got {code}\n{err[-2000:]}"


def _ok(code, out, err):
    assert code == 0, f"worker failed with {code}\n{err[-3000:]}"


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


# --- training ---------------------------------------------------------------------------------------------
def _kill_and_resume(tmp_path, ref_out, kill_step, phase, killed=None):
    root = tmp_path / f"run_{phase}_{kill_step}"
    out = tmp_path / f"resumed_{phase}_{kill_step}.pt"
    _killed(*(killed or run("train", root=str(root), steps=STEPS, kill_step=kill_step, kill_phase=phase, out=str(out))))
    last = root / "checkpoints" / "last.ckpt"
    # the file left behind is a complete checkpoint of the last finished step (never the half-written one)
    assert safe_load(last)["global_step"] == kill_step
    _ok(*run("train", root=str(root), steps=STEPS, out=str(out)))
    resumed, ref = torch.load(out, weights_only=True), torch.load(ref_out, weights_only=True)
    assert resumed["resumed"] and resumed["global_step"] == ref["global_step"] == STEPS
    _assert_same_state(ref["state_dict"], resumed["state_dict"])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run, in this process (a different process from the killed and the resumed ones)."""
    d = tmp_path_factory.mktemp("reference")
    out = d / "ref.pt"
    W.job_train({"root": str(d / "run"), "steps": STEPS, "out": str(out)})
    return out


def _reference(reference_run):
    return reference_run


KILL_POINTS = [(step, phase) for step in range(1, STEPS - 1) for phase in ("batch_start", "before_optimizer", "mid_save")]
DEFAULT_POINT = random.Random(20261126).choice([p for p in KILL_POINTS if p[1] == "mid_save"])


def test_training_killed_mid_checkpoint_resumes_identically(tmp_path_factory, tmp_path):
    """Default run: one seeded kill point, half-way through a checkpoint write (the hardest of the three).

    The killed run starts first, the uninterrupted reference runs here meanwhile (two cores), then the resume.
    """
    step, phase = DEFAULT_POINT
    root = tmp_path / f"run_{phase}_{step}"
    proc = launch("train", root=str(root), steps=STEPS, kill_step=step, kill_phase=phase, out=str(tmp_path / "x.pt"))
    d = tmp_path_factory.mktemp("reference_default")
    W.job_train({"root": str(d / "run"), "steps": STEPS, "out": str(d / "ref.pt")})
    _kill_and_resume(tmp_path, d / "ref.pt", step, phase, killed=finish(proc))


@pytest.mark.slow
@pytest.mark.parametrize("step,phase", KILL_POINTS)
def test_training_killed_anywhere_resumes_identically(tmp_path, reference_run, step, phase):
    _kill_and_resume(tmp_path, _reference(reference_run), step, phase)


@pytest.mark.slow
def test_training_killed_twice_resumes_identically(tmp_path, reference_run):
    root, out = tmp_path / "run", tmp_path / "out.pt"
    ref = _reference(reference_run)
    _killed(*run("train", root=str(root), steps=STEPS, kill_step=2, kill_phase="before_optimizer", out=str(out)))
    # the resumed run is killed again (the worker only arms kills on a fresh run, so kill it from outside)
    proc = launch("train", root=str(root), steps=STEPS, out=str(out))
    _ok(*finish(proc))
    _assert_same_state(torch.load(ref, weights_only=True)["state_dict"], torch.load(out, weights_only=True)["state_dict"])


# --- reflow pair generation -------------------------------------------------------------------------------------
def _pairs(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from flowgen.distill import PairDataset

    ds = PairDataset(folder)
    return ds.noise, ds.endpoint


@pytest.mark.parametrize("kill_shard", [2, pytest.param(0, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow)])
def test_pair_generation_killed_mid_shard_resumes_identically(tmp_path, kill_shard):
    ref_dir, dir_ = tmp_path / "ref", tmp_path / "killed"
    proc = launch("pairs", out_dir=str(dir_), num=10, batch=2, kill_shard=kill_shard)
    W.job_pairs({"out_dir": str(ref_dir), "num": 10, "batch": 2})  # the uninterrupted run, meanwhile, in this process
    _killed(*finish(proc))
    shards = sorted(p.name for p in dir_.glob("pairs_*.pt"))
    assert shards == [f"pairs_{i:06d}.pt" for i in range(kill_shard)], shards  # complete shards only
    assert list(dir_.glob(".pairs_*.tmp")), "expected the half-written temporary file of the killed shard"
    with pytest.raises(ValueError, match=f"shard {kill_shard}"):
        _pairs(dir_)
    code, out, err = run("pairs", out_dir=str(dir_), num=10, batch=2)  # the rerun, a fresh process
    _ok(code, out, err)
    assert json.loads(out.strip().splitlines()[-1])["generated"] == list(range(kill_shard, 5))
    assert not list(dir_.glob(".pairs_*.tmp")), "stale temporary files were left behind"
    for a, b in zip(_pairs(ref_dir), _pairs(dir_)):
        assert torch.equal(a, b)


# --- atomic writes ------------------------------------------------------------------------------------------------
def test_writes_killed_midway_leave_the_previous_file(tmp_path):
    path = tmp_path / "sub" / "model.ckpt"
    W.job_save({"path": str(path), "version": 1})
    before = path.read_bytes()
    _killed(*run("save", path=str(path), version=2, kill=True))
    assert path.read_bytes() == before
    obj = safe_load(path)
    assert int(obj["version"]) == 1 and bool((obj["state_dict"]["w"] == 1).all())
    partial = [p for p in path.parent.iterdir() if p.name != path.name]
    assert partial, "the killed write should have left its temporary file (proof that it was killed mid-write)"
    with pytest.raises(Exception, match="(truncated|corrupt)"):
        safe_load(partial[0])
    W.job_save({"path": str(path), "version": 3})
    assert int(safe_load(path)["version"]) == 3
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the killed writer's temporary file is cleared


# --- distillation ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    return W.make_teacher_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.ckpt")


def _distill_kill_and_resume(tmp_path, teacher, method, kill_step, phase, *, expect_last_step=None, expect_phase=None):
    root, out = tmp_path / f"{method}_{phase}_{kill_step}", tmp_path / "resumed.pt"
    proc = launch("distill", root=str(root), method=method, teacher=teacher, kill_step=kill_step, kill_phase=phase, out=str(out))
    ref_out = tmp_path / "ref.pt"
    W.job_distill({"root": str(tmp_path / "ref"), "method": method, "teacher": teacher, "out": str(ref_out)})  # meanwhile
    _killed(*finish(proc))
    last = root / "checkpoints" / "last.ckpt"
    if expect_last_step is not None:
        saved = safe_load(last)
        assert saved["global_step"] == expect_last_step
        assert saved["flowgen"]["distill_state"]["phase"] == expect_phase
    _ok(*run("distill", root=str(root), method=method, teacher=teacher, out=str(out)))
    ref, resumed = torch.load(ref_out, weights_only=True), torch.load(out, weights_only=True)
    assert resumed["global_step"] == ref["global_step"] and resumed["phase"] == ref["phase"]
    _assert_same_state(ref["state_dict"], resumed["state_dict"])
    return resumed


def test_progressive_distillation_killed_mid_round_resumes_identically(tmp_path, teacher_ckpt):
    """Rounds of [2, 3, 3] steps: killed half-way through writing step 4's checkpoint, i.e. in the middle of round 1."""
    resumed = _distill_kill_and_resume(tmp_path, teacher_ckpt, "progressive", 3, "mid_save", expect_last_step=3, expect_phase=1)
    assert resumed["resumed"]


@pytest.mark.slow
@pytest.mark.parametrize("kill_step,phase", [(1, "batch_start"), (2, "batch_start"), (5, "mid_save"), (6, "batch_start")])
def test_progressive_distillation_killed_anywhere_resumes_identically(tmp_path, teacher_ckpt, kill_step, phase):
    _distill_kill_and_resume(tmp_path, teacher_ckpt, "progressive", kill_step, phase)


@pytest.mark.slow
@pytest.mark.parametrize("shard", [2, 5])
def test_reflow_killed_mid_pair_generation_resumes_identically(tmp_path, teacher_ckpt, shard):
    """3 shards per pair generation: shard 2 is in round 1's pairs (no checkpoint yet), shard 5 in the 1-step phase's."""
    _distill_kill_and_resume(tmp_path, teacher_ckpt, "reflow", shard, "pair_shard")
    leftovers = list((tmp_path / f"reflow_pair_shard_{shard}" / "pairs").rglob("*.tmp"))
    assert not leftovers, leftovers
