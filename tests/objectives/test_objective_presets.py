"""The Objective object and its paper presets: run, reproduce, differentiate, refuse bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowgen import objectives
from flowgen.objectives import Objective, call_model, prediction_loss
from flowgen.parameterization import Prediction
from flowgen.paths import EDM, VP, Cosine, DiscreteDDPM, RectifiedFlow
from flowgen.preconditioning import EDMPreconditioned


class TinyNet(nn.Module):
    """An MLP over flattened features with t as an extra input; any (B, *D)."""

    def __init__(self, dim: int, cond_dim: int = 0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1 + cond_dim, 16), nn.SiLU(), nn.Linear(16, dim))
        self.calls = []

    def forward(self, x_t, t, cond=None):
        self.calls.append((x_t, t, cond))
        parts = [x_t.reshape(x_t.shape[0], -1), t[:, None].to(x_t.dtype)]
        if cond is not None:
            parts.append(cond.to(x_t.dtype))
        return self.net(torch.cat(parts, 1)).reshape(x_t.shape)


PRESETS = {
    "ddpm": lambda: objectives.ddpm(),
    "ddpm-v-cosine": lambda: objectives.ddpm(DiscreteDDPM.cosine(), prediction="v"),
    "ddpm-x0-min_snr": lambda: objectives.ddpm(prediction="x0", weighting=objectives.MinSNRWeight(5)),
    "ddpm-eps-VP": lambda: objectives.ddpm(VP(), prediction="epsilon"),
    "rectified_flow": lambda: objectives.rectified_flow(),
    "rectified_flow-logit_normal": lambda: objectives.rectified_flow(time="logit_normal"),
    "flow_matching": lambda: objectives.flow_matching(),
    "flow_matching-ot": lambda: objectives.flow_matching(coupling="ot"),
    "flow_matching-sinkhorn-sigma_min": lambda: objectives.flow_matching(coupling="sinkhorn", sigma_min=0.01),
    "flow_matching-cosine": lambda: objectives.flow_matching(Cosine()),
    "edm": lambda: objectives.edm(),
    "edm-pseudo_huber": lambda: objectives.edm(metric="pseudo_huber"),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("shape", [(8, 3), (4, 2, 3, 3)], ids=["vectors", "images"])
def test_presets_run_reproduce_and_differentiate(name, shape):
    objective = PRESETS[name]()
    dim = math.prod(shape[1:])
    torch.manual_seed(0)
    net = TinyNet(dim)
    model = EDMPreconditioned(net, objective.path) if name.startswith("edm") else net
    data = torch.randn(shape)
    out1 = objective.compute(model, data, generator=torch.Generator().manual_seed(7))
    out2 = objective.compute(model, data, generator=torch.Generator().manual_seed(7))
    out3 = objective.compute(model, data, generator=torch.Generator().manual_seed(8))
    assert out1.loss.dim() == 0 and torch.isfinite(out1.loss)
    assert out1.per_sample.shape == (shape[0],) and out1.t.shape == (shape[0],)
    for field in ("loss", "per_sample", "t", "noise", "x_t", "pred"):
        assert torch.equal(getattr(out1, field), getattr(out2, field)), field
    assert not torch.equal(out1.t, out3.t)
    # the objective is the functional loss on the drawn (t, noise), with x_t on the path
    path = objective.path
    assert ((out1.t >= path.t_min) & (out1.t <= path.t_max)).all()
    sample = path.sample(data=data, noise=out1.noise, t=out1.t)
    torch.testing.assert_close(out1.x_t, sample.x_t)
    expected = prediction_loss(out1.pred, data=data, noise=out1.noise, t=out1.t, path=path,
                               prediction=objective.prediction, weighting=objective.weighting, metric=objective.metric)
    torch.testing.assert_close(out1.per_sample, expected)
    # differentiable scalar
    loss = objective(model, data, generator=torch.Generator().manual_seed(7))
    assert torch.equal(loss, out1.loss)
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_preset_configurations_read_like_the_papers():
    o = objectives.ddpm()
    assert isinstance(o.path, DiscreteDDPM) and o.path.num_steps == 1000 and o.prediction is Prediction.NOISE
    assert isinstance(o.time, objectives.DiscreteTime)
    assert objectives.ddpm(prediction="v").prediction is Prediction.V
    assert objectives.ddpm(prediction="x0").prediction is Prediction.DATA
    o = objectives.rectified_flow()
    assert isinstance(o.path, RectifiedFlow) and o.path.sigma_min == 0 and o.prediction is Prediction.VELOCITY
    o = objectives.flow_matching(coupling="ot", sigma_min=0.1)
    assert o.path.sigma_min == 0.1 and isinstance(o.coupling, objectives.ExactOTCoupling)
    o = objectives.edm()
    assert isinstance(o.path, EDM) and o.prediction is Prediction.DATA
    assert isinstance(o.weighting, objectives.EDMWeight) and o.weighting.sigma_data == 0.5
    assert isinstance(o.time, objectives.LogNormalSigmaTime) and (o.time.p_mean, o.time.p_std) == (-1.2, 1.2)
    assert objectives.edm(EDM(sigma_data=1.0)).weighting.sigma_data == 1.0
    assert "Objective(" in repr(o)


def test_float64_data_gives_float64_everywhere():
    objective = objectives.rectified_flow()
    data = torch.randn(5, 2, dtype=torch.float64)
    model = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    out = objective.compute(model, data, generator=torch.Generator().manual_seed(0))
    assert out.t.dtype == out.noise.dtype == out.x_t.dtype == out.per_sample.dtype == torch.float64
    out = objective.compute(model, data.float(), generator=torch.Generator().manual_seed(0))
    assert out.t.dtype == out.noise.dtype == out.x_t.dtype == out.per_sample.dtype == torch.float32


def test_conditioning_is_passed_to_the_model():
    objective = objectives.rectified_flow()
    net = TinyNet(3, cond_dim=2)
    cond = torch.randn(4, 2)
    objective(net, torch.randn(4, 3), cond)
    assert net.calls[-1][2] is cond
    t = net.calls[-1][1]
    assert t.shape == (4,)


def test_oracle_model_loss_is_the_irreducible_one():
    """With the exact denoiser the expected objective equals E‖target − E[target|x_t]‖², below any other model."""
    from flowgen.testing import GaussianData

    oracle = GaussianData(torch.zeros(2), torch.tensor([1.0, 0.25]))
    objective = objectives.ddpm(Cosine(), prediction="noise")
    data = oracle.sample(2000, generator=torch.Generator().manual_seed(0))
    best = objective(oracle.model(objective.path, "noise"), data, generator=torch.Generator().manual_seed(1))
    zero = objective(lambda x_t, t: torch.zeros_like(x_t), data, generator=torch.Generator().manual_seed(1))
    assert best < zero
    assert oracle.model(objective.path, "noise").calls == 0


def test_objective_bad_input_names_the_argument():
    objective = objectives.rectified_flow()
    model = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    for bad in (float("nan"), float("inf"), -float("inf")):
        data = torch.randn(4, 3)
        data[1, 2] = bad
        with pytest.raises(ValueError, match=r"data holds 1 non-finite value"):
            objective(model, data)
    data = torch.randn(4, 3)
    data[0, 0] = float("nan")
    Objective(RectifiedFlow(), "velocity", check_finite=False)(model, data)  # opting out is possible
    with pytest.raises(ValueError, match=r"data must have shape \(B, \*D\)"):
        objective(model, torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"data must be a floating-point tensor"):
        objective(model, torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"model output must have the shape of x_t \(4, 3\), got \(4, 2\)"):
        objective(lambda x_t, t: x_t[:, :2], torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"model output must have the shape of x_t"):
        call_model(lambda x_t, t: None, torch.zeros(2, 1), torch.zeros(2))
    with pytest.raises(TypeError, match=r"path must be a flowgen Path"):
        Objective("rectified_flow", "velocity")
    with pytest.raises(ValueError, match=r"unknown prediction 'flowmap'"):
        Objective(RectifiedFlow(), "flowmap")
    with pytest.raises(ValueError, match=r"unknown time distribution 'beta'"):
        Objective(RectifiedFlow(), "velocity", time="beta")
    with pytest.raises(ValueError, match=r"unknown weighting 'p2'"):
        Objective(RectifiedFlow(), "velocity", weighting="p2")
    with pytest.raises(ValueError, match=r"unknown coupling 'gromov'"):
        Objective(RectifiedFlow(), "velocity", coupling="gromov")
    with pytest.raises(ValueError, match=r"unknown metric 'l1'"):
        Objective(RectifiedFlow(), "velocity", metric="l1")
    with pytest.raises(ValueError, match=r"sigma_min"):
        objectives.flow_matching(Cosine(), sigma_min=0.1)
    with pytest.raises(ValueError, match=r"num_steps"):
        Objective(RectifiedFlow(), "velocity", time="discrete")(model, torch.randn(2, 3))


@pytest.mark.parametrize("name", ["ddpm", "rectified_flow", "flow_matching-ot", "flow_matching-sinkhorn-sigma_min", "edm"])
def test_presets_on_the_test_device(name, device):
    objective = PRESETS[name]()
    torch.manual_seed(0)
    net = TinyNet(6).to(device)
    model = EDMPreconditioned(net, objective.path) if name == "edm" else net
    data = torch.randn(8, 6, device=device)
    out = objective.compute(model, data, generator=torch.Generator(device=device).manual_seed(3))
    again = objective.compute(model, data, generator=torch.Generator(device=device).manual_seed(3))
    assert out.loss.device == data.device and torch.isfinite(out.loss)
    assert torch.equal(out.loss, again.loss) and out.t.device == data.device
    out.loss.backward()
