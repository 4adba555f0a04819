"""The distillers' training steps read no tensor values on the host under ``value_checks(False)``.

On a GPU every such read is a device synchronisation (``benchmarks/distill_step_overhead.py`` counted
49 per progressive step on an H200 before); the distillation modules train inside
``value_checks(False)`` on accelerators. Counted on the CPU, where the code makes the same reads.
"""

from __future__ import annotations

import pytest
import torch

from flowgen._validation import value_checks
from flowgen.distill import (
    ConsistencyDistillation,
    ConsistencyTraining,
    ConstantCurriculum,
    OneStepDistillation,
    ProgressiveDistillation,
    Reflow,
)
from flowgen.nn import UNet
from flowgen.paths import VP, RectifiedFlow
from flowgen.testing import HostReads



def _steps():
    torch.manual_seed(0)
    path = RectifiedFlow()

    def net():
        return UNet(in_channels=1, base_channels=8, channel_mults=[1, 2], num_classes=None)

    teacher, student = net().eval().requires_grad_(False), net()
    data = torch.randn(4, 1, 8, 8)
    noise, endpoint = torch.randn_like(data), torch.randn_like(data)
    g = torch.Generator().manual_seed(0)
    kw = dict(path=path, teacher_prediction="velocity")
    pd2 = ProgressiveDistillation(teacher, student_steps=8, **kw)
    pd4 = ProgressiveDistillation(teacher, student_steps=4, factor=4, **kw)
    cd = ConsistencyDistillation(teacher, curriculum=ConstantCurriculum(18, 0.95), spacing="uniform", **kw)
    cd_euler = ConsistencyDistillation(teacher, solver="euler", curriculum=ConstantCurriculum(10, 0.9), **kw)
    ct = ConsistencyTraining(path, total_steps=100)
    target = net().requires_grad_(False)
    rf, one = Reflow(path, "velocity"), OneStepDistillation(path, "velocity")
    return data, {
        "progressive": lambda d: pd2.loss(student, d, generator=g).loss,
        "progressive_k4": lambda d: pd4.loss(student, d, generator=g).loss,
        "consistency_heun": lambda d: cd.loss(cd.consistency_function(student), d,
                                              target_net=cd.consistency_function(target), generator=g).loss,
        "consistency_euler": lambda d: cd_euler.loss(cd_euler.consistency_function(student), d, generator=g).loss,
        "consistency_training": lambda d: ct.loss(ct.consistency_function(student), d, step=3, generator=g).loss,
        "reflow": lambda d: rf.loss(student, noise + 0 * d, endpoint, generator=g).loss,
        "one_step": lambda d: one.loss(student, noise + 0 * d, endpoint).loss,
    }


DATA, STEPS = _steps()


@pytest.mark.parametrize("name", sorted(STEPS))
def test_a_training_step_reads_nothing_on_the_host_without_value_checks(name):
    step = STEPS[name]
    with HostReads() as on:
        step(DATA).backward()
    assert on.count > 0  # the checks are on by default (and read values)
    with value_checks(False), HostReads() as off:
        loss = step(DATA)
        loss.backward()
    assert off.count == 0, dict(off.where)
    assert loss.shape == ()


@pytest.mark.parametrize("name", ["progressive", "consistency_heun", "one_step"])
def test_without_value_checks_bad_data_gives_a_non_finite_loss_not_a_silent_one(name):
    bad = DATA.clone()
    bad[1, 0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        STEPS[name](bad)
    with value_checks(False):
        loss = STEPS[name](bad)
    assert not bool(torch.isfinite(loss))  # the training module records it on the device and stops naming the step


def test_value_checks_nest_and_restore():
    from flowgen._validation import check_finite, checks_values

    nan = torch.tensor([float("nan")])
    assert checks_values()
    with value_checks(False):
        assert check_finite(nan, "x") is nan and not checks_values()
        with value_checks(True):
            with pytest.raises(ValueError, match="x holds 1 non-finite"):
                check_finite(nan, "x")
        assert not checks_values()
    assert checks_values()
    with pytest.raises(ValueError):
        check_finite(nan, "x")


def test_times_out_of_order_are_still_refused_with_checks_on():
    from flowgen.distill import progressive_target

    path = VP()
    x = torch.randn(3, 2)
    t = torch.full((3,), 0.5)
    with pytest.raises(ValueError, match="t > t_mid > t_next"):
        progressive_target(lambda a, b: a, x_t=x, t=t, t_mid=t, t_next=t * 0, path=path, teacher_prediction="noise",
                           student_prediction="noise")
