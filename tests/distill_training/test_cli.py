"""`flowgen distill`, its recipes, the end-to-end report and its figures."""

import glob
import json
import os

import pytest
import torch

from flowgen.checkpoint import atomic_save, make_metadata, safe_load
from flowgen.distill_cli import (
    EvalProtocol,
    _read_report_config,
    _resolve_file,
    evaluate_entries,
    format_markdown_table,
    line_plot_png,
    main,
    run_distill,
)
from flowgen.lightning.distill import (
    ConsistencyModule,
    DistillModule,
    EndpointDistillModule,
    ProgressiveDistillModule,
    ReflowModule,
    load_student,
)
from flowgen.viz import read_png

from .conftest import RECIPES

DISTILL_RECIPES = sorted(r for r in glob.glob(os.path.join(RECIPES, "distill", "*.yaml")) if "report_" not in os.path.basename(r))
REPORTS = sorted(glob.glob(os.path.join(RECIPES, "distill", "report_*.yaml")))
TINY = ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--trainer.limit_val_batches", "0"]


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    """An untrained U-Net 'teacher' checkpoint on the digits with full flowgen metadata (shape checks only)."""
    from flowgen.nn import UNet
    from flowgen.paths import RectifiedFlow

    spec = {"class_path": "flowgen.nn.UNet", "init_args": {"in_channels": 1, "base_channels": 8, "channel_mults": [1, 2],
                                                           "num_classes": None}}
    net = UNet(in_channels=1, base_channels=8, channel_mults=[1, 2], num_classes=None)
    meta = make_metadata(path=RectifiedFlow(), prediction="velocity", model_spec=spec, data_shape=(1, 8, 8),
                         weights_prefix="model.", kind="teacher", sampler={"method": "euler", "steps": 8},
                         extra={"data": {"class_path": "flowgen.lightning.data.DigitsDataModule", "init_args": {"labels": False}}})
    file = tmp_path_factory.mktemp("digits_teacher") / "teacher.ckpt"
    atomic_save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "flowgen": meta}, file)
    return str(file)


def _tiny_progressive_student(teacher, root, data_args) -> str:
    """A 2-step progressive student of ``teacher`` after one step per round (an input for the endpoint recipes)."""
    recipe = os.path.join(RECIPES, "distill", "progressive_digits.yaml" if "--data.class_path" not in data_args else "progressive_moons.yaml")
    run_distill(["--config", recipe, "--teacher", teacher, "--trainer.default_root_dir", str(root), *TINY,
                 "--model.init_args.student_steps", "2", "--model.init_args.steps_per_round", "[1, 1]",
                 "--trainer.max_steps", "2", "--data.init_args.batch_size", "8", *data_args])
    return os.path.join(str(root), "students", "progressive_N2.ckpt")


@pytest.fixture(scope="module")
def tiny_students(rf_teacher, digits_teacher, tmp_path_factory):
    """``{"moons": student file, "digits": student file}``: progressive students of the two test teachers."""
    return {"moons": _tiny_progressive_student(rf_teacher, tmp_path_factory.mktemp("pd_moons"),
                                               ["--data.class_path", "flowgen.lightning.ToyDataModule", "--data.init_args.name", "moons"]),
            "digits": _tiny_progressive_student(digits_teacher, tmp_path_factory.mktemp("pd_digits"), [])}


def test_there_is_a_recipe_per_method_on_toys_and_digits():
    names = {os.path.basename(r) for r in DISTILL_RECIPES}
    for method in ("progressive", "cd", "ct", "reflow", "endpoint"):
        assert {f"{method}_moons.yaml", f"{method}_digits.yaml"} <= names
    assert {os.path.basename(r) for r in REPORTS} >= {"report_moons.yaml", "report_digits.yaml"}


