"""The functional loss: exactly zero at the target, weighting laws, Bayes-optimality of the oracle."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowgen.objectives import (
    EDMWeight,
    MinSNRWeight,
    SNRWeight,
    UniformWeight,
    prediction_loss,
    prediction_target,
    pseudo_huber,
    squared_l2,
)
from flowgen.parameterization import Prediction, from_data_noise, prediction_error_scale
from flowgen.paths import EDM, VP, AffinePath, Cosine, DiscreteDDPM, RectifiedFlow
from flowgen.testing import GaussianData
from flowgen.testing import strategies as fst

F64 = torch.float64
# the heaviest property tests run half the profile's examples (each example makes dozens of oracle/loss calls)
HALF = settings(max_examples=max(5, settings().max_examples // 2))
FAMILIES = sorted(fst.PATH_FAMILIES)
WEIGHTINGS = [UniformWeight(), SNRWeight(), MinSNRWeight(5.0), EDMWeight(0.5)]


def _bshape(c, x):
    return c.reshape(-1, *([1] * (x.dim() - 1)))


@HALF
@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_loss_is_exactly_zero_at_the_true_target(family, data):
    path = data.draw(fst.PATH_FAMILIES[family](), label="path")
    case = data.draw(fst.path_cases(st.just(path)), label="case")
    for prediction in Prediction:
        target = prediction_target(data=case.data, noise=case.noise, t=case.t, path=path, prediction=prediction)
        assert target.dtype == case.data.dtype and target.shape == case.data.shape
        for weighting in WEIGHTINGS:
            for metric in ("l2", "pseudo_huber"):
                loss = prediction_loss(target, data=case.data, noise=case.noise, t=case.t, path=path,
                                       prediction=prediction, weighting=weighting, metric=metric)
                assert loss.shape == case.t.shape and loss.dtype == case.data.dtype
                assert torch.equal(loss, torch.zeros_like(loss)), (prediction, weighting, metric, loss)


@HALF
@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_loss_value_is_the_weighted_mean_squared_error(family, data):
    path = data.draw(fst.PATH_FAMILIES[family](), label="path")
    case = data.draw(fst.path_cases(st.just(path), dtype=F64, margin=1e-2), label="case")
    pred = data.draw(fst.tensors(case.data.shape), label="pred")
    a, s = path.alpha(case.t), path.sigma(case.t)
    snr = (a / s) ** 2
    for prediction in Prediction:
        target = from_data_noise(data=case.data, noise=case.noise, dst=prediction, t=case.t, path=path)
        mse = (pred - target).reshape(pred.shape[0], -1).pow(2).mean(1)
        got = prediction_loss(pred, data=case.data, noise=case.noise, t=case.t, path=path, prediction=prediction)
        torch.testing.assert_close(got, mse, rtol=1e-12, atol=0)
        got = prediction_loss(pred, data=case.data, noise=case.noise, t=case.t, path=path, prediction=prediction, weighting="min_snr")
        torch.testing.assert_close(got, torch.clamp(snr, max=5.0) / prediction_error_scale(path, case.t, prediction) * mse, rtol=1e-10, atol=0)
        ph = (pred - target).reshape(pred.shape[0], -1).pow(2).sum(1)
        c = 0.00054 * math.sqrt(pred[0].numel())
        got = prediction_loss(pred, data=case.data, noise=case.noise, t=case.t, path=path, prediction=prediction, metric="pseudo_huber")
        torch.testing.assert_close(got, torch.sqrt(ph + c * c) - c, rtol=1e-10, atol=1e-15)


@given(fst.paths(), st.data())
def test_weighting_laws(path, data):
    """Min-SNR-γ (Hang et al. 2023): ε → min(SNR,γ)/SNR, x0 → min(SNR,γ), v on VP → min(SNR,γ)/(SNR+1)."""
    t = data.draw(fst.times(path, 6, margin=1e-2, dtype=F64), label="t")
    gamma = data.draw(st.floats(0.5, 20.0), label="gamma")
    a, s = path.alpha(t), path.sigma(t)
    snr = (a / s) ** 2
    w = MinSNRWeight(gamma)
    clamped = torch.clamp(snr, max=gamma)
    torch.testing.assert_close(w(path, t, Prediction.NOISE), clamped / snr)
    torch.testing.assert_close(w(path, t, Prediction.DATA), clamped)
    torch.testing.assert_close(w(path, t, Prediction.V), clamped * s**2 / (a**2 + s**2) ** 2)
    if isinstance(path, (Cosine, VP, DiscreteDDPM)):  # variance preserving: α² + σ² = 1
        torch.testing.assert_close(w(path, t, Prediction.V), clamped / (snr + 1))
    torch.testing.assert_close(SNRWeight()(path, t, Prediction.NOISE), torch.ones_like(t))
    torch.testing.assert_close(SNRWeight()(path, t, Prediction.DATA), snr)
    torch.testing.assert_close(UniformWeight()(path, t, Prediction.VELOCITY), torch.ones_like(t))
    sd = data.draw(st.floats(0.1, 2.0), label="sigma_data")
    s_ve = s / a
    torch.testing.assert_close(EDMWeight(sd)(path, t, Prediction.DATA), (s_ve**2 + sd**2) / (s_ve * sd) ** 2)
    for weighting in WEIGHTINGS:
        for p in Prediction:
            out = weighting(path, t, p)
            assert out.shape == t.shape and torch.isfinite(out).all() and (out > 0).all()
            assert weighting(path, t.float(), p).dtype == torch.float32


def test_weighting_laws_named_edm_case():
    """On the EDM path with data prediction EDMWeight is Karras et al.'s λ(σ) = (σ² + σ_d²)/(σ σ_d)²."""
    path = EDM()
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=F64)
    t = path.t_from_sigma(sigma)
    torch.testing.assert_close(EDMWeight(0.5)(path, t, "data"), (sigma**2 + 0.25) / (sigma * 0.5) ** 2)


