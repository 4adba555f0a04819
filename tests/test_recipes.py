"""Every recipe parses with the CLI parser and builds its model, objective and data; a few run for a few steps."""

import glob
import os
import warnings

import pytest

from flowgen.checkpoint import load_generator, safe_load
from flowgen.cli import main, run_lightning_cli

warnings.filterwarnings("ignore", ".*modules? in eval mode.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")

RECIPES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "recipes", "*.yaml")))


def test_there_are_teacher_recipes_for_each_family():
    names = {os.path.basename(r) for r in RECIPES}
    assert {"rf_moons.yaml", "ot_cfm_moons.yaml", "ddpm_eps_moons.yaml", "ddpm_v_moons.yaml", "rf_digits.yaml",
            "ddpm_v_digits.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[os.path.basename(r) for r in RECIPES])
def test_recipe_parses_and_instantiates(recipe, tmp_path):
    from flowgen.lightning import FlowModule
    from flowgen.lightning.data import WholeBatchDataModule
    from flowgen.objectives import Objective

    cli = run_lightning_cli(["--config", recipe, "--trainer.default_root_dir", str(tmp_path),
                             "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"], run=False)
    assert isinstance(cli.model, FlowModule) and isinstance(cli.model.objective, Objective)
    assert isinstance(cli.datamodule, WholeBatchDataModule)
    spec = cli.model.model_spec  # taken from the YAML: the checkpoint can rebuild the network
    assert spec["class_path"] == cli.config["model"]["model"]["class_path"]
    assert cli.trainer.checkpoint_callback.dirpath == os.path.join(str(tmp_path), "checkpoints")
    assert cli.trainer.max_steps > 0


@pytest.mark.parametrize("recipe", ["ot_cfm_moons.yaml", "ddpm_eps_moons.yaml"])
def test_recipe_runs_a_few_steps_and_its_checkpoint_samples(recipe, tmp_path, capsys):
    path = os.path.join(os.path.dirname(__file__), "..", "recipes", recipe)
    rc = main(["fit", "--config", path, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "4",
               "--trainer.val_check_interval", "4", "--checkpoint.every_n_train_steps", "2",
               "--trainer.enable_progress_bar", "false", "--model.val_num_samples", "64",
               "--model.sample_steps", "4", "--data.init_args.batch_size", "32", "--seed_everything", "7"])
    assert rc == 0
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ck = safe_load(ckpt)
    assert ck["global_step"] == 4
    assert ck["flowgen"]["model"]["class_path"] == "flowgen.nn.MLP"
    metrics = glob.glob(str(tmp_path / "logs" / "version_*" / "metrics.csv"))
    assert metrics and "val/w2" in open(metrics[0]).read()
    net, p, pred, meta = load_generator(ckpt)
    assert not net.training
    assert main(["sample", "--ckpt", str(ckpt), "--num", "10", "--out", str(tmp_path / "s.npy"), "--no-progress"]) == 0


def test_resume_from_last_checkpoint_via_the_cli_matches_an_uninterrupted_run(tmp_path):
    import torch

    path = os.path.join(os.path.dirname(__file__), "..", "recipes", "rf_moons.yaml")

    def fit(root, steps, *extra):
        return main(["fit", "--config", path, "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(steps),
                     "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
                     "--trainer.deterministic", "true", "--checkpoint.every_n_train_steps", "3",
                     "--data.init_args.batch_size", "16", "--data.init_args.batches_per_epoch", "4", *extra])

    assert fit(tmp_path / "a", 6) == 0
    assert fit(tmp_path / "b", 3) == 0
    # another seed: only a real resume (weights, optimizer, RNG and data state from last.ckpt) matches run a
    assert fit(tmp_path / "b", 6, "--ckpt_path", "last", "--seed_everything", "99") == 0
    a = safe_load(tmp_path / "a" / "checkpoints" / "last.ckpt")
    b = safe_load(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 6
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", RECIPES, ids=[os.path.basename(r) for r in RECIPES])
def test_every_teacher_recipe_captures_its_step_on_a_gpu(recipe, tmp_path):
    """``cuda_graph: auto`` captures each recipe's step on one GPU (a capture failure would raise)."""
    extra = []
    if "tensorfile" in recipe:
        import numpy as np

        np.save(tmp_path / "data.npy", np.random.default_rng(0).normal(size=(512, 2)).astype("float32"))
        extra = ["--data.init_args.path", str(tmp_path / "data.npy")]
    cli = run_lightning_cli(["fit", "--config", recipe, "--trainer.default_root_dir", str(tmp_path),
                             "--trainer.max_steps", "6", "--trainer.accelerator", "gpu", "--trainer.logger", "false",
                             "--trainer.enable_progress_bar", "false", "--trainer.val_check_interval", "1000000",
                             "--trainer.limit_val_batches", "0", "--data.init_args.batch_size", "32", *extra])
    assert cli.trainer.global_step == 6
    stats = cli.model.graph_stats  # (with prefetch_pairs the first step only starts the pairing pipeline)
    assert stats["captured"] and stats["eager_steps"] == 3 and stats["steps"] == 6 - int(cli.model.prefetch_pairs)
