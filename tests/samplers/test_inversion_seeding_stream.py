"""Inversion round trips, per-sample seeding, streaming with bounded batches, dtypes."""

from __future__ import annotations

import pytest
import torch

from flowgen.paths import EDM, VP, Cosine, RectifiedFlow
from flowgen.samplers import integrate, invert, sample, sample_stream, seeded_generators, seeded_noise

from _sampler_helpers import oracle

F64 = torch.float64


@pytest.mark.parametrize(
    "path_cls, prediction, method, steps, tol",
    [
        (VP, "noise", "rk4", 32, 1e-6),
        (VP, "v", "heun", 64, 1e-3),
        (RectifiedFlow, "velocity", "rk4", 16, 1e-6),
        (Cosine, "score", "midpoint", 64, 1e-3),
        (EDM, "data", "dpm_solver_pp_2m", 64, 5e-2),
        (VP, "noise", "ddim", 256, 5e-2),
        (VP, "noise", "dopri5", None, 1e-4),
    ],
)
def test_inversion_then_generation_returns_the_start(path_cls, prediction, method, steps, tol):
    orc = oracle()
    path = path_cls()
    model = orc.model(path, prediction)
    noise = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    kw = dict(prediction=prediction, method=method)
    if steps is None:
        kw.update(atol=1e-8, rtol=1e-8)
    else:
        kw.update(steps=steps, grid="karras" if path_cls is EDM else None)
    t_max = 0.999 if prediction == "score" else None  # a score model is singular at α = 0 (t = 1 on cosine)
    data = sample(model, path, noise, t_max=t_max, **kw).samples
    calls = model.calls
    back = invert(model, path, data, t_max=t_max, **kw)
    err = float((back.samples - noise).abs().max())
    assert err < tol, err
    assert back.nfe == model.calls - calls


def test_inversion_grid_is_the_generation_grid_reversed():
    orc = oracle()
    path = VP()
    model = orc.model(path, "noise")
    res = invert(model, path, torch.randn(2, 2, dtype=F64), prediction="noise", steps=5)
    gen = sample(model, path, torch.randn(2, 2, dtype=F64), prediction="noise", steps=5)
    torch.testing.assert_close(res.grid, gen.grid.flip(0))


def test_seeded_noise_is_batch_invariant():
    a = seeded_noise([5, 7, 9], (2, 3))
    b = seeded_noise([7], (2, 3))
    c = seeded_noise(torch.tensor([9, 5]), (2, 3))
    assert a.shape == (3, 2, 3)
    assert torch.equal(a[1], b[0]) and torch.equal(a[2], c[0]) and torch.equal(a[0], c[1])
    assert not torch.equal(a[0], a[1])
    torch.testing.assert_close(seeded_noise([7], (2, 3), dtype=F64)[0].float(), b[0])


def test_sample_i_is_the_same_whatever_else_is_in_the_batch():
    orc = oracle()
    path = VP()
    model = orc.model(path, "noise")
    seeds = [3, 1, 4, 1_000_003]
    full = sample(model, path, seeded_noise(seeds, (2,), dtype=F64), prediction="noise", steps=8).samples
    alone = sample(model, path, seeded_noise([4], (2,), dtype=F64), prediction="noise", steps=8).samples
    torch.testing.assert_close(full[2:3], alone, rtol=1e-12, atol=1e-12)


