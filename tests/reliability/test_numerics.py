"""Numerics: finite schedules at the ends, no singular evaluation, bf16/float16/float64 work.

* every built-in path (and every family in ``BUILTIN_PATHS``, so a new one is covered the day it
  is added) is finite at ``t = 0`` and ``t = 1`` for α and σ in float32 and float64, and its
  derivatives are finite wherever the path documents them finite (on ``[t_min, t_max]``);
* no sampler ever calls the model at a time where the model's prediction cannot be converted to
  what the method needs (:func:`flowgen.parameterization.singular_at`), for every method × path ×
  prediction, in ``sample``, ``invert`` and ``log_likelihood``: a model records every ``t`` it is
  called at and the test checks each one;
* a bf16 autocast training step (objective + MLP + optimizer) works on the CPU (and CUDA with
  ``--device cuda``), float16 sampling works and agrees with float64, float64 sampling keeps
  float64 throughout.
"""

from __future__ import annotations

import math

import _rel_apis as A
import pytest
import torch

from flowgen import Prediction
from flowgen import objectives as fo
from flowgen import samplers as fs
from flowgen.nn import MLP
from flowgen.parameterization import singular_at
from flowgen.paths import BUILTIN_PATHS, DiscreteDDPM
from flowgen.testing import GaussianData

pytestmark = pytest.mark.filterwarnings("ignore")

PATHS = sorted(A.PATH_FACTORIES)
F32, F64 = torch.float32, torch.float64


def test_every_builtin_family_is_covered():
    covered = {type(f()).__name__ for f in A.PATH_FACTORIES.values()}
    assert set(BUILTIN_PATHS) <= covered, f"add the new path families {set(BUILTIN_PATHS) - covered} to PATH_FACTORIES"


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name", PATHS)
def test_paths_finite_at_the_ends(name, dtype):
    path = A.PATH_FACTORIES[name]()
    ends = torch.tensor([0.0, 1.0], dtype=dtype)
    a, s = path.alpha(ends), path.sigma(ends)
    assert a.dtype == s.dtype == dtype
    assert bool(torch.isfinite(a).all() & torch.isfinite(s).all()), (a, s)
    assert bool(((a >= 0) & (s >= 0)).all()) and bool(((a + s) > 0).all())
    # documented: the derivatives are finite on [t_min, t_max] (its ends included)
    inner = torch.tensor([path.t_min, path.t_max], dtype=dtype)
    for fn in (path.d_alpha, path.d_sigma):
        v = fn(inner)
        assert bool(torch.isfinite(v).all()), (fn.__name__, inner, v)
    # ... and where the interval reaches 0 or 1, at the very end
    for t in (0.0, 1.0):
        if path.t_min <= t <= path.t_max:
            tt = torch.tensor([t], dtype=dtype)
            assert bool(torch.isfinite(path.d_alpha(tt)).all() & torch.isfinite(path.d_sigma(tt)).all()), (name, t)
    # log-SNR: ±inf only where σ = 0 or α = 0 (never NaN), and the inverse maps the ends back
    lam = path.log_snr(ends)
    assert not bool(torch.isnan(lam).any())
    assert bool((torch.isfinite(lam) | (a == 0) | (s == 0)).all())
    back = path.t_from_log_snr(lam)
    assert bool(torch.isfinite(back).all()), back
    torch.testing.assert_close(back, ends, atol=1e-6 if dtype == F64 else 1e-4, rtol=0)


# --- no singular evaluation -------------------------------------------------------------------------------
class Recorder(torch.nn.Module):
    """A finite model of any prediction kind that records every ``t`` it is called with."""

    def __init__(self):
        super().__init__()
        self.times: list[torch.Tensor] = []

    def forward(self, x_t, t, cond=None):
        self.times.append(t.detach().to(torch.float64).cpu().clone())
        return -0.5 * x_t


def _targets(method: str) -> tuple[Prediction, ...]:
    """What a method converts the model's output into."""
    m = fs.Method.parse(method)
    if m in (fs.Method.DDIM, fs.Method.DDPM):
        return (Prediction.DATA, Prediction.NOISE)
    if m is fs.Method.DPM_SOLVER_PP_2M:
        return (Prediction.DATA,)
    return (Prediction.VELOCITY,)


