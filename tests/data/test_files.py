"""Tensor files and image folders: round trips, and refusals that name the file and the reason."""

import pickle

import numpy as np
import pytest
import torch

from flowgen.data import load_image_folder, load_tensor_file, load_tensor_file_with_labels, read_image, write_png


def test_round_trips(tmp_path):
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    np.save(tmp_path / "a.npy", x.numpy())
    torch.save(x, tmp_path / "b.pt")
    torch.save({"data": x, "labels": torch.tensor([0, 1, 2, 1, 0])}, tmp_path / "c.pt")
    np.savez(tmp_path / "d.npz", data=x.numpy(), labels=np.arange(5))
    for name in ("a.npy", "b.pt", "c.pt", "d.npz"):
        y = load_tensor_file(tmp_path / name)
        assert y.dtype == torch.float32 and torch.allclose(y, x.float())
        assert load_tensor_file(tmp_path / name, dtype=None).dtype == torch.float64
    _, labels = load_tensor_file_with_labels(tmp_path / "c.pt")
    assert labels.tolist() == [0, 1, 2, 1, 0]
    assert load_tensor_file_with_labels(tmp_path / "d.npz")[1].dtype == torch.long
    assert load_tensor_file_with_labels(tmp_path / "a.npy")[1] is None
    # integer data is accepted and converted
    np.save(tmp_path / "i.npy", np.arange(6, dtype=np.uint8).reshape(3, 2))
    assert load_tensor_file(tmp_path / "i.npy").tolist() == [[0, 1], [2, 3], [4, 5]]
    assert load_tensor_file(tmp_path / "a.npy", event_shape=(3, 2)).shape == (5, 3, 2)


@pytest.mark.parametrize(
    "content, reason",
    [
        (np.array([[1.0, np.nan]]), "NaN/Inf"),
        (np.array([[1.0, np.inf]]), "NaN/Inf"),
        (np.zeros((0, 2)), "empty"),
        (np.array(3.0), "scalar"),
        (np.array([[True, False]]), "dtype bool"),
        (np.array([[1 + 2j]]), "dtype complex"),
    ],
)
@pytest.mark.parametrize("fmt", ["npy", "pt"])
def test_refusals_name_file_and_reason(tmp_path, content, reason, fmt):
    path = tmp_path / f"bad_data.{fmt}"
    if fmt == "npy":
        np.save(path, content)
    else:
        torch.save(torch.from_numpy(content), path)
        reason = reason.replace("dtype bool", "dtype torch.bool").replace("dtype complex", "dtype torch.complex")
    with pytest.raises(ValueError, match=reason) as info:
        load_tensor_file(path)
    assert "bad_data" in str(info.value)


