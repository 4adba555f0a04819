"""Predictions and conversions: every ordered pair, every path, against ground truth."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import flowgen
from flowgen.parameterization import (
    Prediction,
    convert,
    convert_with_coefficients,
    from_data_noise,
    prediction_error_scale,
    singular_at,
    to_data_noise,
)
from flowgen.paths import EDM, VP, Cosine, DiscreteDDPM, RectifiedFlow
from flowgen.testing import strategies as fst

F64 = torch.float64
PAIRS = list(itertools.product(Prediction, Prediction))
FAMILIES = sorted(fst.PATH_FAMILIES)


def _bshape(t, x):
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def _truth(prediction: Prediction, data, noise, t, path):
    """Each prediction from its definition, written out here (not through flowgen's hub)."""
    a, s, da, ds = (_bshape(c, data) for c in path.coefficients(t))
    return {
        Prediction.DATA: data,
        Prediction.NOISE: noise,
        Prediction.VELOCITY: da * data + ds * noise,
        Prediction.V: a * noise - s * data,
        Prediction.SCORE: -noise / s,
    }[prediction]


def test_prediction_parse():
    for member in Prediction:
        assert Prediction.parse(member) is member
        assert Prediction.parse(member.value) is member
        assert Prediction.parse(member.value.upper()) is member
    for alias, member in {"epsilon": "noise", "eps": "noise", "x0": "data", "sample": "data", "flow": "velocity", "v_prediction": "v"}.items():
        assert Prediction.parse(alias) is Prediction(member)
    assert Prediction.V.value == "v" and "α·noise − σ·data" in Prediction.__doc__


@pytest.mark.parametrize("bad", ["x_1", "", "velocity2", 3, None, ["data"]])
def test_unknown_prediction_raises_naming_argument(bad):
    with pytest.raises(ValueError, match=r"unknown prediction"):
        Prediction.parse(bad)
    with pytest.raises(ValueError, match=r"unknown src"):
        Prediction.parse(bad, "src")
    x, t = torch.zeros(2, 3), torch.full((2,), 0.5)
    with pytest.raises(ValueError, match=r"unknown dst"):
        convert(x, src="data", dst=bad, x_t=x, t=t, path=Cosine())
    with pytest.raises(ValueError, match=r"unknown src"):
        to_data_noise(x, src=bad, x_t=x, t=t, path=Cosine())
    with pytest.raises(ValueError, match=r"unknown prediction"):
        flowgen.objectives.prediction_loss(x, data=x, noise=x, t=t, path=Cosine(), prediction=bad)


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_conversions_round_trip_and_agree_with_ground_truth(family, data):
    path = data.draw(fst.PATH_FAMILIES[family](), label="path")
    shape = data.draw(fst.batch_shapes(), label="shape")
    t = data.draw(fst.times(path, shape[0], margin=1e-3, dtype=F64), label="t")
    x0, eps = data.draw(fst.data_noise(shape), label="data_noise")
    x_t = path.sample(data=x0, noise=eps, t=t).x_t
    truth = {p: _truth(p, x0, eps, t, path) for p in Prediction}
    for src, dst in PAIRS:
        scale = 1.0 + truth[src].abs().max() + truth[dst].abs().max() + x_t.abs().max()
        converted = convert(truth[src], src=src, dst=dst, x_t=x_t, t=t, path=path)
        assert converted.shape == shape and converted.dtype == F64
        assert ((converted - truth[dst]).abs() <= 1e-8 * scale).all(), (src, dst)
        back = convert(converted, src=dst, dst=src, x_t=x_t, t=t, path=path)
        assert ((back - truth[src]).abs() <= 1e-8 * scale).all(), (src, dst)
    # the hub's two halves
    for p in Prediction:
        d, n = to_data_noise(truth[p], src=p, x_t=x_t, t=t, path=path)
        scale = 1.0 + truth[p].abs().max() + x_t.abs().max()
        assert ((d - x0).abs() <= 1e-8 * scale).all() and ((n - eps).abs() <= 1e-8 * scale).all()
        torch.testing.assert_close(from_data_noise(data=x0, noise=eps, dst=p, t=t, path=path), truth[p], rtol=1e-12, atol=1e-12)


@given(fst.paths(), fst.batch_shapes(), st.data())
def test_conversions_keep_float32_and_agree_with_float64(path, shape, data):
    t = data.draw(fst.times(path, shape[0], margin=1e-2, dtype=F64), label="t")
    x0, eps = data.draw(fst.data_noise(shape), label="data_noise")
    x_t = path.sample(data=x0, noise=eps, t=t).x_t
    # float32 rounding of the inputs is amplified by the conversion's divisions (by α, σ or Δ = ασ' − σα')
    a, s, da, ds = path.coefficients(t)
    cond = _bshape(torch.stack([1 / a, 1 / s, (da.abs() + ds.abs()) / (a * ds - s * da), torch.ones_like(a)]).amax(0), x0)
    for src, dst in PAIRS:
        pred = _truth(src, x0, eps, t, path)
        out32 = convert(pred.float(), src=src, dst=dst, x_t=x_t.float(), t=t.float(), path=path)
        assert out32.dtype == torch.float32
        out64 = convert(pred, src=src, dst=dst, x_t=x_t, t=t, path=path)
        scale = 1.0 + pred.abs().max() + out64.abs().max() + x_t.abs().max()
        assert ((out32.double() - out64).abs() <= 1e-5 * cond * scale).all(), (src, dst)
    # float64 t with float32 tensors: coefficients in float64, output in the prediction's dtype
    out = convert(x0.float(), src="data", dst="noise", x_t=x_t.float(), t=t, path=path)
    assert out.dtype == torch.float32
    d, n = to_data_noise(x0.float(), src="data", x_t=x_t.float(), t=t, path=path)
    assert d.dtype == n.dtype == torch.float32


def test_same_kind_conversion_is_identity():
    x, t = torch.randn(3, 2), torch.full((3,), 0.4)
    for p in Prediction:
        assert convert(x, src=p, dst=p, x_t=x, t=t, path=Cosine()) is x
        assert convert_with_coefficients(x, p, p, x, 1.0, 0.0, 0.0, 1.0) is x


@pytest.mark.parametrize("family", FAMILIES)
@given(data=st.data())
def test_prediction_error_scale_is_the_squared_error_ratio(family, data):
    """k_P(t)² = ‖p̂ − p‖² / ‖d̂ − d‖², measured by converting a perturbed data prediction."""
    path = data.draw(fst.PATH_FAMILIES[family](), label="path")
    shape = data.draw(fst.batch_shapes(min_rank=2), label="shape")
    t = data.draw(fst.times(path, shape[0], margin=1e-2, dtype=F64), label="t")
    x0, eps = data.draw(fst.data_noise(shape), label="data_noise")
    err = data.draw(fst.tensors(shape), label="err")
    x_t = path.sample(data=x0, noise=eps, t=t).x_t
    for p in Prediction:
        exact = convert(x0, src="data", dst=p, x_t=x_t, t=t, path=path)
        perturbed = convert(x0 + err, src="data", dst=p, x_t=x_t, t=t, path=path)
        ratio = (perturbed - exact).flatten(1).pow(2).sum(1) / err.flatten(1).pow(2).sum(1)
        scale = prediction_error_scale(path, t, p)
        assert scale.shape == t.shape and scale.dtype == F64
        torch.testing.assert_close(ratio, scale, rtol=1e-6, atol=1e-12)
    assert prediction_error_scale(path, t.float(), "noise").dtype == torch.float32


def test_singular_points():
    ends = torch.tensor([0.0, 1.0], dtype=F64)
    rf = RectifiedFlow()
    assert singular_at(rf, ends, src="data", dst="noise").tolist() == [True, False]
    assert singular_at(rf, ends, src="noise", dst="data").tolist() == [False, True]
    assert singular_at(rf, ends, src="score", dst="data").tolist() == [False, True]
    assert singular_at(rf, ends, src="velocity", dst="score").tolist() == [True, False]
    assert singular_at(rf, ends, src="v", dst="data").tolist() == [False, False]
    assert singular_at(rf, ends, src="velocity", dst="data").tolist() == [False, False]
    assert singular_at(rf, ends, src="data", dst="data").tolist() == [False, False]
    assert singular_at(RectifiedFlow(sigma_min=0.01), ends, src="data", dst="noise").tolist() == [False, False]
    assert singular_at(EDM(), ends, src="noise", dst="data").tolist() == [False, False]
    # VP: σ' is infinite at t = 0, so anything through the velocity is singular there
    assert singular_at(VP(), ends, src="velocity", dst="data").tolist() == [True, False]
    assert singular_at(VP(), ends, src="noise", dst="velocity").tolist() == [True, False]
    # interior times are never singular on any built-in path
    t = torch.linspace(0.01, 0.99, 9, dtype=F64)
    for path in (rf, Cosine(), VP(), EDM(), DiscreteDDPM.cosine()):
        for src, dst in PAIRS:
            assert not singular_at(path, t, src=src, dst=dst).any()


def test_conversion_bad_input_names_the_argument():
    x, t, path = torch.zeros(3, 2), torch.full((3,), 0.5), Cosine()
    with pytest.raises(ValueError, match=r"pred has shape \(3, 2\) but x_t has shape \(3, 4\)"):
        convert(x, src="data", dst="noise", x_t=torch.zeros(3, 4), t=t, path=path)
    with pytest.raises(ValueError, match=r"t has batch size 2 but the data has batch size 3"):
        convert(x, src="data", dst="noise", x_t=x, t=t[:2], path=path)
    with pytest.raises(ValueError, match=r"t must lie in"):
        convert(x, src="data", dst="noise", x_t=x, t=t + 1.0, path=path)
    with pytest.raises(ValueError, match=r"t holds 1 non-finite"):
        convert(x, src="data", dst="noise", x_t=x, t=torch.tensor([0.5, float("nan"), 0.5]), path=path)
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        convert(x, src="data", dst="noise", x_t=x, t=t[:, None], path=path)
    with pytest.raises(TypeError, match=r"path must be a flowgen Path"):
        convert(x, src="data", dst="noise", x_t=x, t=t, path="cosine")
    with pytest.raises(TypeError, match=r"x_t must be a torch.Tensor"):
        convert(x, src="data", dst="noise", x_t=x.numpy(), t=t, path=path)
    with pytest.raises(ValueError, match=r"data has shape \(3, 2\) but noise has shape \(3, 5\)"):
        from_data_noise(data=x, noise=torch.zeros(3, 5), dst="v", t=t, path=path)
    with pytest.raises(ValueError, match=r"pred has shape"):
        to_data_noise(x, src="v", x_t=torch.zeros(2, 2), t=t, path=path)
    with pytest.raises(TypeError):  # keyword-only
        convert(x, "data", "noise", x, t, path)
