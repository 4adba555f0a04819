"""A CPU generator drives draws for tensors on any device, with the same numbers everywhere."""

import torch

from flowgen._random import rand, randint, randn
from flowgen.objectives import flow_matching, rectified_flow
from flowgen.paths import VP
from flowgen.samplers import sample


def test_draws_follow_the_generator_then_move(device):
    for fn, kw in ((randn, {"dtype": torch.float16}), (rand, {"dtype": torch.float64})):
        got = fn((5, 3), generator=torch.Generator().manual_seed(0), device=device, **kw)
        want = fn((5, 3), generator=torch.Generator().manual_seed(0), **kw)
        assert got.device.type == torch.device(device).type and got.dtype == kw["dtype"]
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)
    ints = randint(7, (50,), generator=torch.Generator().manual_seed(1), device=device)
    assert ints.device.type == torch.device(device).type and int(ints.min()) >= 0 and int(ints.max()) < 7


def test_objectives_and_stochastic_samplers_accept_a_cpu_generator_on_any_device(device):
    net_cpu = torch.nn.Linear(3, 2).double()
    net_dev = torch.nn.Linear(3, 2).double().to(device)
    net_dev.load_state_dict(net_cpu.state_dict())

    def model(net):
        return lambda x, t: net(torch.cat([x, t[:, None].to(x.dtype)], 1))

    data = torch.randn(64, 2, dtype=torch.float64)
    objective = rectified_flow()
    cpu = objective(model(net_cpu), data, generator=torch.Generator().manual_seed(3))
    dev = objective(model(net_dev), data.to(device), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-6, atol=1e-9)
    # Sinkhorn solves in float32 on accelerators (float64 on the CPU), so its partner draws may differ there
    ot = flow_matching(coupling="sinkhorn")(model(net_dev), data.to(device), generator=torch.Generator().manual_seed(3))
    assert ot.device.type == torch.device(device).type and bool(torch.isfinite(ot))
    noise = torch.randn(16, 2, dtype=torch.float64)
    kw = dict(prediction="v", method="ddpm", steps=8)
    cpu = sample(model(net_cpu), VP(), noise, generator=torch.Generator().manual_seed(4), **kw).samples
    dev = sample(model(net_dev), VP(), noise.to(device), generator=torch.Generator().manual_seed(4), **kw).samples
    torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-6, atol=1e-9)