@pytest.mark.parametrize("recipe", DISTILL_RECIPES, ids=[os.path.basename(r) for r in DISTILL_RECIPES])
def test_every_distillation_recipe_parses_and_builds_its_module(recipe, rf_teacher, digits_teacher, tiny_students, tmp_path):
    teacher = digits_teacher if "digits" in recipe else rf_teacher
    args = ["--config", recipe, "--trainer.default_root_dir", str(tmp_path), *TINY]
    if "/ct_" not in recipe:
        args += ["--teacher", teacher]
    if "/endpoint_" in recipe:
        args += ["--model.init_args.student_checkpoint", tiny_students["digits" if "digits" in recipe else "moons"]]
    cli = run_distill(args, run=False)
    assert isinstance(cli.model, DistillModule)
    cls = {"progressive": ProgressiveDistillModule, "cd": ConsistencyModule, "ct": ConsistencyModule, "reflow": ReflowModule,
           "endpoint": EndpointDistillModule}
    assert isinstance(cli.model, cls[os.path.basename(recipe).split("_")[0]])
    assert cli.model.student_spec["class_path"] in ("flowgen.nn.MLP", "flowgen.nn.UNet")
    # (a consistency or endpoint run's single phase is the trainer's max_steps)
    if not isinstance(cli.model, (ConsistencyModule, EndpointDistillModule)):
        assert sum(cli.model.phase_lengths()) == cli.trainer.max_steps  # the recipe's budget is the phases' sum
    assert cli.trainer.checkpoint_callback.dirpath == os.path.join(str(tmp_path), "checkpoints")


def test_a_progressive_recipe_takes_an_explicit_grid_from_the_command_line(rf_teacher, tmp_path):
    recipe = next(r for r in DISTILL_RECIPES if os.path.basename(r) == "progressive_moons.yaml")
    args = ["--config", recipe, "--teacher", rf_teacher, "--trainer.default_root_dir", str(tmp_path), *TINY]
    cli = run_distill(args + ["--model.init_args.student_steps", "2", "--model.init_args.final_steps", "1",
                              "--model.init_args.steps_per_round", "1", "--trainer.max_steps", "2",
                              "--model.init_args.grid", "[1.0, 0.9, 0.6, 0.25, 0.0]"], run=False)
    assert cli.model.distiller.teacher_grid.tolist() == [1.0, 0.9, 0.6, 0.25, 0.0]


@pytest.mark.parametrize("report", REPORTS, ids=[os.path.basename(r) for r in REPORTS])
def test_report_configs_are_valid_and_name_existing_recipes(report):
    cfg = _read_report_config(report)
    d = os.path.dirname(report)
    for r in [cfg["teacher"]["recipe"]] + [s["recipe"] for s in cfg["students"]]:
        assert os.path.isfile(_resolve_file(r, d))



def test_report_config_endpoint_stages_need_an_earlier_stage_and_positive_steps(tmp_path):
    import yaml

    def config(*students):
        f = tmp_path / "r.yaml"
        f.write_text(yaml.safe_dump({"teacher": {"recipe": "t.yaml"}, "students": list(students)}))
        return str(f)

    prog = {"name": "progressive", "recipe": "p.yaml"}
    good = {"name": "ep", "recipe": "e.yaml", "of": "progressive", "steps": [4, 2, 1]}
    assert _read_report_config(config(prog, good))["students"][1]["steps"] == [4, 2, 1]
    with pytest.raises(ValueError, match=r"students\[0\]\.of must name an earlier student stage, got 'progressive'"):
        _read_report_config(config(good, prog))
    with pytest.raises(ValueError, match=r"students\[1\]\.of must name an earlier"):
        _read_report_config(config(prog, {**good, "of": "reflow"}))
    for steps in ([], [0], [2, "1"], [True], 4):
        with pytest.raises(ValueError, match=r"students\[1\]\.steps must be a non-empty list of positive ints"):
            _read_report_config(config(prog, {**good, "steps": steps}))
    no_of = {k: v for k, v in good.items() if k != "of"}
    with pytest.raises(ValueError, match=r"steps .* needs 'of'"):
        _read_report_config(config(prog, no_of))
    with pytest.raises(ValueError, match=r"students\[1\] has unknown keys \['step'\]"):
        _read_report_config(config(prog, {"name": "ep", "recipe": "e.yaml", "step": [1]}))