def test_wrong_shape_suffix_missing(tmp_path):
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    with pytest.raises(ValueError, match=r"s\.npy.*dtype <U1"):
        load_tensor_file(tmp_path / "s.npy")
    np.save(tmp_path / "x.npy", np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"x\.npy.*expected \(N, 2\)"):
        load_tensor_file(tmp_path / "x.npy", event_shape=(2,))
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"x\.csv.*unknown suffix"):
        load_tensor_file(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_tensor_file(tmp_path / "nope.npy")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "k.pt")
    with pytest.raises(ValueError, match=r"k\.pt.*'data'"):
        load_tensor_file(tmp_path / "k.pt")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2)), b=np.ones(3))
    with pytest.raises(ValueError, match=r"two\.npz.*holds arrays \['a', 'b'\]"):
        load_tensor_file(tmp_path / "two.npz")
    (tmp_path / "trunc.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="trunc.npy"):
        load_tensor_file(tmp_path / "trunc.npy")
    torch.save({"data": torch.zeros(3, 2), "labels": torch.zeros(2, dtype=torch.long)}, tmp_path / "lab.pt")
    with pytest.raises(ValueError, match=r"lab\.pt.*labels have shape"):
        load_tensor_file_with_labels(tmp_path / "lab.pt")


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"data": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt.*weights_only"):
        load_tensor_file(tmp_path / "evil.pt")
    with open(tmp_path / "raw.pt", "wb") as fh:
        pickle.dump({"data": _Payload()}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"raw\.pt.*weights_only"):
        load_tensor_file(tmp_path / "raw.pt")
    obj = np.empty(2, dtype=object)
    obj[:] = [_Payload(), 1]
    np.save(tmp_path / "evil.npy", obj, allow_pickle=True)
    with pytest.raises(ValueError, match=r"evil\.npy.*unpickling"):
        load_tensor_file(tmp_path / "evil.npy")
    assert "pwned" not in capsys.readouterr().out


def _pnm(path, arr, maxval=255):
    h, w = arr.shape[:2]
    magic = b"P6" if arr.ndim == 3 else b"P5"
    dt = ">u2" if maxval > 255 else "u1"
    path.write_bytes(magic + f"\n# comment\n{w} {h}\n{maxval}\n".encode() + arr.astype(dt).tobytes())


def test_png_and_pnm_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    write_png(tmp_path / "g.png", grey)
    write_png(tmp_path / "c.png", rgb)
    write_png(tmp_path / "a.png", rgba)
    np.testing.assert_array_equal(np.round(read_image(tmp_path / "g.png")[..., 0] * 255), grey)
    np.testing.assert_array_equal(np.round(read_image(tmp_path / "c.png") * 255), rgb)
    np.testing.assert_array_equal(np.round(read_image(tmp_path / "a.png") * 255), rgba[..., :3])
    _pnm(tmp_path / "g.pgm", grey)
    _pnm(tmp_path / "c.ppm", rgb)
    wide = rng.integers(0, 1024, (6, 5))
    _pnm(tmp_path / "w.pgm", wide, maxval=1023)
    np.testing.assert_array_equal(np.round(read_image(tmp_path / "g.pgm")[..., 0] * 255), grey)
    np.testing.assert_array_equal(np.round(read_image(tmp_path / "c.ppm") * 255), rgb)
    np.testing.assert_allclose(read_image(tmp_path / "w.pgm")[..., 0], wide / 1023)
    # float input to write_png, and no temporary files left behind
    write_png(tmp_path / "f.png", torch.linspace(0, 1, 30).reshape(6, 5))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_png_filters_against_pillow(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    # smooth images make Pillow pick Sub/Up/Average/Paeth filters
    yy, xx = np.mgrid[0:17, 0:23]
    for mode, arr in [
        ("L", (xx * 7 + yy * 3).astype(np.uint8)),
        ("RGB", np.stack([xx * 9, yy * 11, xx * yy], -1).astype(np.uint8)),
        ("RGBA", rng.integers(0, 256, (17, 23, 4), dtype=np.uint8)),
    ]:
        Image.fromarray(arr, mode).save(tmp_path / f"{mode}.png", optimize=True)
        got = np.round(read_image(tmp_path / f"{mode}.png") * 255)
        np.testing.assert_array_equal(got.reshape(arr.shape[:2] + (-1,)), arr.reshape(arr.shape[:2] + (-1,))[..., :3])
    Image.fromarray(arr[..., :3]).convert("P").save(tmp_path / "p.png")
    pal = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    np.testing.assert_array_equal(np.round(read_image(tmp_path / "p.png") * 255), pal)
    Image.fromarray(arr[..., 0] > 128).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png")[..., 0], arr[..., 0] > 128)
    Image.fromarray(arr[..., :3]).save(tmp_path / "j.jpg")
    assert read_image(tmp_path / "j.jpg").shape == (17, 23, 3)


def test_load_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            write_png(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    x = load_image_folder(tmp_path)
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    x3 = load_image_folder(tmp_path, grayscale=False)
    assert x3.shape == (4, 3, 8, 8) and torch.equal(x3[:, 0], x3[:, 2])
    x16 = load_image_folder(tmp_path, size=16)
    assert x16.shape == (4, 1, 16, 16)
    _, labels, names = load_image_folder(tmp_path, return_labels=True)
    assert names == ["cat", "dog"] and labels.tolist() == [0, 0, 1, 1]
    write_png(tmp_path / "dog" / "big.png", np.zeros((9, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"different sizes.*big\.png.*size="):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=(8, 8)).shape == (5, 1, 8, 8)
    write_png(tmp_path / "rgb.png", np.zeros((8, 8, 3), dtype=np.uint8))
    assert load_image_folder(tmp_path, size=8).shape == (6, 3, 8, 8)
    assert load_image_folder(tmp_path, size=8, grayscale=True).shape == (6, 1, 8, 8)
    with pytest.raises(ValueError, match=r"class subfolder.*rgb\.png"):
        load_image_folder(tmp_path, size=8, return_labels=True)


def test_image_folder_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 5)
    with pytest.raises(ValueError, match=r"broken\.png"):
        load_image_folder(tmp_path)
    (tmp_path / "broken.png").unlink()
    (tmp_path / "x.jpg").write_bytes(b"not really")
    import builtins

    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("no PIL")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(ImportError, match="pip install pillow"):
        load_image_folder(tmp_path)


def test_write_png_errors(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_png(tmp_path / "x.png", np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        write_png(tmp_path / "x.png", np.full((2, 2), np.nan))
    with pytest.raises(TypeError, match="uint8"):
        write_png(tmp_path / "x.png", np.zeros((2, 2), dtype=np.int64))