@pytest.mark.parametrize(
    "path",
    [RectifiedFlow(), RectifiedFlow(sigma_min=0.05), Cosine(), VP(), DiscreteDDPM.cosine(), EDM(),
     AffinePath(alpha=lambda t: 1 - t**2, sigma=lambda t: t)],
    ids=["RF", "RF-sigma_min", "Cosine", "VP", "DDPM-cosine", "EDM", "AffinePath"],
)
def test_oracle_is_the_minimiser_of_the_expected_loss(path):
    """E[(p*(x_t, t) − target)·h(x_t, t)] = 0 for any h: zero gradient at the oracle, and any perturbation costs."""
    g = torch.Generator().manual_seed(0)
    oracle = GaussianData.random(2, generator=g)
    wrong = GaussianData(oracle.mean + 1.0, oracle.cov)  # the Bayes predictor of different data
    n = 2000  # below torch's parallel grain for exp/sqrt: thread start-up costs ~10 ms per op on a busy 2-core box
    x0 = oracle.sample(n, generator=g)
    noise = torch.randn(n, 2, generator=g, dtype=F64)
    lo, hi = max(path.t_min, 0.05), min(path.t_max, 0.95)
    t = lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64)
    x_t = path.sample(data=x0, noise=noise, t=t).x_t
    w = torch.randn(2, 2, generator=g, dtype=F64)
    h = torch.tanh(x_t @ w + t[:, None])  # a perturbation direction that depends on (x_t, t)
    for prediction in Prediction:
        kw = dict(data=x0, noise=noise, t=t, path=path, prediction=prediction)
        best = oracle.predict(x_t, t, path, prediction)
        delta = torch.zeros((), dtype=F64, requires_grad=True)
        per_sample = prediction_loss(best + delta * h, **kw)
        (grad,) = torch.autograd.grad(per_sample.mean(), delta)
        target = prediction_target(data=x0, noise=noise, t=t, path=path, prediction=prediction)
        per_grad = 2 * ((best - target) * h).mean(1)  # d loss_i / d delta at 0
        stderr = per_grad.std() / math.sqrt(n)
        torch.testing.assert_close(grad, per_grad.mean())
        assert grad.abs() < 4 * stderr, (prediction, grad, stderr)
        base = per_sample.mean().detach()
        # the excess loss is 2δ·mean((p* − target)h) + δ²·mean(h²): with |first mean| < 4·stderr it is
        # positive once δ > 8·stderr/mean(h²); noisy targets (v at σ = 80 on EDM) need a larger step
        size = 0.2 + 20 * float(stderr) / float(h.pow(2).mean())
        for step in (size, -size):
            assert prediction_loss(best + step * h, **kw).mean() > base, (prediction, step)
        # the test has power: the Bayes predictor of other data has a clearly non-zero gradient
        bad = wrong.predict(x_t, t, path, prediction)
        bad_grad = 2 * ((bad - target) * (bad - best)).mean(1)
        assert bad_grad.mean() > 4 * bad_grad.std() / math.sqrt(n), prediction


