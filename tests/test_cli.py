"""The flowgen command line: sample, evaluate, quickstart, and its one-line errors."""

import json
import os
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from flowgen.checkpoint import atomic_save, make_metadata
from flowgen.cli import generate, main
from flowgen.nn import MLP
from flowgen.paths import RectifiedFlow
from flowgen.samplers import sample

warnings.filterwarnings("ignore", ".*modules? in eval mode.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
warnings.filterwarnings("ignore", ".*does not have many workers.*")

SPEC = {"class_path": "flowgen.nn.MLP", "init_args": {"dim": 2, "hidden": 16, "depth": 2}}


@pytest.fixture
def ckpt(tmp_path):
    """A generator checkpoint written directly (no training): MLP velocity model on 8 Gaussians."""
    torch.manual_seed(0)
    model = MLP(2, hidden=16, depth=2)
    meta = make_metadata(path=RectifiedFlow(), prediction="velocity", model_spec=SPEC, data_shape=(2,),
                         weights_prefix="ema.", sampler={"method": "euler", "steps": 5},
                         extra={"data": {"class_path": "flowgen.lightning.data.ToyDataModule",
                                         "init_args": {"name": "8gaussians", "val_size": 300}}})
    state = OrderedDict(("ema." + k, v) for k, v in model.state_dict().items())
    f = tmp_path / "g.ckpt"
    atomic_save({"state_dict": state, "flowgen": meta}, f)
    return f, model.eval()


def test_sample_streams_chunks_in_order_to_npy(ckpt, tmp_path, capsys):
    f, model = ckpt
    out = tmp_path / "s.npy"
    assert main(["sample", "--ckpt", str(f), "--num", "250", "--batch-size", "100", "--out", str(out), "--no-progress"]) == 0
    got = np.load(out)
    assert got.shape == (250, 2) and np.isfinite(got).all()
    gen = torch.Generator().manual_seed(0)
    noise = torch.cat([torch.randn(k, 2, generator=gen) for k in (100, 100, 50)])
    with torch.no_grad():
        expected = sample(model, RectifiedFlow(), noise, prediction="velocity", method="euler", steps=5).samples
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert "NFE=5" in capsys.readouterr().out


def test_sample_png_and_pt(ckpt, tmp_path):
    from flowgen.viz import read_png

    f, _ = ckpt
    assert main(["sample", "--ckpt", str(f), "--num", "64", "--out", str(tmp_path / "s.png"), "--method", "heun",
                 "--steps", "2", "--no-progress"]) == 0
    assert read_png(tmp_path / "s.png").ndim == 3
    assert main(["sample", "--ckpt", str(f), "--num", "8", "--out", str(tmp_path / "s.pt"), "--no-progress"]) == 0
    from flowgen.checkpoint import safe_load

    assert safe_load(tmp_path / "s.pt")["samples"].shape == (8, 2)


def test_evaluate_prints_table_and_writes_json(ckpt, tmp_path, capsys):
    f, _ = ckpt
    js = tmp_path / "e.json"
    rc = main(["evaluate", "--ckpt", str(f), "--num", "200", "--method", "euler", "dopri5", "--steps", "1", "4",
               "--json", str(js)])
    assert rc == 0
    res = json.loads(js.read_text())
    plan = [(r["method"], r["steps"]) for r in res["rows"]]
    assert plan == [("euler", 1), ("euler", 4), ("dopri5", None)]  # adaptive methods take no steps
    row = res["rows"][0]
    assert row["nfe"] == 1 and {"w2", "mmd", "log_likelihood"} <= set(row)
    assert res["num_samples"] == 200 and res["floor"]["w2_floor"] > 0
    printed = capsys.readouterr().out
    assert "| method" in printed and "w2_floor" in printed


def test_generate_prefers_a_models_own_few_step_sampler():
    class Student(torch.nn.Module):
        def forward(self, x):
            return x + 1

        def sample(self, noise, steps=1):
            for _ in range(steps):
                noise = self(noise)
            return noise

    chunks = list(generate(Student(), RectifiedFlow(), "velocity", {"data_shape": [3], "sampler": {"steps": 2}}, num=5,
                           batch_size=2))
    assert [c[0].shape[0] for c in chunks] == [2, 2, 1]
    assert all(c[1] == 2 for c in chunks)  # NFE counted on the network's forward calls


def test_distilled_student_checkpoint_samples_with_its_generator(tmp_path, capsys):
    generators = pytest.importorskip("flowgen.distill.generators")
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=2).eval()
    student = generators.ReflowGenerator(net, RectifiedFlow(), "velocity", supported_steps=(1, 2))
    meta = make_metadata(path=RectifiedFlow(), prediction="velocity", model_spec=SPEC, data_shape=(2,),
                         weights_prefix="student.", kind="student", extra={"generator": student.to_metadata()})
    f = tmp_path / "student.ckpt"
    atomic_save({"state_dict": OrderedDict(("student." + k, v) for k, v in net.state_dict().items()), "flowgen": meta}, f)
    out = tmp_path / "s.npy"
    assert main(["sample", "--ckpt", str(f), "--steps", "1", "--num", "7", "--out", str(out), "--no-progress"]) == 0
    assert "NFE=1" in capsys.readouterr().out
    gen = torch.Generator().manual_seed(0)
    expected = student.sample(torch.randn(7, 2, generator=gen), steps=1)
    np.testing.assert_allclose(np.load(out), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert main(["sample", "--ckpt", str(f), "--steps", "3", "--num", "7", "--out", str(out), "--no-progress"]) == 1
    assert "steps" in capsys.readouterr().err  # an unsupported step count is refused by the student


def test_sampling_a_checkpoint_without_metadata_says_so(tmp_path, capsys):
    f = tmp_path / "plain.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(2)}}, f)
    assert main(["sample", "--ckpt", str(f), "--out", str(tmp_path / "x.npy")]) == 1
    err = capsys.readouterr().err
    assert "no flowgen metadata" in err and str(f) in err


def test_unsafe_checkpoint_is_refused_by_the_cli(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    f = tmp_path / "evil.ckpt"
    torch.save({"flowgen": Evil()}, f)
    assert main(["evaluate", "--ckpt", str(f)]) == 1
    captured = capsys.readouterr()
    assert "unsafe" in captured.err and "should-not-run" not in captured.out


def test_argument_errors(ckpt, tmp_path, capsys):
    f, _ = ckpt
    assert main(["sample", "--ckpt", str(f), "--out", str(tmp_path / "x.txt")]) == 1
    assert "--out" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(f), "--num", "0", "--out", str(tmp_path / "x.npy")]) == 1
    assert "--num" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(f), "--method", "warp", "--out", str(tmp_path / "x.npy"), "--no-progress"]) == 1
    assert "warp" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_distill_dispatches_to_the_distillers(monkeypatch):
    import sys
    import types

    seen = {}
    fake = types.ModuleType("flowgen.distill_cli")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "flowgen.distill_cli", fake)
    assert main(["distill", "--config", "x.yaml", "--teacher", "t.ckpt"]) == 0
    assert seen["argv"] == ["--config", "x.yaml", "--teacher", "t.ckpt"]


