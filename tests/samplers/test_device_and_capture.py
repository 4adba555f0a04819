"""Sampling on the --device, CUDA-graph capture (GPU only), and the core's independence from lightning."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from flowgen.paths import VP, RectifiedFlow
from flowgen.samplers import CapturedSampler, sample, seeded_noise


class _MLP(torch.nn.Module):
    def __init__(self, dim=2, width=64):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, width), torch.nn.SiLU(), torch.nn.Linear(width, dim))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x, t, cond=None):
        h = torch.cat([x, t[:, None]], 1)
        out = self.net(h)
        return out if cond is None else out + cond[:, None].to(out.dtype)


@pytest.mark.parametrize("method", ["euler", "heun", "dpm_solver_pp_2m", "ddpm"])
def test_sampling_on_the_device_matches_cpu(device, method):
    model_cpu = _MLP().double()
    model_dev = _MLP().double().to(device)
    noise = seeded_noise(list(range(8)), (2,), dtype=torch.float64)
    kw = dict(prediction="v", method=method, steps=10)
    if method == "ddpm":  # per-sample CPU generators give the same fresh noise on every device
        from flowgen.samplers import seeded_generators

        cpu = sample(model_cpu, VP(), noise, generator=seeded_generators(range(100, 108)), **kw).samples
        dev = sample(model_dev, VP(), noise.to(device), generator=seeded_generators(range(100, 108)), **kw).samples
    else:
        cpu = sample(model_cpu, VP(), noise, **kw).samples
        dev = sample(model_dev, VP(), noise.to(device), **kw).samples
    assert dev.device.type == torch.device(device).type
    torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-9, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "ddim", "dpm_solver_pp_2m"])
def test_captured_sampler_matches_eager(method):
    dev = torch.device("cuda")
    model = _MLP().to(dev)
    captured = CapturedSampler(model, VP(), shape=(32, 2), prediction="v", method=method, steps=12, device=dev)
    for seed in (0, 1):
        noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(seed)).to(dev)
        eager = sample(model, VP(), noise, prediction="v", method=method, steps=12)
        got = captured(noise)
        assert got.nfe == eager.nfe
        torch.testing.assert_close(got.samples, eager.samples, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_captured_sampler_with_guidance_and_bad_shape():
    dev = torch.device("cuda")
    model = _MLP().to(dev)
    cond = torch.ones(16, device=dev)
    captured = CapturedSampler(model, RectifiedFlow(), shape=(16, 2), prediction="velocity", method="heun", steps=8,
                               cond=cond, guidance_scale=2.0, null_cond=0.0, device=dev)
    noise = torch.randn(16, 2, device=dev)
    eager = sample(model, RectifiedFlow(), noise, prediction="velocity", method="heun", steps=8, cond=cond, guidance_scale=2.0, null_cond=0.0)
    got = captured(noise)
    assert got.nfe == eager.nfe == 2 * 16  # Heun: 2 evaluations per step (velocity is evaluable at t = 0), guided
    torch.testing.assert_close(got.samples, eager.samples, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="captured shape"):
        captured(torch.randn(8, 2, device=dev))
    with pytest.raises(ValueError, match="only deterministic fixed-step methods"):
        CapturedSampler(model, RectifiedFlow(), shape=(16, 2), prediction="velocity", method="ddpm", steps=8, device=dev)


def test_samplers_do_not_import_lightning():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('lightning', 'pytorch_lightning'):\n"
        "            raise ImportError('lightning is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import flowgen.samplers, flowgen.samplers.capture, flowgen.samplers.likelihood\n"
        "assert not any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
