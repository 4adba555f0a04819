"""Student generators: one protocol, supported steps enforced, metadata round trip as plain data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from flowgen.distill import (
    ConsistencyGenerator,
    ConsistencyTraining,
    Generator,
    ProgressiveDistillation,
    ProgressiveGenerator,
    ReflowGenerator,
    consistency_function,
    consistency_sample,
    generator_from_metadata,
)
from flowgen.nn import MLP
from flowgen.paths import Cosine, RectifiedFlow
from flowgen.preconditioning import BoundaryConditioned
from flowgen.samplers import sample
from flowgen.testing import GaussianData

from _distill_helpers import F64, RandomLinearTeacher


def _roundtrip(gen: Generator, model) -> Generator:
    meta = json.loads(json.dumps(gen.to_metadata()))
    return generator_from_metadata(model, meta)


def test_progressive_generator_is_ddim_on_its_grid_and_round_trips():
    path = Cosine()
    teacher = RandomLinearTeacher(2, seed=1)
    pd = ProgressiveDistillation(teacher, path=path, teacher_prediction="v", student_steps=4, t_max=0.999)
    gen = pd.student_generator(teacher)
    assert isinstance(gen, ProgressiveGenerator) and gen.supported_steps == (4,)
    noise = torch.randn(5, 2, dtype=F64)
    want = sample(teacher, path, noise, prediction="v", method="ddim", grid=pd.student_grid).samples
    assert torch.equal(gen.sample(noise, steps=4), want)
    assert torch.equal(gen.sample(noise), want)  # default = the only supported count
    assert torch.equal(_roundtrip(gen, teacher).sample(noise, steps=4), want)
    meta = gen.to_metadata()
    assert meta["generator"] == "progressive" and meta["method"] == "ddim" and meta["prediction"] == "v"
    assert meta["path"] == {"name": "Cosine"} and meta["supported_steps"] == [4] and len(meta["grid"]) == 5
    with pytest.raises(ValueError, match=r"steps=2 is not supported.*supported steps: \[4\]"):
        gen.sample(noise, steps=2)


def test_consistency_generator_one_and_multistep_and_rewraps_a_raw_net():
    path = RectifiedFlow()
    net = MLP(2, hidden=16, depth=2)
    ct = ConsistencyTraining(path, total_steps=100)
    f = ct.consistency_function(net)
    gen = ct.student_generator(f)
    assert isinstance(gen, ConsistencyGenerator) and gen.supported_steps == (1, 2, 3, 4)
    noise = torch.randn(6, 2)
    t_max = torch.full((6,), ct.t_max)
    one = gen.sample(noise, steps=1)
    assert torch.equal(one, f(float(path.sigma(t_max[:1].double())[0]) * noise, t_max))
    two = gen.sample(noise, steps=2, generator=torch.Generator().manual_seed(0))
    ref = consistency_sample(f, path, noise, times=gen.step_times[2], generator=torch.Generator().manual_seed(0))
    assert torch.equal(two, ref) and gen.step_times[2][0] == ct.t_max
    again = _roundtrip(gen, net)  # a raw network is wrapped with the stored t_min and sigma_data
    assert isinstance(again.model, BoundaryConditioned) and again.model.t_min == ct.t_min
    assert torch.equal(again.sample(noise, steps=1), one)
    assert torch.equal(again.sample(noise, steps=2, generator=torch.Generator().manual_seed(0)), two)
    with pytest.raises(ValueError, match=r"supported steps: \[1, 2, 3, 4\]"):
        gen.sample(noise, steps=8)
    custom = ConsistencyGenerator(f, path, t_max=0.9, step_times={2: [0.9, 0.4]})
    assert custom.supported_steps == (2,) and custom.default_steps == 2
    with pytest.raises(ValueError, match="must hold 3 times"):
        ConsistencyGenerator(f, path, t_max=0.9, step_times={3: [0.9, 0.4]})


def test_consistency_generator_default_times_follow_its_spacing_and_round_trip():
    path = RectifiedFlow()
    net = MLP(2, hidden=16, depth=2)
    ct = ConsistencyTraining(path, total_steps=100, t_min=0.002, t_max=0.98, spacing="uniform")
    gen = ct.student_generator(ct.consistency_function(net))
    assert gen.spacing == "uniform"
    for k in (1, 2, 4):
        assert gen.step_times[k] == pytest.approx(torch.linspace(0.98, 0.002, k + 1, dtype=F64)[:-1].tolist(), abs=1e-12)
    meta = json.loads(json.dumps(gen.to_metadata()))
    assert meta["spacing"] == "uniform"
    again = generator_from_metadata(net, meta)
    assert again.spacing == "uniform" and again.step_times == gen.step_times
    del meta["spacing"]  # metadata written before spacing existed: the rho-schedule
    assert generator_from_metadata(net, meta).spacing == "karras"


def test_a_hand_built_consistency_generator_defaults_to_the_distillers_spacing_for_its_path():
    f_rf = consistency_function(MLP(2, hidden=8, depth=1), RectifiedFlow())
    rf = ConsistencyGenerator(f_rf, RectifiedFlow(), t_max=0.98)
    assert rf.spacing == "uniform"  # as ConsistencyDistillation trains on a rectified-flow path
    assert rf.step_times[2] == pytest.approx([0.98, 0.98 / 2 + rf.t_min / 2], abs=1e-12)
    f_cos = consistency_function(MLP(2, hidden=8, depth=1), Cosine())
    cos = ConsistencyGenerator(f_cos, Cosine(), t_max=0.98)
    assert cos.spacing == "karras" and cos.step_times[2][1] < 0.49  # the rho-schedule crowds the small times
    explicit = ConsistencyGenerator(f_rf, RectifiedFlow(), t_max=0.98, spacing="karras")
    assert explicit.spacing == "karras" and explicit.step_times[2] != rf.step_times[2]


def test_reflow_generator_is_euler_with_any_steps():
    path = RectifiedFlow()
    gauss = GaussianData.random(2, generator=torch.Generator().manual_seed(2))
    model = gauss.model(path, "velocity")
    gen = ReflowGenerator(model, path, "velocity")
    assert gen.supported_steps is None and gen.default_steps == 1
    noise = torch.randn(4, 2, dtype=F64)
    for k in (1, 3, 7):
        want = sample(model, path, noise, prediction="velocity", method="euler", steps=k).samples
        assert torch.equal(gen.sample(noise, steps=k), want)
    assert torch.equal(_roundtrip(gen, model).sample(noise, steps=3), gen.sample(noise, steps=3))
    limited = ReflowGenerator(model, path, supported_steps=[2, 1])
    assert limited.supported_steps == (1, 2)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="steps must be any integer >= 1"):
            gen.sample(noise, steps=bad)


def test_generators_check_noise_and_metadata():
    path = RectifiedFlow()
    gen = ReflowGenerator(lambda x, t: x, path, event_shape=(2,))
    with pytest.raises(ValueError, match="per-sample shape"):
        gen.sample(torch.randn(3, 4))
    with pytest.raises(ValueError, match="event dimension"):
        gen.sample(torch.randn(3))
    meta = gen.to_metadata()
    for key in ("path", "prediction", "generator"):
        broken = dict(meta)
        broken.pop(key)
        with pytest.raises(ValueError, match=f"lacks {key}"):
            generator_from_metadata(lambda x, t: x, broken)
    with pytest.raises(ValueError, match="unknown generator kind"):
        generator_from_metadata(lambda x, t: x, {**meta, "generator": "gan"})
    with pytest.raises(TypeError, match="callable"):
        ReflowGenerator("not a model", path)


def test_sampling_leaves_the_model_in_training_mode_and_records_no_graph():
    path = RectifiedFlow()
    net = MLP(2, hidden=8, depth=1)
    f = consistency_function(net, path)
    gen = ConsistencyGenerator(f, path, t_max=0.95)
    f.train()
    out = gen.sample(torch.randn(3, 2), steps=2)
    assert f.training and not out.requires_grad


def test_the_distillation_core_does_not_import_lightning():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'lightning' or name.startswith('lightning.') or name.startswith('pytorch_lightning'):\n"
        "            raise ImportError('lightning is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import flowgen.distill\n"
        "assert 'lightning' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
