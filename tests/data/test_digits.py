"""The bundled 8×8 digits: shapes, range, labels, fixed disjoint split."""

import numpy as np
import pytest
import torch

from flowgen.data import load_digits
from flowgen.data.digits import digits_split_indices


def test_shapes_range_and_labels():
    x, y = load_digits("all")
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.long
    assert x.min() == -1 and x.max() == 1
    assert set(y.tolist()) == set(range(10))
    # pixel levels 0..16 map to 17 equally spaced values in [-1, 1]
    levels = torch.unique(x)
    assert torch.allclose((levels + 1) * 8, torch.round((levels + 1) * 8))


def test_split_is_fixed_disjoint_stratified():
    tr, te, al = (digits_split_indices(s) for s in ("train", "test", "all"))
    assert np.intersect1d(tr, te).size == 0
    assert np.array_equal(np.sort(np.concatenate([tr, te])), al)
    xt, yt = load_digits("test")
    xa, ya = load_digits("all")
    assert torch.equal(xa[torch.from_numpy(te)], xt) and torch.equal(ya[torch.from_numpy(te)], yt)
    assert 0.18 < len(te) / len(al) < 0.22
    counts = torch.bincount(yt, minlength=10).double() / torch.bincount(ya, minlength=10).double()
    assert (counts - 0.2).abs().max() < 0.01
    # no image of the test split appears in the train split
    xtr, _ = load_digits("train")
    flat_tr = {tuple(r.tolist()) for r in xtr.reshape(len(xtr), -1)}
    dup = sum(tuple(r.tolist()) in flat_tr for r in xt.reshape(len(xt), -1))
    assert dup == 0
    # fresh tensors: mutating one result does not change the next
    xt[:] = 0
    assert not torch.equal(load_digits("test")[0], xt)


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        load_digits("validation")
