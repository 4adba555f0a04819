"""Bad input gives clear errors that name the argument (and, for model failures, the step and t)."""

from __future__ import annotations

import math

import pytest
import torch

from flowgen.paths import VP, Cosine, RectifiedFlow
from flowgen.samplers import CapturedSampler, as_velocity, integrate, invert, sample, step

from _sampler_helpers import oracle

F64 = torch.float64


def _vel(x, t):
    return -x


def test_steps_below_one():
    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"steps must be an integer >= 1, got {bad}"):
            sample(_vel, RectifiedFlow(), torch.randn(2, 2), prediction="velocity", steps=bad)
    with pytest.raises(ValueError, match="needs steps"):
        sample(_vel, RectifiedFlow(), torch.randn(2, 2), prediction="velocity")


def test_bad_grids():
    noise = torch.randn(2, 2)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(_vel, RectifiedFlow(), noise, prediction="velocity", grid=[1.0, 0.2, 0.5, 0.0])
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(_vel, RectifiedFlow(), noise, prediction="velocity", grid=[0.0, 0.5, 1.0])  # generation runs downward
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        sample(_vel, RectifiedFlow(), noise, prediction="velocity", grid=[1.2, 0.5, 0.0])
    with pytest.raises(ValueError, match="does not match the grid's 2 steps"):
        sample(_vel, RectifiedFlow(), noise, prediction="velocity", grid=[1.0, 0.5, 0.0], steps=4)
    with pytest.raises(ValueError, match="either an explicit grid or t_max/t_min"):
        sample(_vel, RectifiedFlow(), noise, prediction="velocity", grid=[1.0, 0.5, 0.0], t_max=0.9)
    with pytest.raises(ValueError, match=r"unknown grid 'quadratic'"):
        sample(_vel, RectifiedFlow(), noise, prediction="velocity", grid="quadratic", steps=3)


def test_wrong_shape_output_names_step_and_t():
    def bad(x, t):
        return x[:, :1]

    with pytest.raises(ValueError, match=r"model output at step 0 \(t=1\) has shape \(3, 1\); expected \(3, 2\)"):
        sample(bad, RectifiedFlow(), torch.randn(3, 2), prediction="velocity", steps=4)
    with pytest.raises(TypeError, match=r"model returned tuple at step 0"):
        sample(lambda x, t: (x,), RectifiedFlow(), torch.randn(3, 2), prediction="velocity", steps=4)


@pytest.mark.parametrize("method", ["euler", "heun", "ddim", "ddpm", "dpm_solver_pp_2m", "rk4", "edm_stochastic", "dopri5"])
def test_non_finite_output_names_step_and_t(method):
    """The model turns NaN below t = 0.6; the error names the first step that evaluates there."""
    def model(x, t):
        out = -x
        return torch.where((t < 0.6)[:, None], torch.full_like(x, math.nan), out)

    kw = {} if method == "dopri5" else {"steps": 5}
    # uniform 5-step grid on [1e-3, 1]: t = 1, 0.8002, 0.6004, 0.4006, ...; the first evaluation below 0.6 is at step 3
    # (heun/rk4 evaluate ahead: heun's corrector of step 2 already evaluates at t=0.4006).
    match = {
        "heun": r"step 2 \(t=0\.4006\)",
        "edm_stochastic": r"step 2 \(t=0\.4006\)",
        "rk4": r"step 2 \(t=0\.5005\)",
        "dopri5": r"step \d+ \(adaptive evaluation\) \(t=0\.5",
    }.get(method, r"step 3 \(t=0\.4006\)")
    with pytest.raises(ValueError, match=match + r".*non-finite"):
        sample(model, VP(), torch.randn(4, 2, dtype=F64), prediction="velocity", method=method,
               generator=torch.Generator().manual_seed(0), **kw)


def test_overflow_in_the_update_is_located():
    def model(x, t):  # finite outputs, but the float16 state overflows: 6e4 + 0.5 * 6e4 > 65504
        return torch.full_like(x, -6.0e4)

    with pytest.raises(ValueError, match=r"state became non-finite at step 0 .*float16"):
        sample(model, RectifiedFlow(), torch.full((2, 2), 6.0e4), prediction="velocity", steps=2, dtype=torch.float16)


