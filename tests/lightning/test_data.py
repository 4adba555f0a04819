"""Data modules: whole batches on the device, exact resumable state, epoch coverage, refusals."""

import numpy as np
import pytest
import torch

from flowgen.lightning.data import BatchRequest, DigitsDataModule, ImageFolderDataModule, TensorFileDataModule, ToyDataModule


def _train_batches(dm, n, device="cpu"):
    """Materialise ``n`` training batches as Lightning does, starting a new epoch when one ends."""
    out, it = [], iter(dm.train_dataloader())
    while len(out) < n:
        try:
            token = next(it)
        except StopIteration:
            it = iter(dm.train_dataloader())
            continue
        out.append(dm.transfer_batch_to_device(token, torch.device(device), 0))
    return out


def test_toy_batches_are_drawn_whole_on_the_device(device):
    dm = ToyDataModule("8gaussians", batch_size=33, val_size=50, seed=1)
    dm.setup("fit")
    token = next(iter(dm.train_dataloader()))
    assert isinstance(token, BatchRequest)  # the loader yields tokens, not collated tensors
    x = dm.transfer_batch_to_device(token, device, 0)
    assert x.shape == (33, 2) and x.device.type == device.type and x.dtype == torch.float32
    val = dm.transfer_batch_to_device(next(iter(dm.val_dataloader())), device, 0)
    assert val.shape == (50, 2)


def test_toy_heldout_set_is_fixed_and_independent_of_the_training_seed():
    a, b = ToyDataModule("moons", seed=1, val_size=100), ToyDataModule("moons", seed=2, val_size=100)
    assert torch.equal(a.reference(), b.reference())
    assert not torch.equal(_train_batches(a, 1)[0], _train_batches(b, 1)[0])


def test_toy_state_dict_resumes_the_stream_exactly():
    dm = ToyDataModule("checkerboard", batch_size=16, seed=3, batches_per_epoch=5)
    dm.setup("fit")
    _train_batches(dm, 3)
    state = dm.state_dict()
    expected = _train_batches(dm, 4)
    other = ToyDataModule("checkerboard", batch_size=16, seed=3, batches_per_epoch=5)
    other.load_state_dict(state)  # before setup, as Lightning does
    other.setup("fit")
    # the resumed stream restarts mid-epoch: 5 - 3 = 2 tokens left in this epoch
    assert len(list(iter(other.train_dataloader()))) == 2
    got = _train_batches(other, 4)
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


def _tensor_file(tmp_path, n=50, labels=True):
    x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    f = tmp_path / "data.pt"
    obj = {"data": x, "labels": torch.arange(n) % 5} if labels else {"data": x}
    torch.save(obj, f)
    return f, x


def test_tensor_file_epochs_cover_each_training_sample_once(tmp_path):
    f, x = _tensor_file(tmp_path)
    dm = TensorFileDataModule(str(f), batch_size=8, val_fraction=0.2, seed=0)
    dm.setup("fit")
    assert dm.num_train == 40 and dm.batches_per_epoch == 5 and dm.num_classes == 5
    batches = _train_batches(dm, 10)
    for epoch in (batches[:5], batches[5:]):
        rows = torch.cat([b[0] for b in epoch])
        assert rows.shape == (40, 3)
        assert len({tuple(r.tolist()) for r in rows}) == 40  # no repeats within an epoch
    val = dm.reference()
    train_rows = {tuple(r.tolist()) for r in torch.cat([b[0] for b in batches[:5]])}
    assert not train_rows & {tuple(r.tolist()) for r in val}  # held-out rows never train
    xb, yb = batches[0]
    assert torch.equal(yb, (xb[:, 0] / 3).long() % 5)  # labels stay with their rows


def test_ranks_draw_disjoint_strides_of_the_same_permutation(tmp_path):
    f, _ = _tensor_file(tmp_path, n=64, labels=False)
    seen = []
    for rank in range(2):
        dm = TensorFileDataModule(str(f), batch_size=4, val_fraction=0.0, seed=5, labels=False)
        dm._rank, dm._world = rank, 2
        dm.setup("fit")
        assert dm.batches_per_epoch == 8
        seen.append({tuple(r.tolist()) for b in _train_batches(dm, 8) for r in b})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 64


def test_on_device_option_moves_the_training_set_once(tmp_path, device):
    f, _ = _tensor_file(tmp_path, labels=False)
    dm = TensorFileDataModule(str(f), batch_size=8, on_device=True, labels=False)
    dm._device = device
    dm.setup("fit")
    assert dm._train[0].device.type == device.type
    default = TensorFileDataModule(str(f), batch_size=8, labels=False)
    default._device = device
    default.setup("fit")
    assert default._train[0].device.type == "cpu"  # not moved by default
    assert _train_batches(default, 1, device)[0].device.type == device.type


@pytest.mark.parametrize("content, reason", [
    (np.array([[1.0, np.nan]]), "non-finite|NaN"),
    (np.array(["a", "b"]), "dtype"),
    (np.zeros((0, 2)), "empty"),
])
def test_bad_data_files_are_refused_with_the_file_and_reason(tmp_path, content, reason):
    f = tmp_path / "bad.npy"
    np.save(f, content)
    dm = TensorFileDataModule(str(f))
    with pytest.raises(ValueError, match=reason) as err:
        dm.setup("fit")
    assert str(f) in str(err.value)


def test_vector_file_without_sample_dimension_is_refused(tmp_path):
    f = tmp_path / "flat.npy"
    np.save(f, np.arange(10.0))
    with pytest.raises(ValueError, match="per-sample"):
        TensorFileDataModule(str(f)).setup("fit")


def test_digits_module_shapes_and_fixed_test_split():
    dm = DigitsDataModule(batch_size=32)
    dm.setup("fit")
    x, y = _train_batches(dm, 1)[0]
    assert x.shape == (32, 1, 8, 8) and y.shape == (32,) and dm.num_classes == 10
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    ref = dm.reference()
    assert ref.shape[1:] == (1, 8, 8) and 300 < ref.shape[0] < 400


def test_image_folder_module(tmp_path):
    from flowgen.viz import write_png

    rng = np.random.default_rng(0)
    for i in range(12):
        write_png(tmp_path / f"img{i:02d}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    dm = ImageFolderDataModule(str(tmp_path), batch_size=4, val_fraction=0.25)
    dm.setup("fit")
    assert dm.data_shape == (1, 6, 6) and dm.num_train == 9
    assert _train_batches(dm, 1)[0].shape == (4, 1, 6, 6)


def test_argument_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        ToyDataModule("moons", batch_size=0)
    with pytest.raises(ValueError, match="name"):
        ToyDataModule("moonz")
    with pytest.raises(ValueError, match="val_fraction"):
        TensorFileDataModule(str(tmp_path / "x.npy"), val_fraction=1.5)
