"""Models: the ``model(x_t, t[, cond])`` contract, null class, dtypes, gradients, image sizes."""

import pytest
import torch

from flowgen.nn import DiT, MLP, ClassEmbedding, FourierEmbedding, SinusoidalEmbedding, UNet, drop_labels


def small_models(num_classes=None):
    return {
        "mlp": (MLP(3, hidden=32, depth=2, num_classes=num_classes, time_embed_dim=16), (3,)),
        "unet": (UNet(1, 16, (1, 2), num_classes=num_classes, attention_levels=(1,)), (1, 8, 8)),
        "dit": (DiT(2, patch_size=2, hidden=32, depth=2, heads=2, num_classes=num_classes), (2, 8, 8)),
    }


def _perturb(model):
    # zero-initialised output layers make an untrained model constant 0; give them weights so
    # dependence on inputs can be tested.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("name", ["mlp", "unet", "dit"])
def test_shapes_dtype_and_gradients(name, device):
    model, shape = small_models()[name]
    model = _perturb(model).to(device)
    x = torch.randn(4, *shape, device=device, requires_grad=True)
    t = torch.rand(4, device=device)
    out = model(x, t)
    assert out.shape == x.shape and out.dtype == x.dtype
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["mlp", "unet", "dit"])
def test_float64(name):
    model, shape = small_models(num_classes=4)[name]
    model = _perturb(model).double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    out = model(x, torch.rand(3, dtype=torch.float64), torch.tensor([0, 3, 4]))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    # float64 and float32 agree to float32 accuracy
    t = torch.rand(3, dtype=torch.float64)
    out64 = model(x, t, torch.tensor([0, 3, 4]))
    out32 = model.float()(x.float(), t.float(), torch.tensor([0, 3, 4]))
    torch.testing.assert_close(out32.double(), out64, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "unet", "dit"])
def test_conditioning_and_null_class(name):
    model, shape = small_models(num_classes=5)[name]
    model = _perturb(model).eval()
    assert model.null_class == 5
    x = torch.randn(2, *shape)
    t = torch.full((2,), 0.3)
    a = model(x, t, torch.tensor([0, 0]))
    b = model(x, t, torch.tensor([1, 1]))
    null = model(x, t, torch.tensor([5, 5]))
    none = model(x, t)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(none, null)
    # per-sample conditioning: sample i only sees its own label
    mixed = model(x, t, torch.tensor([0, 1]))
    torch.testing.assert_close(mixed[0], a[0])
    torch.testing.assert_close(mixed[1], b[1])


@pytest.mark.parametrize("name", ["mlp", "unet", "dit"])
def test_depends_on_time(name):
    model, shape = small_models()[name]
    model = _perturb(model)
    x = torch.randn(2, *shape)
    assert not torch.allclose(model(x, torch.zeros(2)), model(x, torch.ones(2)))
    # other real inputs (log σ, log-SNR) are accepted and finite
    assert torch.isfinite(model(x, torch.tensor([-7.5, 12.0]))).all()


@pytest.mark.parametrize("name", ["mlp", "unet", "dit"])
def test_bad_inputs(name):
    model, shape = small_models(num_classes=3)[name]
    x = torch.randn(2, *shape)
    with pytest.raises(ValueError, match="t must have shape"):
        model(x, torch.rand(3))
    with pytest.raises(ValueError, match="t must have shape"):
        model(x, torch.tensor(0.5))
    with pytest.raises(TypeError, match="x_t"):
        model(x.long(), torch.rand(2))
    with pytest.raises(TypeError, match="cond"):
        model(x, torch.rand(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="cond"):
        model(x, torch.rand(2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"cond must hold class indices in \[0, 3\]"):
        model(x, torch.rand(2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="class indices"):
        model(x, torch.rand(2), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="NaN"):
        model(x, torch.tensor([0.5, float("nan")]))
    uncond, _ = small_models()[name]
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, torch.rand(2), torch.tensor([0, 1]))


def test_mlp_wrong_dim():
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        MLP(2)(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match="depth"):
        MLP(2, depth=0)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_unet_sizes(size):
    mults = (1, 2) if size == 8 else (1, 2, 2)
    model = UNet(3, 16, mults, num_classes=10)
    x = torch.randn(2, 3, size, size)
    out = model(x, torch.rand(2), torch.tensor([3, 10]))
    assert out.shape == x.shape
    # rectangular images work too
    assert model(torch.randn(1, 3, size, 2 * size), torch.rand(1)).shape == (1, 3, size, 2 * size)


@pytest.mark.slow
def test_unet_64():
    model = UNet(3, 32, (1, 2, 2, 2), attention_levels=(2,))
    x = torch.randn(2, 3, 64, 64)
    out = model(x, torch.rand(2))
    assert out.shape == x.shape
    out.sum().backward()


def test_unet_indivisible_size():
    with pytest.raises(ValueError, match="divisible by 4"):
        UNet(1, 16, (1, 2, 2))(torch.randn(1, 1, 10, 10), torch.rand(1))
    with pytest.raises(ValueError, match="channel"):
        UNet(1, 16, (1, 2))(torch.randn(1, 3, 8, 8), torch.rand(1))


def test_dit_sizes():
    model = DiT(1, patch_size=4, hidden=32, depth=1, heads=4)
    for h, w in [(8, 8), (16, 32)]:
        assert model(torch.randn(2, 1, h, w), torch.rand(2)).shape == (2, 1, h, w)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 1, 6, 8), torch.rand(1))