def test_condition_with_mismatched_batch():
    model = lambda x, t, c: -x  # noqa: E731
    with pytest.raises(ValueError, match=r"cond has shape \(3,\) but the batch has 4 samples"):
        sample(model, RectifiedFlow(), torch.randn(4, 2), prediction="velocity", steps=2, cond=torch.zeros(3))
    with pytest.raises(ValueError, match=r"cond has shape \(3,\) but the batch has 4 samples"):
        sample(model, RectifiedFlow(), torch.randn(4, 2), prediction="velocity", steps=2, cond=torch.zeros(3), guidance_scale=2.0, null_cond=0.0)
    with pytest.raises(ValueError, match="null_cond has shape"):
        sample(model, RectifiedFlow(), torch.randn(4, 2), prediction="velocity", steps=2, cond=torch.zeros(4, 3), guidance_scale=2.0, null_cond=torch.zeros(2))
    with pytest.raises(ValueError, match="guidance_scale needs null_cond"):
        sample(model, RectifiedFlow(), torch.randn(4, 2), prediction="velocity", steps=2, cond=torch.zeros(4), guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale needs cond"):
        sample(model, RectifiedFlow(), torch.randn(4, 2), prediction="velocity", steps=2, guidance_scale=2.0, null_cond=0)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        sample(model, RectifiedFlow(), torch.randn(4, 2), prediction="velocity", steps=2, cond=torch.zeros(4), guidance_scale=math.inf, null_cond=0)
    with pytest.raises(ValueError, match="null_cond is only used with guidance_scale"):
        sample(model, RectifiedFlow(), torch.randn(4, 2), prediction="velocity", steps=2, cond=torch.zeros(4), null_cond=0)


def test_unknown_method_and_options():
    with pytest.raises(ValueError, match=r"unknown method 'lms'; expected one of \['euler', 'heun'"):
        sample(_vel, RectifiedFlow(), torch.randn(2, 2), prediction="velocity", method="lms", steps=2)
    with pytest.raises(TypeError, match=r"method 'euler' got unexpected option\(s\) \['eta'\]"):
        sample(_vel, RectifiedFlow(), torch.randn(2, 2), prediction="velocity", method="euler", steps=2, eta=0.5)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        sample(_vel, RectifiedFlow(), torch.randn(2, 2), prediction="velocity", method="ddim", steps=2, eta=-1.0)
    with pytest.raises(ValueError, match="unknown prediction 'flow_velocity'"):
        sample(_vel, RectifiedFlow(), torch.randn(2, 2), prediction="flow_velocity", steps=2)
    with pytest.raises(ValueError, match="adaptive method 'dopri5' chooses its own steps"):
        sample(_vel, RectifiedFlow(), torch.randn(2, 2), prediction="velocity", method="dopri5", steps=8)
    with pytest.raises(ValueError, match="atol must be a finite number > 0"):
        sample(_vel, RectifiedFlow(), torch.randn(2, 2), prediction="velocity", method="dopri5", atol=0.0)
    with pytest.raises(ValueError, match="S_churn must be"):
        sample(_vel, VP(), torch.randn(2, 2), prediction="velocity", method="edm_stochastic", steps=2, S_churn=-1.0)


def test_singular_evaluations_are_refused():
    orc = oracle()
    path = RectifiedFlow()
    # A noise model at t = 1 (α = 0) does not determine the data.
    with pytest.raises(ValueError, match=r"euler would evaluate the model at t=1, where a 'noise' prediction cannot be converted"):
        sample(orc.model(path, "noise"), path, torch.randn(2, 2, dtype=F64), prediction="noise", steps=4)
    with pytest.raises(ValueError, match=r"ddim would evaluate the model at t=1, where a 'score' prediction"):
        sample(orc.model(Cosine(), "score"), Cosine(), torch.randn(2, 2, dtype=F64), prediction="score", method="ddim", steps=4)
    # Inverting from data at t = 0 with a data model: σ = 0.
    with pytest.raises(ValueError, match="where a 'data' prediction cannot be converted"):
        invert(orc.model(path, "data"), path, torch.randn(2, 2, dtype=F64), prediction="data", steps=4)
    with pytest.raises(ValueError, match="start the grid where sigma > 0"):
        integrate(orc.model(path, "velocity"), path, torch.randn(2, 2, dtype=F64), prediction="velocity",
                  method="dpm_solver_pp_2m", grid=[0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="refusing to evaluate the model"):
        as_velocity(orc.model(path, "noise"), path, "noise")(torch.randn(2, 2, dtype=F64), torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="refusing to evaluate the model at t=1"):
        step(orc.model(path, "noise"), path, torch.randn(2, 2, dtype=F64), t=1.0, s=0.5, prediction="noise")


def test_bad_state_and_types():
    with pytest.raises(TypeError, match="noise must be a torch.Tensor"):
        sample(_vel, RectifiedFlow(), [[0.0, 1.0]], prediction="velocity", steps=2)
    with pytest.raises(TypeError, match="noise must be a floating-point tensor"):
        sample(_vel, RectifiedFlow(), torch.zeros(2, 2, dtype=torch.long), prediction="velocity", steps=2)
    with pytest.raises(ValueError, match=r"noise must have shape \(B, \*D\)"):
        sample(_vel, RectifiedFlow(), torch.zeros(4), prediction="velocity", steps=2)
    with pytest.raises(ValueError, match="noise holds 1 non-finite"):
        sample(_vel, RectifiedFlow(), torch.tensor([[0.0, math.nan]]), prediction="velocity", steps=2)
    with pytest.raises(TypeError, match="path must be a flowgen Path"):
        sample(_vel, "rf", torch.zeros(2, 2), prediction="velocity", steps=2)
    with pytest.raises(TypeError, match="model must be callable"):
        sample(3, RectifiedFlow(), torch.zeros(2, 2), prediction="velocity", steps=2)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        sample(_vel, RectifiedFlow(), torch.zeros(2, 2), prediction="velocity", steps=2, dtype=torch.int32)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        sample(_vel, RectifiedFlow(), torch.zeros(4, 2), prediction="velocity", steps=2, batch_size=0)
    with pytest.raises(ValueError, match="list of 3 per-sample generators but the batch has 4"):
        sample(_vel, VP(), torch.zeros(4, 2), prediction="velocity", method="ddpm", steps=2,
               generator=[torch.Generator() for _ in range(3)])


def test_stochastic_methods_cannot_invert():
    with pytest.raises(ValueError, match="stochastic"):
        invert(_vel, VP(), torch.zeros(2, 2), prediction="velocity", method="ddpm", steps=3)
    with pytest.raises(ValueError, match="stochastic"):
        integrate(_vel, VP(), torch.zeros(2, 2), prediction="velocity", method="ddim", eta=1.0, grid=[0.1, 0.5, 1.0])


def test_capture_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a CUDA device, got device=cpu"):
        CapturedSampler(_vel, RectifiedFlow(), shape=(4, 2), prediction="velocity", steps=4, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            CapturedSampler(_vel, RectifiedFlow(), shape=(4, 2), prediction="velocity", steps=4)