def test_degenerate_cases():
    path = RectifiedFlow()
    # batch of one, scalar data (B,), t at both ends, where the targets are finite
    for shape in [(1,), (1, 1), (3,), (2, 1, 1, 1)]:
        x0 = torch.randn(shape, dtype=F64)
        noise = torch.randn(shape, dtype=F64)
        t = torch.tensor([0.0, 1.0, 0.5], dtype=F64)[: shape[0]] if shape[0] > 1 else torch.tensor([1.0], dtype=F64)
        for prediction in (Prediction.DATA, Prediction.NOISE, Prediction.VELOCITY, Prediction.V):
            target = prediction_target(data=x0, noise=noise, t=t, path=path, prediction=prediction)
            loss = prediction_loss(target, data=x0, noise=noise, t=t, path=path, prediction=prediction)
            assert loss.shape == (shape[0],) and torch.equal(loss, torch.zeros_like(loss))
    # an empty batch gives an empty loss
    empty = torch.zeros(0, 3)
    loss = prediction_loss(empty, data=empty, noise=empty, t=torch.zeros(0), path=path, prediction="velocity")
    assert loss.shape == (0,)
    # zero data and zero noise at t where σ = 0: x_t = 0 and the loss of predicting 0 is 0
    z = torch.zeros(2, 3)
    assert torch.equal(prediction_loss(z, data=z, noise=z, t=torch.zeros(2), path=Cosine(), prediction="data"), torch.zeros(2))


@given(fst.batch_shapes(), st.floats(1e-8, 1e3), st.sampled_from([torch.float32, F64]))
def test_metrics(shape, c, dtype):
    diff = torch.randn(shape, dtype=dtype)
    assert torch.equal(pseudo_huber(torch.zeros(shape, dtype=dtype), c), torch.zeros(shape[0], dtype=dtype))
    assert torch.equal(squared_l2(torch.zeros(shape, dtype=dtype)), torch.zeros(shape[0], dtype=dtype))
    norm2 = diff.double().reshape(diff.shape[0], -1).pow(2).sum(1)
    torch.testing.assert_close(pseudo_huber(diff, c).double(), torch.sqrt(norm2 + c * c) - c, rtol=1e-4 if dtype != F64 else 1e-10, atol=1e-6)
    assert (pseudo_huber(diff, c) >= 0).all()
    torch.testing.assert_close(squared_l2(diff).double(), norm2 / diff[0].numel(), rtol=1e-5, atol=1e-7)
    # c = 0 is the plain norm, 0 at 0
    torch.testing.assert_close(pseudo_huber(diff, 0.0).double(), norm2.sqrt(), rtol=1e-5, atol=1e-7)
    assert torch.equal(pseudo_huber(torch.zeros(shape, dtype=dtype), 0.0), torch.zeros(shape[0], dtype=dtype))


def test_dtypes():
    path = Cosine()
    for dtype in (torch.float32, F64):
        x = torch.randn(4, 3, dtype=dtype)
        t = torch.rand(4, dtype=dtype) * 0.9 + 0.05
        for weighting in WEIGHTINGS:
            loss = prediction_loss(x, data=x, noise=x, t=t, path=path, prediction="v", weighting=weighting)
            assert loss.dtype == dtype


def test_functional_bad_input_names_the_argument():
    x, t, path = torch.zeros(3, 2), torch.full((3,), 0.5), Cosine()
    kw = dict(data=x, noise=x, t=t, path=path, prediction="noise")
    with pytest.raises(ValueError, match=r"pred has shape \(3, 3\) but data has shape \(3, 2\)"):
        prediction_loss(torch.zeros(3, 3), **kw)
    with pytest.raises(ValueError, match=r"data has shape \(3, 2\) but noise has shape \(3, 1\)"):
        prediction_loss(x, **{**kw, "noise": torch.zeros(3, 1)})
    with pytest.raises(ValueError, match=r"t has batch size 2 but the data has batch size 3"):
        prediction_loss(x, **{**kw, "t": t[:2]})
    with pytest.raises(ValueError, match=r"t must lie in"):
        prediction_loss(x, **{**kw, "t": -t})
    with pytest.raises(ValueError, match=r"t holds 1 non-finite"):
        prediction_loss(x, **{**kw, "t": torch.tensor([0.5, math.inf, 0.5])})
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        prediction_loss(x, **{**kw, "t": t[None]})
    with pytest.raises(ValueError, match=r"unknown prediction 'eps2'"):
        prediction_loss(x, **{**kw, "prediction": "eps2"})
    with pytest.raises(TypeError, match=r"path must be a flowgen Path"):
        prediction_loss(x, **{**kw, "path": None})
    with pytest.raises(ValueError, match=r"unknown weighting 'snr2'"):
        prediction_loss(x, **kw, weighting="snr2")
    with pytest.raises(ValueError, match=r"unknown metric 'l3'"):
        prediction_loss(x, **kw, metric="l3")
    with pytest.raises(TypeError, match=r"pred must be a torch.Tensor"):
        prediction_loss(x.tolist(), **kw)
    with pytest.raises(TypeError):  # keyword-only: data and noise cannot be swapped by position
        prediction_loss(x, x, x, t, path, "noise")
    with pytest.raises(ValueError, match=r"gamma must be a finite number > 0"):
        MinSNRWeight(0.0)
    with pytest.raises(ValueError, match=r"sigma_data must be > 0"):
        EDMWeight(-1.0)
