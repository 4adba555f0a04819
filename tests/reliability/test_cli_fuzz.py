"""Fuzz of the ``flowgen`` command line: malformed arguments, config keys, values and files.

Each case calls ``flowgen.cli.main([...])`` in-process. It must either work (exit code 0) or
exit with a non-zero code and a message on stderr that names the offending key or option — no
Python traceback, no other exception escaping ``main``, within a time limit. Config strings are
never evaluated: values such as ``__import__('os').system(...)`` and YAML tags such as
``!!python/object/apply:os.system`` must be refused, and their marker file never appears.

Hypothesis draws the command, the key and the malformed value; training runs that a corruption
leaves valid are capped at two steps, so "works" stays cheap.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections import OrderedDict
from pathlib import Path

import _rel_harness as H
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowgen.checkpoint import atomic_save, make_metadata
from flowgen.cli import main
from flowgen.nn import MLP
from flowgen.paths import RectifiedFlow

pytestmark = pytest.mark.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "rf_moons.yaml"
CASE_TIMEOUT = 90.0


def run_cli(args: list[str], names: tuple[str, ...], label: str, marker: Path | None = None) -> str:
    """Run ``main(args)``; classify; return ``"ok"`` or ``"refused"``; raise CaseFailure otherwise."""
    H.COUNTS["cli"] += 1
    out, err = io.StringIO(), io.StringIO()
    code = None
    try:
        with H.time_limit(CASE_TIMEOUT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse/jsonargparse exit on a usage error
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except H.CaseTimeout:
        raise H.CaseFailure(f"[cli] {label}: no answer within {CASE_TIMEOUT} s") from None
    except Exception as exc:
        raise H.CaseFailure(f"[cli] {label}: raised {type(exc).__name__} out of main(): {exc}") from exc
    text = out.getvalue() + err.getvalue()
    if marker is not None and marker.exists():
        raise H.CaseFailure(f"[cli] {label}: a config string was evaluated (marker file created)")
    if "Traceback (most recent call last)" in text:
        raise H.CaseFailure(f"[cli] {label}: printed a traceback:\n{text[-1500:]}")
    if code == 0:
        return "ok"
    msg = err.getvalue()
    if not any(H.names_word(n, msg) for n in names):
        raise H.CaseFailure(f"[cli] {label}: exit code {code} but stderr does not name any of {names}:\n{msg[-1500:]}")
    H.REFUSED["cli"] += 1
    return "refused"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small generator checkpoint written directly (no training)."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("cli")
    model = MLP(2, hidden=16, depth=2)
    spec = {"class_path": "flowgen.nn.MLP", "init_args": {"dim": 2, "hidden": 16, "depth": 2}}
    meta = make_metadata(path=RectifiedFlow(), prediction="velocity", model_spec=spec, data_shape=(2,), weights_prefix="ema.",
                         sampler={"method": "euler", "steps": 3},
                         extra={"data": {"class_path": "flowgen.lightning.data.ToyDataModule",
                                         "init_args": {"name": "moons", "val_size": 64}}})
    f = d / "g.ckpt"
    atomic_save({"state_dict": OrderedDict(("ema." + k, v) for k, v in model.state_dict().items()), "flowgen": meta}, f)
    return f


BAD_VALUES = ["abc", "-3", "0", "1e400", "nan", "[1, 2]", "{a: 1}", "null", "", "99999999999999999999999",
              "__import__('os').system('touch {marker}')"]

FIT_KEYS = ["model.lr", "model.ema_decay", "model.sample_steps", "model.sample_method", "model.model.init_args.hidden",
            "model.model.init_args.depth", "model.val_num_samples", "data.init_args.batch_size", "data.init_args.name",
            "data.init_args.val_size", "trainer.max_steps", "seed_everything", "checkpoint.every_n_train_steps",
            "model.skip_nonfinite", "model.cond_drop_prob"]
UNKNOWN_KEYS = ["model.lrr", "data.init_args.bogus", "trainer.bogus_option", "checkpoint.bogus", "bogus",
                "model.model.init_args.widht"]


def _fit_args(tmp: Path, key: str, value: str) -> list[str]:
    # a corruption that leaves the run valid (e.g. a huge max_steps) must still end: a wall-clock cap
    safe = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp / "run"),
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--trainer.accelerator", "cpu",
            "--trainer.max_time", "00:00:00:20"]
    return ["fit", "--config", str(RECIPE), *safe, f"--{key}", value]


def _key_names(key: str) -> tuple[str, ...]:
    parts = key.split(".")
    names = (key, parts[-1], f"--{key}") + tuple(".".join(parts[i:]) for i in range(1, len(parts)))
    if key in ("model.lr", "model.ema_decay"):  # a valid but absurd value diverges: the step is named, with the advice
        names += ("learning rate",)
    return names


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(FIT_KEYS + UNKNOWN_KEYS), value=st.sampled_from(BAD_VALUES))
def test_cli_fit_malformed_overrides(tmp_path_factory, key, value):
    tmp = tmp_path_factory.mktemp("fit")
    marker = tmp / "MARKER"
    v = value.replace("{marker}", str(marker))
    run_cli(_fit_args(tmp, key, v), _key_names(key), f"fit --{key} {v!r}", marker)


def _write_config(tmp: Path, text: str) -> Path:
    f = tmp / "cfg.yaml"
    f.write_text(text)
    return f


def _config_corruption(recipe: str, corruption: str, marker: Path) -> tuple[str, tuple[str, ...]]:
    found = re.search(r"^  lr: .*$", recipe, flags=re.MULTILINE)  # the module's lr line, whatever its value
    assert found, "the recipe has no model-level lr line to corrupt"
    lr = found.group(0)
    if corruption == "unknown_top_key":
        return recipe + "bogus_section: 1\n", ("bogus_section",)
    if corruption == "unknown_model_key":
        return recipe.replace(lr, lr + "\n  learning_rate: 0.1"), ("learning_rate", "model.learning_rate")
    if corruption == "wrong_type":
        return recipe.replace(lr, "  lr: fast"), ("lr", "model.lr")
    if corruption == "python_tag":  # PyYAML's unsafe constructor syntax: must never be constructed
        return recipe.replace(lr, f"  lr: !!python/object/apply:os.system ['touch {marker}']"), ("lr", "model.lr", "cfg.yaml", "python")
    if corruption == "python_expression":  # a string that looks like code: a wrong type, never evaluated
        return recipe.replace(lr, f"  lr: __import__('os').system('touch {marker}')"), ("lr", "model.lr")
    if corruption == "malformed_yaml":
        return "model: [1, 2\n", ("cfg.yaml", "yaml", "config")
    if corruption == "not_a_mapping":
        return "- 1\n- 2\n", ("cfg.yaml", "config")
    raise AssertionError(corruption)


@pytest.mark.parametrize("corruption", ["unknown_top_key", "unknown_model_key", "wrong_type", "python_tag", "python_expression",
                                        "malformed_yaml", "not_a_mapping"])
def test_cli_fit_malformed_config_files(tmp_path, corruption):
    marker = tmp_path / "MARKER"
    text, names = _config_corruption(RECIPE.read_text(), corruption, marker)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    args = ["fit", "--config", str(cfg), "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--trainer.limit_val_batches", "0"]
    outcome = run_cli(args, names, f"fit --config <{corruption}>", marker)
    assert outcome == "refused", f"{corruption}: a malformed config was accepted"


SAMPLE_CORRUPTIONS = [
    (["--num", "abc"], ("--num", "num")), (["--num", "0"], ("--num", "num")), (["--num", "-5"], ("--num", "num")),
    (["--steps", "0"], ("--steps", "steps")), (["--steps", "x"], ("--steps", "steps")),
    (["--method", "warp"], ("--method", "method", "warp")), (["--method", ""], ("--method", "method")),  # "" = the default
    (["--batch-size", "0"], ("--batch-size", "batch_size")), (["--out", "{tmp}/x.txt"], ("--out", "out")),
    (["--device", "bogus"], ("--device", "device", "bogus")), (["--weights", "best"], ("--weights", "weights")),
    (["--guidance-scale", "nan"], ("--guidance-scale", "guidance_scale", "guidance")),
    (["--class-label", "3"], ("--class-label", "class_label", "class", "cond")),
    (["--seed", "-1"], ("--seed", "seed")), (["--seed", "1.5"], ("--seed", "seed")),
    (["--ckpt", "{tmp}/missing.ckpt"], ("--ckpt", "ckpt", "missing.ckpt")),
    (["--ckpt", "{tmp}"], ("--ckpt", "ckpt", "directory")),
    (["--ckpt", "{tmp}/empty.ckpt"], ("--ckpt", "ckpt", "empty.ckpt")),
    (["--bogus-flag"], ("--bogus-flag", "bogus-flag")),
]


def test_cli_sample_and_evaluate_malformed_arguments(ckpt, tmp_path, record_property):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    n = 0
    for extra, names in SAMPLE_CORRUPTIONS:
        extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
        base = ["--ckpt", str(ckpt), "--num", "16", "--out", str(tmp_path / "s.npy"), "--no-progress"]
        # later options win with argparse: the corruption comes last
        outcome = run_cli(["sample", *base, *extra], names, f"sample {' '.join(extra)}")
        n += 1
        if extra[0] in ("--num", "--steps", "--ckpt", "--bogus-flag") and outcome == "ok":
            raise AssertionError(f"sample {extra} was accepted")
        if extra[0] in ("--method", "--steps", "--ckpt", "--bogus-flag"):
            run_cli(["evaluate", "--ckpt", str(ckpt), "--num", "32", *extra], names, f"evaluate {' '.join(extra)}")
            n += 1
    for args, names in [(["frobnicate"], ("frobnicate",)), (["quickstart", "--max-steps", "0"], ("--max-steps", "max_steps")),
                        (["quickstart", "--max-steps", "x"], ("--max-steps", "max_steps")),
                        (["quickstart", "--num", "-1"], ("--num", "num")),
                        (["evaluate", "--ckpt", str(ckpt), "--num", "0"], ("--num", "num")),
                        (["evaluate", "--ckpt", str(ckpt), "--reference", str(tmp_path / "nope.npy")], ("--reference", "nope.npy"))]:
        assert run_cli(args, names, " ".join(args)) == "refused", args
        n += 1
    record_property("fuzz_cases_cli_sample_evaluate", n)
    print(f"cli sample/evaluate/quickstart: {n} cases")
    assert n >= 30


def test_cli_fit_resume_refuses_a_code_payload(tmp_path):
    """``fit --ckpt_path`` with a pickled payload is refused (even with ``--weights_only false``); nothing runs."""
    import test_security as S

    marker = tmp_path / "PAYLOAD_RAN"
    f = S._payload_checkpoint(tmp_path / "evil.ckpt", marker)
    for extra in ([], ["--weights_only", "false"]):
        args = ["fit", "--config", str(RECIPE), "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "run"),
                "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--ckpt_path", str(f), *extra]
        assert run_cli(args, ("evil.ckpt", "ckpt_path"), f"fit --ckpt_path evil {extra}") == "refused"
    assert not marker.exists()
    assert re.search(r"evil\.ckpt", str(f))
    assert os.path.exists(f)


def test_cli_distill_malformed_arguments(tmp_path, record_property):
    """``flowgen distill``: missing/foreign teacher, bad method overrides, unknown keys, missing configs."""
    import _rel_fault_worker as W

    teacher = W.make_teacher_checkpoint(tmp_path / "teacher.ckpt")
    recipe = REPO / "recipes" / "distill" / "progressive_moons.yaml"
    safe = ["--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0", "--trainer.max_time", "00:00:00:20"]
    cases = [
        (["distill", "--config", str(recipe), *safe], ("teacher", "--teacher")),
        (["distill", "--config", str(recipe), "--teacher", str(tmp_path / "nope.ckpt"), *safe], ("nope.ckpt", "teacher", "--teacher")),
        (["distill", "--config", str(recipe), "--teacher", str(tmp_path), *safe], ("teacher", "--teacher", "directory")),
        (["distill", "--config", str(recipe), "--teacher", teacher, *safe, "--model.init_args.student_steps", "3"],
         ("student_steps", "final_steps")),
        (["distill", "--config", str(recipe), "--teacher", teacher, *safe, "--model.init_args.steps_per_round", "abc"],
         ("steps_per_round",)),
        (["distill", "--config", str(recipe), "--teacher", teacher, *safe, "--model.init_args.bogus", "1"], ("bogus",)),
        (["distill", "--config", str(recipe), "--teacher", teacher, *safe, "--model.init_args.grid", "zigzag"], ("grid", "zigzag")),
        (["distill", "--config", str(tmp_path / "missing.yaml"), "--teacher", teacher], ("missing.yaml", "config", "--config")),
        (["distill", "report", "--config", str(tmp_path / "missing.yaml")], ("missing.yaml", "config", "--config")),
        (["distill", "--teacher", teacher], ("config", "--config", "fit.data")),  # LightningCLI: "required: fit.data"
    ]
    for args, names in cases:
        assert run_cli(args, names, " ".join(a.replace(str(tmp_path), "<tmp>") for a in args)) == "refused", args
    record_property("fuzz_cases_cli_distill", len(cases))


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_cli_fit_resume_from_a_damaged_checkpoint_is_a_clear_error(tmp_path, damage):
    from flowgen.checkpoint import atomic_save as save

    f = tmp_path / "last.ckpt"
    save({"state_dict": {"w": torch.randn(64, 64)}, "global_step": 3}, f)
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else b"")
    args = ["fit", "--config", str(RECIPE), "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--ckpt_path", str(f)]
    assert run_cli(args, ("last.ckpt",), f"fit --ckpt_path <{damage}>") == "refused"
