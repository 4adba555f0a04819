"""End to end on a 2-D Gaussian mixture: a distilled 1-step student beats the teacher's own 1-step Euler by far.

The teacher is the exact (oracle) velocity of the mixture under rectified flow; its reference is
its 32-step Heun sampler. The distance is the squared W2 between the student's samples and the
teacher's reference samples on 1000 shared noises (exact, by linear assignment). The teacher's
own 1-step Euler sample is the posterior mean at t = 1, i.e. every noise maps to the mixture
mean, so its W2² is the data's total variance.
"""

from __future__ import annotations

import copy

import pytest
import torch

from flowgen.distill import (
    ConsistencyDistillation,
    ConstantCurriculum,
    OneStepDistillation,
    ProgressiveDistillation,
    ReflowGenerator,
    generate_pairs,
)
from flowgen.metrics.distances import w2_squared
from flowgen.nn import MLP
from flowgen.paths import RectifiedFlow
from flowgen.samplers import sample
from flowgen.testing import GaussianMixture


def _setup():
    torch.manual_seed(0)
    mix = GaussianMixture(torch.ones(4), torch.tensor([[1.5, 1.5], [-1.5, 1.5], [1.5, -1.5], [-1.5, -1.5]]), 0.09)
    path = RectifiedFlow()
    teacher = mix.model(path, "velocity")
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(123))
    reference = sample(teacher, path, noise, prediction="velocity", method="heun", steps=32).samples
    euler1 = sample(teacher, path, noise, prediction="velocity", method="euler", steps=1).samples
    return mix, path, teacher, noise, reference, w2_squared(euler1, reference)


def test_reflow_pairs_and_one_step_distillation_beat_the_teachers_one_step_euler(tmp_path):
    mix, path, teacher, noise, reference, teacher_euler = _setup()
    pairs = generate_pairs(teacher, num=2048, batch_size=1024, shape=(2,), out_dir=tmp_path, method="heun", steps=16)
    net = MLP(2, hidden=64, depth=2)
    loss_fn = OneStepDistillation(path, "velocity")
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        idx = torch.randint(0, len(pairs), (256,), generator=g)
        loss = loss_fn(net, pairs.noise[idx], pairs.endpoint[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    gen = loss_fn.student_generator(net)
    assert isinstance(gen, ReflowGenerator) and gen.supported_steps == (1,)
    student = gen.sample(noise, steps=1)
    d_student = w2_squared(student, reference)
    assert d_student * 10 < teacher_euler, (d_student, teacher_euler)


@pytest.mark.slow
def test_consistency_distillation_one_step_beats_the_teachers_one_step_euler():
    mix, path, teacher, noise, reference, teacher_euler = _setup()
    cd = ConsistencyDistillation(teacher, solver="heun", curriculum=ConstantCurriculum(18, ema_decay=0.95))
    f = cd.consistency_function(MLP(2, hidden=64, depth=2))
    target = copy.deepcopy(f).requires_grad_(False)
    opt = torch.optim.Adam(f.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for k in range(2000):
        loss = cd(f, mix.sample(256, generator=g, dtype=torch.float32), target_net=target, step=k, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        cd.update_target(target, f, k)
    gen = cd.student_generator(f)
    d1 = w2_squared(gen.sample(noise, steps=1), reference)
    d2 = w2_squared(gen.sample(noise, steps=2, generator=torch.Generator().manual_seed(1)), reference)
    teacher_euler2 = w2_squared(sample(teacher, path, noise, prediction="velocity", method="euler", steps=2).samples, reference)
    assert d1 * 10 < teacher_euler, (d1, teacher_euler)
    assert d2 < teacher_euler2, (d2, teacher_euler2)


@pytest.mark.slow
def test_progressive_distillation_to_one_step_beats_the_teachers_one_step_euler():
    mix, path, teacher, noise, reference, teacher_euler = _setup()
    pd = ProgressiveDistillation(teacher, student_steps=8)
    net = MLP(2, hidden=64, depth=2)
    g = torch.Generator().manual_seed(0)
    while True:
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(400):
            loss = pd(net, mix.sample(256, generator=g, dtype=torch.float32), generator=g)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if pd.student_steps == 1:
            break
        pd.next_round(teacher=copy.deepcopy(net).requires_grad_(False))
    d1 = w2_squared(pd.student_generator(net).sample(noise, steps=1), reference)
    assert d1 * 4 < teacher_euler, (d1, teacher_euler)
