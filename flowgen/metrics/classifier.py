r"""A small digit classifier, trained and cached on first use, and the metrics built on it.

:class:`DigitsClassifier` is a three-layer CNN for the 8×8 digits of :func:`flowgen.data.load_digits`
(images in ``[-1, 1]``). Its 128-d penultimate activations are the feature space of
:func:`digits_frechet_distance`, the digits analogue of FID; its predictions give
:func:`class_coverage` (how many of the 10 classes a generator produces, and how often) and
:func:`conditional_accuracy` (does a class-conditional generator produce the asked-for class).

:func:`pretrained_digits_classifier` trains it once — fixed seed, Adam, a few epochs with
one-pixel random shifts — in a few seconds on a CPU and caches the weights at
``$FLOWGEN_CACHE/digits_classifier.pt`` (default ``~/.cache/flowgen/``). The cache file is a
plain dict of tensors and numbers, written atomically (temporary file, then ``os.replace``) and
read with ``torch.load(weights_only=True)``; an unreadable or outdated cache is retrained with a
warning.

References:
    Heusel et al. 2017, arXiv:1706.08500 (FID: Fréchet distance in a classifier's feature space);
    LeCun et al. 1998, "Gradient-based learning applied to document recognition" (CNN digits).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import atomic_save
from ..data.digits import DIGITS_NUM_CLASSES, DIGITS_SHAPE, load_digits
from .distances import frechet_distance

__all__ = [
    "DigitsClassifier",
    "train_digits_classifier",
    "pretrained_digits_classifier",
    "digits_classifier_cache_path",
    "digits_features",
    "digits_frechet_distance",
    "class_coverage",
    "conditional_accuracy",
    "ClassCoverage",
]

#: bump when the architecture or the training recipe changes: older caches are retrained.
CACHE_VERSION = 1
#: training budget (module-level so tests can shrink it)
TRAIN_EPOCHS = 20
TRAIN_BATCH = 64
TRAIN_LR = 2e-3
TRAIN_SEED = 0
FEATURE_DIM = 128


class DigitsClassifier(nn.Module):
    """CNN for ``(B, 1, 8, 8)`` digit images in ``[-1, 1]``.

    ``features(x) → (B, 128)`` penultimate activations; ``forward(x) → (B, 10)`` logits.
    """

    def __init__(self, width: int = 32, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.width, self.feature_dim = width, feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4×4
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 2×2
            nn.Flatten(),
            nn.Linear(8 * width, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, DIGITS_NUM_CLASSES)

    @staticmethod
    def check_images(x, name: str = "images") -> Tensor:
        """Validate digit images ``(B, 1, 8, 8)``: real, finite."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B, 1, 8, 8), got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor in [-1, 1], got dtype {x.dtype}")
        if x.dim() != 4 or tuple(x.shape[1:]) != DIGITS_SHAPE:
            raise ValueError(f"{name} must have shape (B, 1, 8, 8), got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} holds {int((~torch.isfinite(x)).sum())} NaN/Inf value(s)")
        return x

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, 128)`` of images ``(B, 1, 8, 8)``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, 10)`` of images ``(B, 1, 8, 8)``."""
        return self.head(self.body(x))


def _shift(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random translation by up to one pixel (zero padding = background −1)."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + 8, dx : dx + 8]


def train_digits_classifier(
    *, epochs: int | None = None, seed: int | None = None, batch_size: int | None = None, lr: float | None = None
) -> tuple[DigitsClassifier, dict]:
    """Train a :class:`DigitsClassifier` on the digits train split, deterministically.

    The global RNG is not touched (training runs inside ``torch.random.fork_rng`` with its own seed).

    Returns:
        ``(model, info)`` with the model in eval mode and ``info = {"test_accuracy", "train_seconds",
        "epochs", "seed"}`` (accuracy on the held-out test split).
    """
    epochs = TRAIN_EPOCHS if epochs is None else epochs
    seed = TRAIN_SEED if seed is None else seed
    batch_size = TRAIN_BATCH if batch_size is None else batch_size
    lr = TRAIN_LR if lr is None else lr
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    x, y = load_digits("train")
    start = time.perf_counter()
    threads = torch.get_num_threads()
    # the network is tiny, so intra-op threads buy little and cost a lot on a busy machine
    # (measured: 5 epochs in 1.2 s with one thread against 6.7 s with two, on 2 cores shared with other jobs)
    torch.set_num_threads(1)
    try:
        model = _train(x, y, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    xt, yt = load_digits("test")
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    return model, {"test_accuracy": acc, "train_seconds": seconds, "epochs": epochs, "seed": seed}


def _train(x: Tensor, y: Tensor, *, epochs: int, seed: int, batch_size: int, lr: float) -> DigitsClassifier:
    # Training may be triggered from inside an evaluation context (e.g. Lightning's validation
    # loop runs under inference mode): gradients must be on regardless.
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = DigitsClassifier()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        steps = epochs * ((len(x) + batch_size - 1) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch_size):
                idx = perm[i : i + batch_size]
                loss = F.cross_entropy(model(_shift(x[idx], gen)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return model.eval().requires_grad_(False)


def digits_classifier_cache_path() -> Path:
    """``$FLOWGEN_CACHE/digits_classifier.pt``, or ``~/.cache/flowgen/digits_classifier.pt``."""
    root = os.environ.get("FLOWGEN_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "flowgen"
    return base / "digits_classifier.pt"


def _load_cache(path: Path) -> tuple[DigitsClassifier, dict] | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION:
            found = blob.get("version") if isinstance(blob, dict) else type(blob).__name__
            warnings.warn(f"digits classifier cache {str(path)!r} is outdated (version {found!r}); retraining", stacklevel=3)
            return None
        model = DigitsClassifier(**blob["config"])
        model.load_state_dict(blob["state_dict"])
    except Exception as err:  # noqa: BLE001 - corrupt, truncated or foreign file: retrain
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"digits classifier cache {str(path)!r} is unreadable ({type(err).__name__}: {reason}); retraining", stacklevel=3)
        return None
    return model.eval().requires_grad_(False), dict(blob.get("info", {}))


_MEMO: dict = {}


def pretrained_digits_classifier(*, device=None, retrain: bool = False, cache: bool = True) -> DigitsClassifier:
    """The cached :class:`DigitsClassifier`, training (and caching) it on first use.

    Args:
        device: device of the returned model.
        retrain: ignore any cache and train again.
        cache: read and write the cache file (``False`` trains in memory only).

    Returns:
        The classifier in eval mode with gradients off; its training info (held-out test accuracy,
        training seconds) is in ``model.info``.
    """
    path = digits_classifier_cache_path()
    key = (str(path), str(torch.device(device) if device is not None else "cpu"))
    if not retrain and cache and key in _MEMO:
        return _MEMO[key]
    loaded = _load_cache(path) if (cache and not retrain and path.exists()) else None
    if loaded is None:
        model, info = train_digits_classifier()
        if cache:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            blob = {"version": CACHE_VERSION, "config": {"width": model.width, "feature_dim": model.feature_dim}, "state_dict": state, "info": info}
            atomic_save(blob, path, check=False)
    else:
        model, info = loaded
    model.info = info
    if device is not None:
        model = model.to(device)
    if cache:
        _MEMO[key] = model
    return model


def _classifier(classifier, device) -> DigitsClassifier:
    if classifier is None:
        return pretrained_digits_classifier(device=device)
    if not isinstance(classifier, nn.Module):
        raise TypeError(f"classifier must be a DigitsClassifier (nn.Module) or None, got {type(classifier).__name__}")
    return classifier


@torch.no_grad()
def _apply(fn, images: Tensor, batch_size: int) -> Tensor:
    outs = [fn(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    return torch.cat(outs).to(torch.float64)


def _prepare(images, name, classifier) -> tuple[Tensor, DigitsClassifier]:
    DigitsClassifier.check_images(images, name)
    clf = _classifier(classifier, images.device)
    p = next(clf.parameters())
    return images.detach().to(device=p.device, dtype=p.dtype).clamp(-1.0, 1.0), clf


def digits_features(images: Tensor, *, classifier: DigitsClassifier | None = None, batch_size: int = 1024) -> Tensor:
    """Classifier features ``(N, 128)`` float64 of digit images ``(N, 1, 8, 8)`` (clamped to ``[-1, 1]``)."""
    return _features(images, "images", classifier, batch_size)


def _features(images, name, classifier, batch_size) -> Tensor:
    x, clf = _prepare(images, name, classifier)
    return _apply(clf.features, x, batch_size)


def digits_frechet_distance(
    images_a: Tensor, images_b: Tensor, *, classifier: DigitsClassifier | None = None, batch_size: int = 1024
) -> float:
    """Fréchet distance between two sets of digit images in the classifier's 128-d feature space.

    The digits analogue of FID. Images ``(N, 1, 8, 8)`` and ``(M, 1, 8, 8)`` in ``[-1, 1]``
    (values outside are clamped, as when saving an image); ``N, M ≥ 2``, and several hundred
    each for a stable estimate (the digits test split has 359).

    References:
        Heusel et al. 2017, arXiv:1706.08500.
    """
    fa = _features(images_a, "images_a", classifier, batch_size)
    fb = _features(images_b, "images_b", classifier, batch_size)
    return frechet_distance(fa, fb)


class ClassCoverage(NamedTuple):
    """Result of :func:`class_coverage`.

    Attributes:
        coverage: fraction of the 10 classes predicted at least ``min_count`` times.
        histogram: ``(10,)`` float64 fraction of the images predicted as each class (sums to 1).
        counts: ``(10,)`` long number of images predicted as each class.
    """

    coverage: float
    histogram: Tensor
    counts: Tensor


def _predict(images, name, classifier, batch_size) -> Tensor:
    x, clf = _prepare(images, name, classifier)
    return _apply(clf, x, batch_size).argmax(1).cpu()


def class_coverage(
    images: Tensor, *, classifier: DigitsClassifier | None = None, min_count: int = 1, batch_size: int = 1024
) -> ClassCoverage:
    """How many of the 10 digit classes a set of images covers, and how evenly.

    Args:
        images: ``(N, 1, 8, 8)`` in ``[-1, 1]``, ``N ≥ 1``.
        classifier: defaults to the cached pretrained classifier.
        min_count: a class counts as covered when predicted at least this many times.

    Returns:
        :class:`ClassCoverage` ``(coverage, histogram, counts)``.
    """
    if isinstance(images, Tensor) and images.shape[0] < 1:
        raise ValueError("images must hold at least one image, got an empty batch")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be a positive int, got {min_count!r}")
    pred = _predict(images, "images", classifier, batch_size)
    counts = torch.bincount(pred, minlength=DIGITS_NUM_CLASSES)
    coverage = float((counts >= min_count).float().mean())
    return ClassCoverage(coverage, counts.to(torch.float64) / counts.sum(), counts)


def conditional_accuracy(
    images: Tensor, labels: Tensor, *, classifier: DigitsClassifier | None = None, batch_size: int = 1024
) -> float:
    """Fraction of images ``(N, 1, 8, 8)`` the classifier assigns to their intended class ``labels (N,)``."""
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dim() != 1:
        raise TypeError("labels must be a 1-D integer tensor of class indices")
    if isinstance(images, Tensor) and labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels has shape {tuple(labels.shape)} but images has {images.shape[0]} images")
    if labels.numel() == 0:
        raise ValueError("images must hold at least one image, got an empty batch")
    pred = _predict(images, "images", classifier, batch_size)
    return float((pred == labels.cpu().long()).float().mean())