def test_flowgen_distill_trains_writes_a_student_and_resumes(rf_teacher, tmp_path, capsys):
    recipe = os.path.join(RECIPES, "distill", "progressive_moons.yaml")
    args = ["--config", recipe, "--teacher", rf_teacher, "--trainer.default_root_dir", str(tmp_path), *TINY,
            "--model.init_args.student_steps", "4", "--model.init_args.steps_per_round", "[2, 2, 3]",
            "--trainer.max_steps", "5", "--checkpoint.every_n_train_steps", "2", "--data.init_args.batch_size", "32"]
    assert main(args) == 0
    out = capsys.readouterr().out
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert str(last) in out and "progressive_N2.ckpt" in out and "flowgen sample" in out
    assert safe_load(last)["global_step"] == 5
    # resume with a longer budget: the run continues in round 2 from its last checkpoint
    assert main([a if a != "5" else "7" for a in args] + ["--ckpt_path", "last"]) == 0
    ck = safe_load(last)
    assert ck["global_step"] == 7 and ck["flowgen"]["distill_state"]["method_state"]["distiller"]["student_steps"] == 1
    assert load_student(tmp_path / "students" / "progressive_N1.ckpt").supported_steps == (1,)


def test_flowgen_distill_fine_tunes_a_progressive_student_end_to_end(rf_teacher, tiny_students, tmp_path, capsys):
    recipe = os.path.join(RECIPES, "distill", "endpoint_moons.yaml")
    args = ["--config", recipe, "--teacher", rf_teacher, "--trainer.default_root_dir", str(tmp_path), *TINY,
            "--trainer.max_steps", "3", "--model.init_args.num_pairs", "64", "--model.init_args.pair_batch_size", "32",
            "--data.init_args.batch_size", "16"]
    assert main(args) == 1  # without the student to fine-tune: a one-line error naming the argument
    assert "student_checkpoint" in capsys.readouterr().err
    assert main(args + ["--model.init_args.student_checkpoint", tiny_students["moons"]]) == 0
    out = capsys.readouterr().out
    assert "endpoint_N2.ckpt" in out and "flowgen sample" in out
    assert load_student(tmp_path / "students" / "endpoint_N2.ckpt").supported_steps == (2,)