def _assert_no_singular_call(rec: Recorder, path, prediction, targets, what: str):
    assert rec.times, f"{what}: the model was never called"
    t = torch.cat(rec.times)
    for target in targets:
        bad = singular_at(path, t.clamp(0, 1), src=prediction, dst=target)
        assert not bool(bad.any()), (
            f"{what}: model evaluated at t={t[bad].tolist()[:3]} where {prediction.value} -> {target.value} is singular"
        )


def _run_or_refused(fn):
    """Run a sampler call; a ValueError (a singular grid refused up front) means nothing was evaluated there."""
    try:
        return fn()
    except ValueError as err:
        return err


@pytest.mark.parametrize("method", A.ALL_METHODS)
def test_samplers_never_evaluate_a_singular_conversion(method):
    adaptive = fs.METHODS[fs.Method.parse(method)].adaptive
    opts = {"atol": 1e-2, "rtol": 1e-2} if adaptive else {}  # loose: which times get evaluated is the point
    steps = None if adaptive else 3
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    ran = refused = 0
    for name in PATHS:
        path = A.PATH_FACTORIES[name]()
        for prediction in Prediction:
            what = f"{method} on {name} with a {prediction.value} model"
            rec = Recorder()
            out = _run_or_refused(lambda: fs.sample(rec, path, noise, prediction=prediction, method=method, steps=steps,
                                                    generator=torch.Generator().manual_seed(1), **opts))
            if isinstance(out, ValueError):
                refused += 1
                # refused before (or at) a singular call: everything evaluated so far was regular
                if rec.times:
                    _assert_no_singular_call(rec, path, prediction, _targets(method), what)
                continue
            ran += 1
            assert bool(torch.isfinite(out.samples).all()), what
            assert out.nfe == sum(int(ts.numel() > 0) for ts in rec.times), what
            _assert_no_singular_call(rec, path, prediction, _targets(method), what)
            if not fs.methods.is_stochastic(fs.Method.parse(method), opts) and fs.Method.parse(method) is not fs.Method.DDPM:
                rec = Recorder()
                inv = _run_or_refused(lambda: fs.invert(rec, path, out.samples, prediction=prediction, method=method,
                                                        steps=steps, **opts))
                if rec.times:
                    _assert_no_singular_call(rec, path, prediction, _targets(method), "invert: " + what)
                if not isinstance(inv, ValueError):
                    assert bool(torch.isfinite(inv.samples).all()), "invert: " + what
    assert ran > 0, f"{method} never ran"
    print(f"{method}: {ran} sampled, {refused} refused up front")


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5"])
def test_log_likelihood_never_evaluates_a_singular_conversion(method):
    data = torch.randn(2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    ran = 0
    for name in PATHS:
        path = A.PATH_FACTORIES[name]()
        for prediction in Prediction:
            rec = Recorder()
            kw = {"steps": 4} if method != "dopri5" else {"atol": 1e-3, "rtol": 1e-3}
            out = _run_or_refused(lambda: fs.log_likelihood(rec, path, data, prediction=prediction, method=method, **kw))
            if rec.times:
                _assert_no_singular_call(rec, path, prediction, (Prediction.VELOCITY,), f"log_likelihood[{method}] {name} {prediction.value}")
            if not isinstance(out, ValueError):
                ran += 1
                assert bool(torch.isfinite(out.log_prob).all())
    assert ran > 0


# --- precision ---------------------------------------------------------------------------------------------
def test_bf16_autocast_training_step(device):
    """Objective + MLP + Adam under bf16 autocast: finite loss, finite float32 gradients and weights."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    torch.manual_seed(0)
    model = MLP(2, hidden=32, depth=2).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(0)
    for objective in (fo.rectified_flow(), fo.ddpm(prediction="v"), fo.edm(), fo.flow_matching(coupling="ot")):
        data = torch.randn(64, 2, device=device, generator=gen)
        before = [p.detach().clone() for p in model.parameters()]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = objective(model, data, generator=gen)
        assert loss.dtype == torch.float32 and bool(torch.isfinite(loss)), (objective, loss)
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():
            assert p.grad is not None and p.grad.dtype == torch.float32 and bool(torch.isfinite(p.grad).all())
        opt.step()
        assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


FIXED_METHODS = [m for m in A.ALL_METHODS if not fs.METHODS[fs.Method.parse(m)].adaptive]


@pytest.mark.parametrize("method", FIXED_METHODS)
def test_float16_sampling_matches_float64(method, device):
    """float16 noise and an exact model: float16 samples, finite, close to the float64 run of the same method."""
    path = A.PATH_FACTORIES["Cosine"]()
    oracle = GaussianData(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.3, 1.5], dtype=F64))
    model = oracle.model(path, "v")
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64).to(device)
    kw = dict(prediction="v", method=method, steps=8, t_max=0.999, generator=None)
    if fs.methods.is_stochastic(fs.Method.parse(method), {}):
        kw["generator"] = [torch.Generator(device=device).manual_seed(i) for i in range(16)]
    ref = fs.sample(model, path, noise, **kw).samples
    if kw["generator"] is not None:
        kw["generator"] = [torch.Generator(device=device).manual_seed(i) for i in range(16)]
    half = fs.sample(model, path, noise.to(torch.float16), **kw).samples
    assert half.dtype == torch.float16 and bool(torch.isfinite(half).all())
    err = (half.double() - ref).abs().max().item()
    assert err < 0.05 * (1 + ref.abs().max().item()), err


def test_float16_sampling_with_a_half_network(device):
    """A float16 MLP sampled with float16 noise (sample's dtype option) on every fixed-step method: finite float16 samples."""
    if device.type == "cpu" and not hasattr(torch, "float16"):
        pytest.skip("no float16")
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=2).to(device=device, dtype=torch.float16).eval()
    noise = torch.randn(32, 2, device=device)
    ref_net = MLP(2, hidden=16, depth=2).to(device).eval()
    ref_net.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
    for method in ("euler", "heun", "ddim", "dpm_solver_pp_2m"):
        out = fs.sample(net, A.PATH_FACTORIES["RectifiedFlow"](), noise, prediction="velocity", method=method, steps=6,
                        dtype=torch.float16).samples
        assert out.dtype == torch.float16 and bool(torch.isfinite(out).all()), method
        ref = fs.sample(ref_net, A.PATH_FACTORIES["RectifiedFlow"](), noise, prediction="velocity", method=method, steps=6).samples
        assert (out.float() - ref).abs().max().item() < 0.05 * (1 + ref.abs().max().item()), method


@pytest.mark.parametrize("name", PATHS)
def test_float64_sampling_keeps_float64(name, device):
    """float64 noise: the model sees float64 x_t and t, the samples are float64 and agree with the exact flow map."""
    path = A.PATH_FACTORIES[name]()
    oracle = GaussianData(torch.tensor([0.3, -0.2], dtype=F64), 0.5)
    seen = []

    class Model(torch.nn.Module):
        def forward(self, x_t, t, cond=None):
            seen.append((x_t.dtype, t.dtype))
            return oracle.predict(x_t, t, path, "data")

    t_max = min(path.t_max, 0.999)
    t_min = max(path.t_min, 1e-3)
    x0 = oracle.marginal(t_max, path)
    g = torch.Generator(device="cpu").manual_seed(0)
    x_start = (x0[0] + torch.randn(8, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(x0[1]).T).to(device)
    if isinstance(path, DiscreteDDPM):
        # piecewise log-linear tables: an adaptive solver crawls through the kinks; float64 end to end is the point here
        out = fs.integrate(Model(), path, x_start, prediction="data", method="heun", steps=16, t_max=t_max, t_min=t_min)
        f32 = fs.integrate(Model(), path, x_start.float(), prediction="data", method="heun", steps=16, t_max=t_max, t_min=t_min)
        assert out.samples.dtype == F64 and all(d == (F64, F64) for d in seen[: len(seen) // 2])
        assert (out.samples.float() - f32.samples).abs().max().item() < 1e-4
        return
    # an adaptive solver at tolerances only float64 can meet: the error is then far below float32's resolution
    out = fs.integrate(Model(), path, x_start, prediction="data", method="dopri5", t_max=t_max, t_min=t_min, atol=1e-10, rtol=1e-10)
    assert out.samples.dtype == F64 and all(d == (F64, F64) for d in seen)
    exact = oracle.flow_map(x_start.cpu(), t=torch.full((8,), t_max, dtype=F64), s=torch.full((8,), t_min, dtype=F64), path=path)
    err = (out.samples.cpu() - exact).abs().max().item()
    assert math.isfinite(err) and err < 1e-7 * (1 + exact.abs().max().item()), err
