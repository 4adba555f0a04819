"""Endpoint distillation: the loss is the distance of the student's own DDIM sample; training reaches the exact flow map."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flowgen.distill import ConsistencyGenerator, EndpointDistillation, ProgressiveGenerator, endpoint_distillation_loss
from flowgen.parameterization import singular_at
from flowgen.paths import RectifiedFlow
from flowgen.samplers import make_grid, sample
from flowgen.testing import GaussianData

from _distill_helpers import F64, PATHS, PREDICTIONS, RandomLinearTeacher


class PerTimeAffine(nn.Module):
    """A data-predicting student ``D(x, t_k) = A_k x + b_k`` with its own affine map at each grid time ``t_k``."""

    def __init__(self, grid, dim: int):
        super().__init__()
        self.times = [float(v) for v in grid[:-1]]
        self.A = nn.Parameter(torch.zeros(len(self.times), dim, dim, dtype=F64))
        self.b = nn.Parameter(torch.zeros(len(self.times), dim, dtype=F64))

    def forward(self, x_t, t, cond=None):
        k = min(range(len(self.times)), key=lambda i: abs(self.times[i] - float(t[0])))
        return x_t @ self.A[k].T + self.b[k]


def _grid(path, k):
    return make_grid("uniform", k, path)


def _regular_cases():
    """(path, prediction, k) where the prediction has a data estimate at every step's start (the sampler refuses the others)."""
    for name in sorted(PATHS):
        for prediction in PREDICTIONS:
            for k in (1, 3):
                path = PATHS[name]()
                if not bool(singular_at(path, _grid(path, k)[:-1], src=prediction, dst="data").any()):
                    yield name, prediction, k


@pytest.mark.parametrize("path_name, prediction, k", list(_regular_cases()))
def test_the_loss_is_the_distance_of_the_students_ddim_sample(path_name, prediction, k):
    path = PATHS[path_name]()
    grid = _grid(path, k)
    student = RandomLinearTeacher(3, seed=1)
    g = torch.Generator().manual_seed(2)
    noise, endpoint = torch.randn(16, 3, generator=g, dtype=F64), torch.randn(16, 3, generator=g, dtype=F64)
    loss = endpoint_distillation_loss(student, noise=noise, endpoint=endpoint, path=path, prediction=prediction, grid=grid)
    x = sample(student, path, noise, prediction=prediction, method="ddim", grid=grid).samples
    torch.testing.assert_close(loss, (x - endpoint).pow(2).mean(1), rtol=1e-10, atol=1e-12)


def test_the_generator_samples_what_the_loss_scores():
    path = RectifiedFlow()
    ed = EndpointDistillation(path, "velocity", grid=[1.0, 0.6, 0.25, 0.0], event_shape=(3,))
    student = RandomLinearTeacher(3, seed=4)
    noise = torch.randn(8, 3, dtype=F64)
    out = ed.loss(student, noise, torch.zeros(8, 3, dtype=F64))
    gen = ed.student_generator(student)
    assert isinstance(gen, ProgressiveGenerator) and gen.supported_steps == (3,)
    torch.testing.assert_close(gen.sample(noise, steps=3), out.pred.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.x_t, noise)  # σ(1) = 1 on rectified flow


def test_the_gradient_reaches_every_step():
    path = RectifiedFlow()
    grid = torch.tensor([1.0, 0.7, 0.4, 0.0], dtype=F64)
    student = PerTimeAffine(grid, 2)
    with torch.no_grad():
        student.A.normal_(0, 0.1)
    loss = EndpointDistillation(path, "data", grid=grid)(student, torch.randn(32, 2, dtype=F64), torch.randn(32, 2, dtype=F64))
    loss.backward()
    for k in range(3):
        assert student.A.grad[k].abs().sum() > 0 and student.b.grad[k].abs().sum() > 0, k