def test_stochastic_sampler_with_per_sample_generators_is_batch_invariant():
    orc = oracle()
    path = VP()
    model = orc.model(path, "noise")

    def run(seeds):
        gens = seeded_generators(seeds)
        noise = seeded_noise(gens, (2,), dtype=F64)
        return sample(model, path, noise, prediction="noise", method="ddpm", steps=10, generator=gens).samples

    full, alone = run([10, 20, 30]), run([20])
    torch.testing.assert_close(full[1:2], alone, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(full[0], full[2])


def test_stateless_same_inputs_same_outputs():
    orc = oracle()
    path = VP()
    model = orc.model(path, "noise")
    noise = torch.randn(4, 2, dtype=F64)
    a = sample(model, path, noise, prediction="noise", method="ddpm", steps=6, generator=torch.Generator().manual_seed(1))
    b = sample(model, path, noise, prediction="noise", method="ddpm", steps=6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.samples, b.samples) and a.nfe == b.nfe


class _MaxBatch(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.max_batch = inner, 0

    def forward(self, x, t):
        self.max_batch = max(self.max_batch, x.shape[0])
        return self.inner(x, t)


def test_batch_size_bounds_the_batch_and_matches_one_shot():
    orc = oracle()
    path = RectifiedFlow()
    model = _MaxBatch(orc.model(path, "velocity"))
    noise = torch.randn(23, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    whole = sample(model, path, noise, prediction="velocity", method="heun", steps=4)
    model.max_batch = 0
    chunked = sample(model, path, noise, prediction="velocity", method="heun", steps=4, batch_size=5)
    assert model.max_batch == 5
    torch.testing.assert_close(chunked.samples, whole.samples, rtol=1e-12, atol=1e-12)
    assert chunked.nfe == 5 * whole.nfe  # 5 chunks (5+5+5+5+3), each with the same per-run count


def test_sample_stream_with_seed_does_not_depend_on_batch_size():
    orc = oracle()
    path = RectifiedFlow()
    model = _MaxBatch(orc.model(path, "velocity"))
    kw = dict(num_samples=11, shape=(2,), prediction="velocity", steps=3, seed=100, dtype=F64)
    a = torch.cat([r.samples for r in sample_stream(model, path, batch_size=4, **kw)])
    assert model.max_batch == 4
    b = torch.cat([r.samples for r in sample_stream(model, path, batch_size=11, **kw)])
    assert a.shape == (11, 2)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    direct = sample(model, path, seeded_noise(list(range(100, 111)), (2,), dtype=F64),
                    prediction="velocity", steps=3).samples
    torch.testing.assert_close(a, direct, rtol=1e-12, atol=1e-12)


def test_sample_stream_with_generator_is_reproducible():
    orc = oracle()
    path = VP()
    model = orc.model(path, "noise")
    kw = dict(num_samples=7, shape=(2,), batch_size=3, prediction="noise", method="ddpm", steps=4, dtype=F64)
    a = [r.samples for r in sample_stream(model, path, generator=torch.Generator().manual_seed(0), **kw)]
    b = [r.samples for r in sample_stream(model, path, generator=torch.Generator().manual_seed(0), **kw)]
    assert [x.shape[0] for x in a] == [3, 3, 1]
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# --- dtypes ---------------------------------------------------------------------------------
class _TinyMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["euler", "heun", "ddim", "dpm_solver_pp_2m", "ddpm", "rk4"])
def test_sampling_dtypes(dtype, method):
    path = VP()
    model = _TinyMLP().to(dtype)
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    out = sample(model, path, noise, prediction="v", method=method, steps=8, dtype=dtype,
                 generator=torch.Generator().manual_seed(0)).samples
    assert out.dtype == dtype and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_low_precision_tracks_float64_with_the_oracle(dtype):
    orc = oracle()
    path = RectifiedFlow()
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    ref = sample(orc.model(path, "velocity"), path, noise.double(), prediction="velocity", method="heun", steps=16).samples
    low = sample(orc.model(path, "velocity"), path, noise, prediction="velocity", method="heun", steps=16, dtype=dtype).samples
    assert low.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(low.double(), ref, atol=tol * 4, rtol=tol)


def test_integrate_with_increasing_grid_is_inversion():
    orc = oracle()
    path = VP()
    model = orc.model(path, "noise")
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    grid = torch.linspace(path.t_min, 1.0, 17, dtype=F64)
    up = integrate(model, path, x, prediction="noise", method="rk4", grid=grid)
    exact = orc.flow_map(x, t=torch.full((3,), path.t_min, dtype=F64), s=torch.ones(3, dtype=F64), path=path)
    torch.testing.assert_close(up.samples, exact, atol=1e-4, rtol=0)
    down = integrate(model, path, up.samples, prediction="noise", method="rk4", grid=grid.flip(0))
    torch.testing.assert_close(down.samples, x, atol=1e-4, rtol=0)
