"""Metrics for generated samples: tensors in, floats (or small tensors) out; shapes validated.

* :func:`wasserstein2`, :func:`w2_squared` — exact W2 between equal-size point clouds.
* :func:`sliced_w2_squared` — sliced W2² (random 1-D projections, sorted matching): for large clouds.
* :func:`mmd` — unbiased multi-bandwidth MMD².
* :func:`log_likelihood` — under a known density (e.g. :func:`flowgen.data.toy_density`).
* :func:`frechet_distance` — between Gaussians fitted to feature sets.
* :class:`DigitsClassifier`, :func:`pretrained_digits_classifier`, :func:`digits_frechet_distance`
  (the digits analogue of FID), :func:`class_coverage`, :func:`conditional_accuracy`.
"""

from .classifier import (
    ClassCoverage,
    DigitsClassifier,
    class_coverage,
    conditional_accuracy,
    digits_classifier_cache_path,
    digits_features,
    digits_frechet_distance,
    pretrained_digits_classifier,
    train_digits_classifier,
)
from .distances import (
    Kernel,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    log_likelihood,
    mmd,
    sliced_w2_squared,
    w2_squared,
    wasserstein2,
)

__all__ = [
    "wasserstein2",
    "w2_squared",
    "sliced_w2_squared",
    "mmd",
    "Kernel",
    "log_likelihood",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "DigitsClassifier",
    "pretrained_digits_classifier",
    "train_digits_classifier",
    "digits_classifier_cache_path",
    "digits_features",
    "digits_frechet_distance",
    "class_coverage",
    "conditional_accuracy",
    "ClassCoverage",
]