def test_flowgen_distill_errors_are_one_line(rf_teacher, tmp_path, capsys):
    recipe = os.path.join(RECIPES, "distill", "cd_moons.yaml")
    assert main(["--config", recipe, "--teacher", str(tmp_path / "missing.ckpt")]) == 1
    assert "missing.ckpt" in capsys.readouterr().err
    assert main(["--config", recipe, "--trainer.default_root_dir", str(tmp_path), *TINY]) == 1
    assert "needs a teacher" in capsys.readouterr().err
    ck = safe_load(rf_teacher)
    del ck["flowgen"]["prediction"]
    atomic_save(ck, tmp_path / "nopred.ckpt")
    assert main(["--config", recipe, "--teacher", str(tmp_path / "nopred.ckpt"), *TINY]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prediction" in err[0] and "teacher" in err[0]
    assert main(["--config", recipe, "--teacher", rf_teacher, "--model.init_args.no_such_key", "1"]) != 0
    assert "no_such_key" in capsys.readouterr().err
    assert main([]) == 2 and "flowgen distill" in capsys.readouterr().out


def test_flowgen_main_dispatches_distill(capsys):
    """`flowgen distill` reaches flowgen.distill_cli.main (its usage names the report subcommand)."""
    from flowgen import cli

    rc = cli.main(["distill"])
    assert rc == 2 and "flowgen distill report" in capsys.readouterr().out


def test_line_plot_and_markdown_table(tmp_path):
    f = line_plot_png(tmp_path / "p.png", [("teacher euler", [1, 2, 4, 8], [3.0, 0.9, 0.2, 0.05], None, False),
                                           ("student", [1, 2], [0.06, 0.04], None, True)],
                      hlines=[("floor", 0.01, (0.7, 0.2, 0.2))], title="quality vs NFE")
    img = read_png(f)
    assert img.shape == (420, 640, 3) and (img < 200).any()
    md = format_markdown_table([{"a": 1.23456, "b": None}], [("a", "A"), ("b", "B")])
    assert md.splitlines() == ["| A | B |", "|---|---|", "| 1.235 | – |"]


def test_r_k_is_one_for_the_reference_itself_and_rms_zero():
    from flowgen.distill_cli import Entry, with_ratios

    torch.manual_seed(0)
    proto = EvalProtocol("w2", refs=[torch.randn(64, 2)], noises=[torch.randn(64, 2)], floors=[0.01])
    entries = [Entry("teacher", "dopri5", None, lambda z, i: z * 0.5, group="teacher_reference"),
               Entry("same", "x", 1, lambda z, i: z * 0.5, nfe=1, group="s"),
               Entry("worse", "x", 1, lambda z, i: z * 0.5 + 1.0, nfe=1, group="s")]
    rows = with_ratios(evaluate_entries(entries, proto, reference=[proto.noises[0] * 0.5]), proto.floor)
    assert rows[0]["R"] == pytest.approx(1.0) and rows[1]["R"] == pytest.approx(1.0)
    assert rows[1]["rms_to_reference"] == 0.0 and rows[2]["rms_to_reference"] == pytest.approx(2 ** 0.5)
    assert rows[2]["R"] > 1.0
    # R is (d − floor)/(d_ref − floor): a floor above the reference's d leaves it undefined
    assert with_ratios([dict(r) for r in rows], 10.0)[1]["R"] is None


def test_r_k_standard_error_is_the_jackknife_over_paired_evaluation_sets():
    from flowgen.distill_cli import with_ratios

    g = torch.Generator().manual_seed(3)
    n = 6
    f = (0.03 + 0.005 * torch.rand(n, generator=g, dtype=torch.float64)).tolist()
    t = [x + 0.02 + 0.004 * float(torch.rand(1, generator=g, dtype=torch.float64)) for x in f]
    s = [x + 0.025 + 0.006 * float(torch.rand(1, generator=g, dtype=torch.float64)) for x in f]
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    rows = [{"group": "teacher_reference", "d": mean(t), "d_values": t}, {"group": "s", "d": mean(s), "d_values": s}]
    with_ratios(rows, mean(f), floors=f)
    # independent recomputation: leave-one-out ratios with boolean masks, then the jackknife variance
    F, T, S = (torch.tensor(v, dtype=torch.float64) for v in (f, t, s))
    loo = torch.stack([(S[m].mean() - F[m].mean()) / (T[m].mean() - F[m].mean())
                       for m in (torch.arange(n) != i for i in range(n))])
    expected = float(((n - 1) / n * (loo - loo.mean()).pow(2).sum()).sqrt())
    assert rows[1]["R_se"] == pytest.approx(expected, rel=1e-12) and rows[1]["R_se"] > 0
    assert rows[0]["R_se"] == pytest.approx(0.0, abs=1e-12)  # the reference against itself
    # a student whose excess is a fixed multiple of the reference's on every set has no evaluation error
    c = [fi + 1.5 * (ti - fi) for fi, ti in zip(f, t)]
    rows.append({"group": "c", "d": mean(c), "d_values": c})
    with_ratios(rows, mean(f), floors=f)
    assert rows[2]["R"] == pytest.approx(1.5) and rows[2]["R_se"] == pytest.approx(0.0, abs=1e-9)
    # one set, or no per-set floors: no standard error
    assert with_ratios([dict(r) for r in rows], mean(f))[1]["R_se"] is None
    one = [{"group": "teacher_reference", "d": t[0], "d_values": t[:1]}, {"group": "s", "d": s[0], "d_values": s[:1]}]
    assert with_ratios(one, f[0], floors=f[:1])[1]["R_se"] is None


def test_tiny_end_to_end_report(tmp_path):
    """The whole report pipeline on tiny budgets: teacher, every method, table, plot and samples figure."""
    cfg = tmp_path / "report.yaml"
    tiny = {"--trainer.enable_progress_bar": "false", "--trainer.logger": "false", "--trainer.limit_val_batches": 0,
            "--data.init_args.batch_size": 64}
    import yaml

    def args(**kw):
        return {**tiny, **kw}

    cfg.write_text(yaml.safe_dump({
        "out": str(tmp_path / "out"), "seed": 0,
        "teacher": {"recipe": "recipes/rf_moons.yaml",
                    "args": args(**{"--trainer.max_steps": 30, "--model.model.init_args.hidden": 32})},
        "students": [
            {"name": "progressive", "recipe": "recipes/distill/progressive_moons.yaml",
             "args": args(**{"--trainer.max_steps": 6, "--model.init_args.student_steps": 4, "--model.init_args.steps_per_round": 2})},
            {"name": "progressive_endpoint", "recipe": "recipes/distill/endpoint_moons.yaml", "of": "progressive", "steps": [2, 1],
             "args": args(**{"--trainer.max_steps": 3, "--model.init_args.num_pairs": 64, "--model.init_args.pair_batch_size": 32,
                             "--model.init_args.pair_method": "euler", "--model.init_args.pair_steps": 4,
                             "--model.init_args.val_num_samples": 32})},
            {"name": "consistency_distillation", "recipe": "recipes/distill/cd_moons.yaml",
             "args": args(**{"--trainer.max_steps": 4, "--model.init_args.tune_num": 64, "--model.init_args.tune_candidates": 4})},
            {"name": "reflow", "recipe": "recipes/distill/reflow_moons.yaml",
             "args": args(**{"--trainer.max_steps": 4, "--model.init_args.steps_per_round": 2, "--model.init_args.distill_steps": 2,
                             "--model.init_args.num_pairs": 128, "--model.init_args.pair_batch_size": 64,
                             "--model.init_args.pair_method": "euler", "--model.init_args.pair_steps": 4,
                             "--model.init_args.stats_samples": 16, "--model.init_args.stats_steps": 4})},
        ],
        "evaluation": {"num_samples": 128, "repeats": 1, "teacher_euler_steps": [1, 2, 4], "teacher_heun_steps": [2]},
    }))
    cwd = os.getcwd()
    os.chdir(os.path.join(RECIPES, ".."))
    try:
        assert main(["report", "--config", str(cfg)]) == 0
    finally:
        os.chdir(cwd)
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    groups = {r["group"] for r in report["rows"]}
    assert {"teacher_reference", "teacher_euler", "teacher_heun", "progressive", "progressive_endpoint",
            "consistency_distillation", "reflow"} <= groups
    # the endpoint stage: one fine-tuned student per requested N, evaluated at its own N, timed with its progressive stage
    ends = sorted((r["model"], r["steps"]) for r in report["rows"] if r["group"] == "progressive_endpoint")
    assert ends == [("progressive_endpoint N=1", 1), ("progressive_endpoint N=2", 2)]
    assert report["student_seconds"]["progressive_endpoint"] > report["student_seconds"]["progressive"]
    assert sorted(os.listdir(out / "progressive_endpoint")) == ["N1", "N2", "pairs"]
    ref = next(r for r in report["rows"] if r["group"] == "teacher_reference")
    assert ref["R"] == pytest.approx(1.0) and ref["rms_to_reference"] == pytest.approx(0.0, abs=1e-6)
    assert "R_k" in md and "quality_vs_nfe.png" in md
    assert read_png(out / "figures" / "quality_vs_nfe.png").shape[2] == 3
    assert read_png(out / "figures" / "samples.png").shape[2] == 3
    # each stage's time is its training clock, which the checkpoints carry (a resumed stage keeps counting)
    from flowgen.checkpoint import safe_load

    for stage in ("teacher", "progressive", "consistency_distillation", "reflow"):
        done = json.loads((out / stage / "DONE.json").read_text())
        saved = safe_load(out / stage / "checkpoints" / "last.ckpt")["callbacks"]["TrainingClock"]["seconds"]
        assert 0 < saved <= done["seconds"], stage
    # a second run reuses every finished stage
    before = {p: os.path.getmtime(p) for p in glob.glob(str(out / "*" / "checkpoints" / "last.ckpt"))}
    os.chdir(os.path.join(RECIPES, ".."))
    try:
        assert main(["report", "--config", str(cfg)]) == 0
    finally:
        os.chdir(cwd)
    assert before == {p: os.path.getmtime(p) for p in before}


def test_a_resumed_stage_reports_the_time_of_earlier_sessions_too(tmp_path):
    """train_teacher's seconds are the run's training clock, which resumes from the checkpoint."""
    from flowgen.checkpoint import safe_load
    from flowgen.distill_cli import train_teacher

    recipe = os.path.join(RECIPES, "rf_moons.yaml")
    root = tmp_path / "teacher"
    args = ["--trainer.logger", "false", "--trainer.limit_val_batches", "0", "--checkpoint.every_n_train_steps", "2",
            "--data.init_args.batch_size", "16", "--model.model.init_args.hidden", "16"]
    last, first = train_teacher(recipe, str(root), seed=0, args=args + ["--trainer.max_steps", "4"])
    assert 0 < first < 60
    # pretend the first session trained for 1000 s, then lost its finished-marker (interrupted before writing it)
    ckpt = safe_load(last)
    ckpt["callbacks"]["TrainingClock"]["seconds"] = 1000.0
    torch.save(ckpt, last)
    os.remove(root / "DONE.json")
    _, total = train_teacher(recipe, str(root), seed=0, args=args + ["--trainer.max_steps", "8"])
    assert safe_load(last)["global_step"] == 8  # resumed, not restarted
    assert 1000.0 < total < 1060.0


def test_a_finished_stage_is_reused_only_with_the_same_settings(tmp_path):
    """A finished stage run with other arguments or seed is an error naming its folder, not a silent reuse."""
    from flowgen.distill_cli import train_teacher

    recipe = os.path.join(RECIPES, "rf_moons.yaml")
    root = tmp_path / "teacher"
    args = ["--trainer.logger", "false", "--trainer.limit_val_batches", "0", "--data.init_args.batch_size", "16",
            "--model.model.init_args.hidden", "16", "--trainer.max_steps", "2"]
    last, sec = train_teacher(recipe, str(root), seed=0, args=args)
    mtime = os.path.getmtime(last)
    assert train_teacher(recipe, str(root), seed=0, args=list(args)) == (last, sec)  # the same settings: reused
    assert os.path.getmtime(last) == mtime
    cwd = os.getcwd()
    os.chdir(RECIPES)
    try:  # the same recipe file by a relative path, from another folder: still reused
        assert train_teacher("rf_moons.yaml", str(root), seed=0, args=list(args)) == (last, sec)
    finally:
        os.chdir(cwd)
    assert os.path.getmtime(last) == mtime
    with pytest.raises(ValueError, match=r"teacher holds a finished run with other settings \(args"):
        train_teacher(recipe, str(root), seed=0, args=args[:-1] + ["4"])
    with pytest.raises(ValueError, match="seed: finished with 0, asked for 1"):
        train_teacher(recipe, str(root), seed=1, args=args)