def test_config_errors_name_the_key(tmp_path, capsys):
    recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "rf_moons.yaml")
    assert main(["fit", "--config", recipe, "--model.lrr", "0.1"]) != 0
    assert "model.lrr" in capsys.readouterr().err
    assert main(["fit", "--config", recipe, "--model.lr", "fast"]) != 0
    assert "model.lr" in capsys.readouterr().err


def test_quickstart_end_to_end_small(tmp_path, capsys):
    out = tmp_path / "qs"
    rc = main(["quickstart", "--out", str(out), "--max-steps", "40", "--num", "200", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    ckpt = out / "checkpoints" / "last.ckpt"
    for p in (ckpt, out / "metrics.json", out / "samples_dopri5.npy", out / "figures" / "samples_dopri5.png",
              out / "figures" / "samples_vs_steps.png"):
        assert p.exists(), p
        assert str(p) in printed
    res = json.loads((out / "metrics.json").read_text())
    assert {r["method"] for r in res["rows"]} >= {"euler", "heun", "dopri5"}
    assert all(np.isfinite(r["w2"]) for r in res["rows"])
    assert list((out / "logs").glob("version_*/metrics.csv"))


@pytest.mark.parametrize("seed", ["-3", "4294967296"])
def test_fit_refuses_an_out_of_range_seed_naming_it(tmp_path, capsys, seed):
    """Found by the CLI fuzz: Lightning's own message for a negative seed did not name the option."""
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "rf_moons.yaml"
    rc = main(["fit", "--config", str(recipe), "--trainer.default_root_dir", str(tmp_path),
               "--trainer.max_steps", "1", "--seed_everything", seed])
    assert rc != 0
    assert "seed_everything" in capsys.readouterr().err