def test_dit_patches_are_local_at_init_without_attention():
    # with zero-initialised adaLN gates every block is the identity, so output patch (i, j)
    # depends only on input patch (i, j): checks patchify/unpatchify are mutual inverses.
    model = DiT(1, patch_size=2, hidden=16, depth=1, heads=2)
    with torch.no_grad():
        torch.nn.init.normal_(model.out.weight)
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    model(x, torch.rand(1))[0, 0, 2, 5].backward()
    nz = x.grad[0, 0].abs() > 0
    assert nz[2:4, 4:6].all() and nz.sum() == 4


def test_untrained_image_models_predict_zero():
    for model in (UNet(1, 16, (1, 2)), DiT(1, 2, 16, 1, 2)):
        assert model(torch.randn(2, 1, 8, 8), torch.rand(2)).abs().max() == 0


def test_embeddings():
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    for emb in (SinusoidalEmbedding(9), FourierEmbedding(8, generator=torch.Generator().manual_seed(0))):
        out = emb(t)
        assert out.shape == (7, emb.dim) and out.dtype == torch.float64
        assert torch.isfinite(emb(torch.tensor([-20.0, 50.0]))).all()
        # distinct times give distinct codes
        assert torch.cdist(out, out).add(torch.eye(7, dtype=out.dtype)).min() > 1e-3
    s = SinusoidalEmbedding(4, scale=1.0, max_period=100.0)
    x = torch.tensor([0.7])
    torch.testing.assert_close(s(x), torch.tensor([[torch.cos(x), torch.cos(x / 10), torch.sin(x), torch.sin(x / 10)]]).squeeze(0)[None].reshape(1, 4))
    with pytest.raises(ValueError, match="shape"):
        SinusoidalEmbedding(4)(torch.rand(2, 1))
    # Fourier frequencies live in the state dict
    f = FourierEmbedding(8)
    g = FourierEmbedding(8)
    g.load_state_dict(f.state_dict())
    torch.testing.assert_close(f(t.float()), g(t.float()))


def test_class_embedding_and_drop_labels():
    emb = ClassEmbedding(3, 4)
    assert emb.null_class == 3 and emb.embedding.num_embeddings == 4
    cond = torch.arange(1000) % 3
    gen = torch.Generator().manual_seed(0)
    dropped = drop_labels(cond, p=0.25, null_class=3, generator=gen)
    frac = (dropped == 3).float().mean().item()
    assert 0.2 < frac < 0.3
    kept = dropped != 3
    assert torch.equal(dropped[kept], cond[kept])
    assert torch.equal(drop_labels(cond, p=0.0, null_class=3), cond)
    assert (drop_labels(cond, p=1.0, null_class=3) == 3).all()
    with pytest.raises(ValueError, match="p must"):
        drop_labels(cond, p=1.5, null_class=3)


@pytest.mark.parametrize("name", ["mlp", "unet", "dit"])
def test_bf16_autocast(name):
    model, shape = small_models(num_classes=3)[name]
    model = _perturb(model)
    x = torch.randn(2, *shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, torch.rand(2), torch.tensor([0, 3]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_packages_import_without_lightning():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['lightning'] = None; sys.modules['pytorch_lightning'] = None\n"
        "import flowgen.nn, flowgen.data, flowgen.metrics\n"
        "assert not any(m.split('.')[0] in ('lightning', 'pytorch_lightning') and sys.modules[m] is not None for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
