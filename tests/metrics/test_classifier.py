"""Digits classifier: cache round trip (atomic, weights_only), retraining of bad caches, and the metrics on top."""

import pytest
import torch

import flowgen.metrics.classifier as clf_mod
from flowgen.data import load_digits
from flowgen.metrics import (
    DigitsClassifier,
    class_coverage,
    conditional_accuracy,
    digits_classifier_cache_path,
    digits_features,
    digits_frechet_distance,
    pretrained_digits_classifier,
    train_digits_classifier,
)


@pytest.fixture
def tiny_cache(tmp_path, monkeypatch):
    """A private FLOWGEN_CACHE, an empty in-process memo and a one-epoch training budget."""
    monkeypatch.setenv("FLOWGEN_CACHE", str(tmp_path))
    monkeypatch.setattr(clf_mod, "_MEMO", {})
    monkeypatch.setattr(clf_mod, "TRAIN_EPOCHS", 1)
    return tmp_path


@pytest.fixture(scope="module")
def tiny_classifier():
    model, _ = train_digits_classifier(epochs=1)
    return model


def test_cache_round_trip(tiny_cache, monkeypatch):
    assert digits_classifier_cache_path() == tiny_cache / "digits_classifier.pt"
    rng_before = torch.get_rng_state()
    model = pretrained_digits_classifier()
    assert torch.equal(torch.get_rng_state(), rng_before)  # training does not consume the global RNG
    path = tiny_cache / "digits_classifier.pt"
    assert path.is_file() and [p.name for p in tiny_cache.iterdir()] == ["digits_classifier.pt"]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert 0.0 <= model.info["test_accuracy"] <= 1.0 and model.info["epochs"] == 1
    # the file is plain data: loadable with weights_only=True
    blob = torch.load(path, weights_only=True)
    assert blob["version"] == clf_mod.CACHE_VERSION

    # second use in a fresh process (empty memo) loads the file and does not train
    monkeypatch.setattr(clf_mod, "_MEMO", {})

    def no_training(**_):
        raise AssertionError("trained although a valid cache exists")

    monkeypatch.setattr(clf_mod, "train_digits_classifier", no_training)
    again = pretrained_digits_classifier()
    assert again is not model
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert again.info == model.info
    # in-process memo
    assert pretrained_digits_classifier() is again


@pytest.mark.parametrize("content", [b"garbage", b"PK\x03\x04truncated"])
def test_corrupt_cache_is_retrained(tiny_cache, content):
    path = tiny_cache / "digits_classifier.pt"
    path.write_bytes(content)
    with pytest.warns(UserWarning, match="unreadable.*retraining"):
        model = pretrained_digits_classifier()
    assert isinstance(model, DigitsClassifier)
    assert torch.load(path, weights_only=True)["version"] == clf_mod.CACHE_VERSION


def test_outdated_cache_is_retrained(tiny_cache):
    torch.save({"version": -1}, tiny_cache / "digits_classifier.pt")
    with pytest.warns(UserWarning, match="outdated"):
        pretrained_digits_classifier()


def test_cache_with_code_payload_is_not_executed(tiny_cache, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"version": clf_mod.CACHE_VERSION, "x": Payload()}, tiny_cache / "digits_classifier.pt")
    with pytest.warns(UserWarning, match="unreadable"):
        pretrained_digits_classifier()
    assert "pwned" not in capsys.readouterr().out


def test_no_cache_mode_writes_nothing(tiny_cache):
    pretrained_digits_classifier(cache=False)
    assert list(tiny_cache.iterdir()) == []


def test_metrics_with_injected_classifier(tiny_classifier):
    x, y = load_digits("test")
    x, y = x[:200], y[:200]
    feats = digits_features(x, classifier=tiny_classifier)
    assert feats.shape == (len(x), 128) and feats.dtype == torch.float64
    assert abs(digits_frechet_distance(x, x, classifier=tiny_classifier)) < 1e-6
    # values outside [-1, 1] are clamped, as when an image is saved
    z = x * 1.5
    torch.testing.assert_close(digits_features(z, classifier=tiny_classifier), digits_features(z.clamp(-1, 1), classifier=tiny_classifier))
    assert not torch.allclose(digits_features(z, classifier=tiny_classifier), tiny_classifier.features(z).double())
    noise = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert digits_frechet_distance(x, noise, classifier=tiny_classifier) > digits_frechet_distance(
        x[:100], x[100:], classifier=tiny_classifier
    )
    cov = class_coverage(x, classifier=tiny_classifier)
    assert cov.histogram.shape == (10,) and float(cov.histogram.sum()) == pytest.approx(1.0)
    assert int(cov.counts.sum()) == len(x) and cov.counts.dtype == torch.long
    pred = tiny_classifier(x).argmax(1)
    assert cov.coverage == pytest.approx(len(pred.unique()) / 10)
    one = x[pred == pred[0]]
    assert class_coverage(one, classifier=tiny_classifier).coverage == pytest.approx(0.1)
    assert conditional_accuracy(x, y, classifier=tiny_classifier) == pytest.approx(float((pred == y).float().mean()))
    # float64 images work
    assert class_coverage(x.double(), classifier=tiny_classifier).coverage == cov.coverage


def test_metric_input_errors(tiny_classifier):
    x, y = load_digits("test")
    with pytest.raises(ValueError, match=r"images_b must have shape \(B, 1, 8, 8\)"):
        digits_frechet_distance(x, torch.zeros(10, 1, 16, 16), classifier=tiny_classifier)
    with pytest.raises(ValueError, match="images_a holds 1 NaN"):
        bad = x.clone()
        bad[0, 0, 0, 0] = float("nan")
        digits_frechet_distance(bad, x, classifier=tiny_classifier)
    with pytest.raises(TypeError, match="floating"):
        class_coverage(x.long(), classifier=tiny_classifier)
    with pytest.raises(ValueError, match="empty"):
        class_coverage(x[:0], classifier=tiny_classifier)
    with pytest.raises(ValueError, match="labels has shape"):
        conditional_accuracy(x, y[:3], classifier=tiny_classifier)
    with pytest.raises(TypeError, match="classifier"):
        class_coverage(x, classifier="cnn")


@pytest.mark.slow
def test_full_training_accuracy_and_determinism():
    model, info = train_digits_classifier()
    assert info["test_accuracy"] >= 0.95, info
    again, info2 = train_digits_classifier()
    assert info2["test_accuracy"] == info["test_accuracy"]
    for v, v2 in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(v, v2)
    x_test, y_test = load_digits("test")
    x_train, _ = load_digits("train")
    assert class_coverage(x_test, classifier=model).coverage == 1.0
    assert conditional_accuracy(x_test, y_test, classifier=model) == pytest.approx(info["test_accuracy"])
    noise = torch.rand(359, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    real_fd = digits_frechet_distance(x_train, x_test, classifier=model)
    assert digits_frechet_distance(x_test, noise, classifier=model) > 20 * real_fd
