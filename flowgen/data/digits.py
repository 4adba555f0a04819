"""scikit-learn's bundled 8×8 handwritten digits: flowgen's built-in real image set (offline).

1797 grey-scale images of the digits 0–9 (UCI optical recognition data, pixel values 0..16),
shipped inside scikit-learn, so nothing is downloaded. :func:`load_digits` scales them to
``[-1, 1]`` and returns ``(N, 1, 8, 8)`` float32 images with ``(N,)`` long labels.

The train/test split is fixed and stratified: within each class the images are permuted with
``numpy.random.RandomState(0)`` (a stream numpy guarantees to keep) and the first
``round(0.2 · n_class)`` go to the test split. The two splits are disjoint and their union is
the whole set.

References:
    Alpaydin & Kaynak 1998, UCI Optical Recognition of Handwritten Digits (the data);
    Pedregosa et al. 2011, arXiv:1201.0490 (scikit-learn).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_digits", "digits_split_indices", "DIGITS_SHAPE", "DIGITS_NUM_CLASSES", "TEST_FRACTION"]

DIGITS_SHAPE = (1, 8, 8)
DIGITS_NUM_CLASSES = 10
TEST_FRACTION = 0.2
_SPLITS = ("train", "test", "all")


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from err
    bunch = _sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # (N, 8, 8), 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    return images, labels


@lru_cache(maxsize=1)
def _split_indices() -> dict[str, np.ndarray]:
    _, labels = _raw()
    rng = np.random.RandomState(0)
    test = []
    for c in range(DIGITS_NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        test.append(idx[: int(round(TEST_FRACTION * len(idx)))])
    test_idx = np.sort(np.concatenate(test))
    mask = np.ones(len(labels), dtype=bool)
    mask[test_idx] = False
    return {"train": np.flatnonzero(mask), "test": test_idx, "all": np.arange(len(labels))}


def _check_split(split) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    return split


def digits_split_indices(split: str = "train") -> np.ndarray:
    """Indices (into scikit-learn's order) of the images in ``split``: a sorted ``int64`` array."""
    return _split_indices()[_check_split(split)].copy()


def load_digits(split: str = "train") -> tuple[Tensor, Tensor]:
    """The 8×8 digits as images in ``[-1, 1]``.

    Args:
        split: ``"train"`` (about 80 %), ``"test"`` (about 20 %, stratified) or ``"all"``.

    Returns:
        ``(images, labels)``: ``(N, 1, 8, 8)`` float32 with ``image = pixel / 8 − 1`` (pixels
        0..16), and ``(N,)`` long labels in ``0..9``. Fresh tensors on each call.
    """
    idx = digits_split_indices(split)
    images, labels = _raw()
    x = torch.from_numpy(images[idx] / np.float32(8.0) - np.float32(1.0)).reshape(len(idx), *DIGITS_SHAPE)
    return x.contiguous(), torch.from_numpy(labels[idx].copy())
