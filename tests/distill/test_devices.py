"""The distillers on the --device of the run (CPU by default, CUDA with --device cuda): same numbers as on the CPU."""

from __future__ import annotations

import pytest
import torch

from flowgen.distill import (
    ConsistencyDistillation,
    ConstantCurriculum,
    ProgressiveDistillation,
    consistency_function,
    consistency_sample,
    generate_pairs,
    progressive_target,
)
from flowgen.nn import MLP
from flowgen.paths import VP, Cosine, RectifiedFlow

from _distill_helpers import F64, RandomLinearTeacher


def test_progressive_target_and_loss_on_device(device):
    path = Cosine()
    teacher = RandomLinearTeacher(3, seed=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g, dtype=F64)
    t, t_mid, t_next = torch.full((8,), 0.8, dtype=F64), torch.full((8,), 0.5, dtype=F64), torch.full((8,), 0.2, dtype=F64)
    kw = dict(t=t, t_mid=t_mid, t_next=t_next, path=path, teacher_prediction="noise", student_prediction="v")
    cpu = progressive_target(teacher, x_t=x, **kw)
    dev = progressive_target(teacher.to(device), x_t=x.to(device), **{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in kw.items()})
    torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-12, atol=1e-12)
    pd = ProgressiveDistillation(teacher, path=path, teacher_prediction="noise", student_steps=4, t_max=0.99)
    student = RandomLinearTeacher(3, seed=5).to(device)
    out = pd.loss(student, x.to(device), generator=torch.Generator().manual_seed(1))
    assert out.per_sample.device.type == torch.device(device).type and bool(torch.isfinite(out.loss))
    # k = 4 teacher steps per student step: the same per-sample losses as on the CPU
    def k4(tch):
        return ProgressiveDistillation(tch, path=path, teacher_prediction="noise", student_steps=2, t_max=0.99, factor=4)

    cpu4 = k4(RandomLinearTeacher(3, seed=2)).loss(RandomLinearTeacher(3, seed=5), x, generator=torch.Generator().manual_seed(1))
    dev4 = k4(teacher).loss(student, x.to(device), generator=torch.Generator().manual_seed(1))
    cpu4, dev4 = cpu4.per_sample, dev4.per_sample
    torch.testing.assert_close(dev4.cpu(), cpu4, rtol=1e-10, atol=1e-12)


def test_consistency_distillation_and_sampling_on_device(device):
    path = VP()
    teacher = RandomLinearTeacher(2, seed=3).to(device)
    cd = ConsistencyDistillation(teacher, path=path, teacher_prediction="noise", curriculum=ConstantCurriculum(10, 0.0))
    torch.manual_seed(0)
    f = cd.consistency_function(MLP(2, hidden=16, depth=2).double().to(device))
    data = torch.randn(16, 2, dtype=F64, device=device)
    out = cd.loss(f, data, generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    assert out.per_sample.device.type == torch.device(device).type
    assert all(p.grad is not None for p in f.parameters())
    noise = torch.randn(5, 2, dtype=F64, device=device)
    x = consistency_sample(f, path, noise, times=[1.0, 0.5], generator=torch.Generator().manual_seed(2))
    assert x.device == noise.device and bool(torch.isfinite(x).all())
    g = consistency_function(MLP(2, hidden=8, depth=1).to(device), path)
    y = torch.randn(3, 2, device=device)
    assert torch.equal(g(y, torch.full((3,), path.t_min, device=device)), y)


def test_pairs_generated_on_device_equal_the_cpu_pairs(device, tmp_path):
    teacher = RandomLinearTeacher(2, seed=4)
    kw = dict(path=RectifiedFlow(), prediction="velocity", num=20, batch_size=8, shape=(2,), method="euler", steps=4, dtype=F64)
    cpu = generate_pairs(teacher, out_dir=tmp_path / "cpu", **kw)
    dev = generate_pairs(teacher.to(device), out_dir=tmp_path / "dev", device=device, **kw)
    assert torch.equal(dev.noise, cpu.noise) and dev.endpoint.device.type == "cpu"
    torch.testing.assert_close(dev.endpoint, cpu.endpoint, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_shared_dropout_masks_on_cuda():
    from test_consistency import test_paired_passes_share_dropout_masks

    test_paired_passes_share_dropout_masks(torch.device("cuda"))