@pytest.mark.parametrize("path_name", ["rf", "vp"])
@pytest.mark.parametrize("k", [1, 2])
def test_training_reaches_the_exact_gaussian_flow_map(path_name, k):
    """Gaussian data: the exact ODE endpoint is affine in the noise, so a per-time affine student can hit it exactly.

    The oracle teacher's own ``k``-step DDIM sampler is far off it; endpoint distillation of a student
    trained from zero gets within a few thousandths.
    """
    path = PATHS[path_name]()
    gauss = GaussianData.random(2, generator=torch.Generator().manual_seed(5))
    grid = _grid(path, k)
    t0, t_end = float(grid[0]), float(grid[-1])

    def endpoints(z):
        x0 = float(path._sigma(grid[:1])[0]) * z
        return gauss.flow_map(x0, t=torch.full((z.shape[0],), t0, dtype=F64), s=torch.full((z.shape[0],), t_end, dtype=F64), path=path)

    g = torch.Generator().manual_seed(6)
    z_val = torch.randn(2048, 2, generator=g, dtype=F64)
    teacher_rms = float((sample(gauss.model(path, "data"), path, z_val, prediction="data", method="ddim", grid=grid).samples
                         - endpoints(z_val)).pow(2).sum(1).mean().sqrt())
    student = PerTimeAffine(grid, 2)
    ed = EndpointDistillation(path, "data", grid=grid)
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    for it in range(600):
        z = torch.randn(256, 2, generator=g, dtype=F64)
        loss = ed(student, z, endpoints(z))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it == 400:
            for group in opt.param_groups:
                group["lr"] = 0.005
    with torch.no_grad():
        rms = float((ed.loss(student, z_val, endpoints(z_val)).per_sample * 2).mean().sqrt())
    assert teacher_rms > 0.05
    assert rms < 0.01 and rms < teacher_rms / 20, (rms, teacher_rms)


def test_bad_input_is_refused_naming_the_argument():
    path = RectifiedFlow()
    student = RandomLinearTeacher(2)
    z, x = torch.randn(4, 2, dtype=F64), torch.randn(4, 2, dtype=F64)
    kw = dict(path=path, prediction="velocity", grid=[1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="endpoint"):
        endpoint_distillation_loss(student, noise=z, endpoint=torch.randn(4, 3, dtype=F64), **kw)
    with pytest.raises(ValueError, match="endpoint"):
        endpoint_distillation_loss(student, noise=z, endpoint=x.clone().fill_(float("nan")), **kw)
    with pytest.raises(ValueError, match="noise"):
        endpoint_distillation_loss(student, noise=z.clone().fill_(float("inf")), endpoint=x, **kw)
    with pytest.raises(ValueError, match="grid"):
        endpoint_distillation_loss(student, noise=z, endpoint=x, path=path, prediction="velocity", grid=[0.0, 1.0])
    with pytest.raises(ValueError, match="grid"):
        endpoint_distillation_loss(student, noise=z, endpoint=x, path=path, prediction="velocity", grid=[1.0])
    with pytest.raises(ValueError, match="grid"):  # a DDIM step from σ = 0
        EndpointDistillation(RectifiedFlow(), "velocity", grid=[1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="prediction"):
        EndpointDistillation(path, "nonsense", grid=[1.0, 0.0])
    with pytest.raises(TypeError, match="path"):
        EndpointDistillation("rf", "velocity", grid=[1.0, 0.0])
    with pytest.raises(ValueError, match="per-sample shape"):
        EndpointDistillation(path, "velocity", grid=[1.0, 0.0], event_shape=(3,)).loss(student, z, x)
    with pytest.raises(TypeError, match="ProgressiveGenerator"):
        EndpointDistillation.from_generator(ConsistencyGenerator(student, path))


def test_from_generator_keeps_the_students_grid_and_prediction():
    path = RectifiedFlow()
    gen = ProgressiveGenerator(RandomLinearTeacher(2), path, "v", grid=[1.0, 0.5, 0.0], event_shape=(2,))
    ed = EndpointDistillation.from_generator(gen)
    assert ed.steps == 2 and ed.prediction.value == "v" and ed.event_shape == (2,)
    torch.testing.assert_close(ed.grid, gen.grid)
