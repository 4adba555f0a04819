"""The same recipe runs under Lightning's DDP with 2 CPU processes (gloo); its checkpoint loads in one process."""

import os
import subprocess
import sys

import torch

from flowgen.checkpoint import load_generator, safe_load

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_ddp_two_cpu_processes_via_the_cli(tmp_path):
    cmd = [sys.executable, "-m", "flowgen.cli", "fit", "--config", os.path.join(ROOT, "recipes", "rf_moons.yaml"),
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.max_steps", "6", "--trainer.default_root_dir", str(tmp_path), "--trainer.val_check_interval", "6",
           "--model.val_num_samples", "64", "--model.sample_steps", "4", "--checkpoint.every_n_train_steps", "3",
           "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "32"]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Starting with 2 processes" in out.stdout + out.stderr
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert safe_load(ckpt)["global_step"] == 6
    net, path, prediction, meta = load_generator(ckpt)  # single process, weights_only
    x = torch.randn(5, 2)
    assert net(x, torch.full((5,), 0.5)).shape == (5, 2)
    assert meta["data_shape"] == [2] and meta["path"]["name"] == "RectifiedFlow"
