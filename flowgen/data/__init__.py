"""Data without Lightning: 2-D toys, the bundled 8×8 digits, tensor files and image folders.

* :mod:`flowgen.data.toys` — :func:`sample_toy` (``moons``, ``8gaussians``, ``checkerboard``,
  ``gmm``) drawn in whole batches on any device, and :func:`toy_density` exact oracles.
* :mod:`flowgen.data.digits` — :func:`load_digits` from scikit-learn's bundled digits, with a
  fixed stratified train/test split.
* :mod:`flowgen.data.files` — :func:`load_tensor_file` (``.npy``/``.npz``/``.pt``, loaded without
  unpickling) and :func:`load_image_folder` (PNG/PGM/PPM decoded here, other formats via Pillow).

The LightningDataModules in :mod:`flowgen.lightning` wrap these.
"""

from .digits import DIGITS_NUM_CLASSES, DIGITS_SHAPE, load_digits
from .files import load_image_folder, load_tensor_file, load_tensor_file_with_labels, read_image, write_png
from .toys import TOY_DATASETS, Toy, sample_toy, toy_density

__all__ = [
    "Toy",
    "TOY_DATASETS",
    "sample_toy",
    "toy_density",
    "load_digits",
    "DIGITS_SHAPE",
    "DIGITS_NUM_CLASSES",
    "load_tensor_file",
    "load_tensor_file_with_labels",
    "load_image_folder",
    "read_image",
    "write_png",
]
