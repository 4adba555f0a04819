"""Resources: sampling a large N holds one chunk at a time; data modules keep datasets off the GPU.

Peak-memory figures are measured by ``benchmarks/sampling_memory.py`` (fresh process per
configuration); these tests check the mechanisms that bound memory, with no timing:

* ``sample_stream`` is lazy and calls the model on at most ``batch_size`` rows, one chunk per
  ``next()``; ``sample(..., batch_size=B)`` calls it on chunks of at most ``B``;
* the tensor data modules (digits, tensor files, image folders), with their default settings,
  keep the training set on the CPU and move one gathered batch per step to the training device.
  There is no CUDA device here, so the "meta" device stands in for it: the modules treat any
  non-CPU device the same way (the test reads the same code path).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowgen.paths import RectifiedFlow
from flowgen.samplers import sample, sample_stream

pytestmark = pytest.mark.filterwarnings("ignore")


class RowCounter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rows: list[int] = []

    def forward(self, x_t, t, cond=None):
        self.rows.append(x_t.shape[0])
        return -x_t


def test_sample_stream_is_lazy_and_chunked():
    model = RowCounter()
    stream = sample_stream(model, RectifiedFlow(), num_samples=10_000, shape=(2,), batch_size=512, prediction="velocity",
                           steps=3, seed=0)
    assert model.rows == []  # nothing happens before the first chunk is asked for
    first = next(stream)
    assert first.samples.shape == (512, 2) and model.rows == [512] * 3
    rest = list(stream)
    assert sum(r.samples.shape[0] for r in rest) == 10_000 - 512
    assert max(model.rows) == 512 and len(model.rows) == 3 * (1 + len(rest))


def test_sample_batch_size_bounds_every_model_call():
    model = RowCounter()
    noise = torch.randn(5000, 2)
    out = sample(model, RectifiedFlow(), noise, prediction="velocity", steps=2, batch_size=1024)
    assert out.samples.shape == (5000, 2) and max(model.rows) <= 1024
    whole = sample(RowCounter(), RectifiedFlow(), noise, prediction="velocity", steps=2).samples
    torch.testing.assert_close(out.samples, whole)


STAND_IN = torch.device("meta")  # an accelerator stand-in: the data modules treat every non-CPU device alike


def _modules(tmp_path):
    from flowgen.data import write_png
    from flowgen.lightning import (
        DigitsDataModule,
        ImageFolderDataModule,
        TensorFileDataModule,
    )

    f = tmp_path / "data.npy"
    np.save(f, np.random.default_rng(0).standard_normal((600, 3)).astype(np.float32))
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):
        write_png(folder / f"{i:03d}.png", (rng.random((8, 8)) * 255).astype(np.uint8))
    return {
        "digits": lambda **kw: DigitsDataModule(batch_size=64, **kw),
        "tensor_file": lambda **kw: TensorFileDataModule(str(f), batch_size=64, **kw),
        "image_folder": lambda **kw: ImageFolderDataModule(str(folder), batch_size=8, **kw),
    }


@pytest.mark.parametrize("name", ["digits", "tensor_file", "image_folder"])
def test_data_modules_keep_the_dataset_on_the_cpu_by_default(name, tmp_path):
    from flowgen.lightning.data import BatchRequest

    dm = _modules(tmp_path)[name]()
    assert dm.on_device is False
    dm._device = STAND_IN  # what setup() takes from the trainer's root device
    dm._setup_data()
    train_x = dm._train[0]
    assert train_x.device.type == "cpu", "the training set was moved to the device by default"
    batch = dm.transfer_batch_to_device(BatchRequest("train", 0), STAND_IN, 0)
    xb = batch[0] if isinstance(batch, (tuple, list)) else batch
    assert xb.device == STAND_IN and xb.shape[0] == dm.batch_size  # one gathered batch goes to the device
    assert dm._train[0].device.type == "cpu" and dm._train[0] is train_x  # ... and the dataset stays where it was
    # validation: only the held-out split (not the training set) is cached on the device
    val = dm.transfer_batch_to_device(BatchRequest("val", 0), STAND_IN, 0)
    vx = val[0] if isinstance(val, (tuple, list)) else val
    assert vx.device == STAND_IN and vx.shape[0] <= dm._val[0].shape[0] < train_x.shape[0]
    assert dm._train[0].device.type == "cpu"


def test_on_device_moves_the_dataset_once_when_asked(tmp_path):
    from flowgen.lightning.data import BatchRequest

    dm = _modules(tmp_path)["tensor_file"](on_device=True)
    dm._device = STAND_IN
    dm._setup_data()
    assert dm._train[0].device == STAND_IN
    moved = dm._train[0]
    batch = dm.transfer_batch_to_device(BatchRequest("train", 0), STAND_IN, 0)
    xb = batch[0] if isinstance(batch, (tuple, list)) else batch
    assert xb.device == STAND_IN and dm._train[0] is moved
