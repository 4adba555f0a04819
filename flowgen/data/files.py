"""User data from files: tensor files (``.npy``, ``.npz``, ``.pt``) and folders of images.

Nothing untrusted is unpickled: ``.npy``/``.npz`` are read with ``numpy.load(allow_pickle=False)``
and ``.pt`` with ``torch.load(weights_only=True)``. Every refusal is a ``ValueError`` naming the
file and the reason (wrong dtype, NaN/Inf, empty, no batch dimension, wrong shape, unreadable).

Images: PNG (8/16-bit grey, grey+alpha, RGB, RGBA and palette; non-interlaced) and the netpbm
formats PGM/PPM (``P2``, ``P3``, ``P5``, ``P6``) are decoded here with the standard library
(``zlib``), so no imaging package is needed. Other formats (JPEG, BMP, GIF, interlaced PNG …) go
through Pillow when it is installed, and otherwise raise an ``ImportError`` saying
``pip install pillow``. :func:`write_png` writes 8-bit PNGs atomically (write, then rename).
"""

from __future__ import annotations

import os
import struct
import secrets
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "load_tensor_file",
    "load_tensor_file_with_labels",
    "load_image_folder",
    "read_image",
    "write_png",
    "IMAGE_SUFFIXES",
    "TENSOR_SUFFIXES",
]

TENSOR_SUFFIXES = (".npy", ".npz", ".pt", ".pth")
NATIVE_IMAGE_SUFFIXES = (".png", ".pgm", ".ppm", ".pnm")
PIL_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGE_SUFFIXES = NATIVE_IMAGE_SUFFIXES + PIL_IMAGE_SUFFIXES
#: refuse images with more pixels than this (decompression bombs)
MAX_PIXELS = 1 << 26


# --------------------------------------------------------------------------- tensor files
class _Refusal(ValueError):
    """A refused data file (a ValueError naming the file and the reason)."""


def _refuse(path, reason: str) -> ValueError:
    return _Refusal(f"data file {str(path)!r} refused: {reason}")


def _as_tensor(value, path, what: str) -> Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu":
            raise _refuse(path, f"{what} has dtype {value.dtype}; expected a floating-point or integer array")
        if value.dtype == np.uint16 or value.dtype == np.uint32 or value.dtype == np.uint64:
            value = value.astype(np.int64)
        return torch.from_numpy(value if value.flags.c_contiguous and value.flags.writeable else value.copy(order="C"))
    if isinstance(value, Tensor):
        return value
    raise _refuse(path, f"{what} is a {type(value).__name__}; expected a tensor or an array")


def _check_data(x: Tensor, path, what: str, event_shape) -> Tensor:
    if x.is_complex() or x.dtype == torch.bool or not (x.is_floating_point() or x.dtype in _INT_DTYPES):
        raise _refuse(path, f"{what} has dtype {x.dtype}; expected a floating-point or integer tensor")
    if x.dim() == 0:
        raise _refuse(path, f"{what} is a scalar; expected shape (N, *D) with a batch dimension")
    if x.numel() == 0:
        raise _refuse(path, f"{what} is empty (shape {tuple(x.shape)})")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise _refuse(path, f"{what} holds {bad} NaN/Inf value(s)")
    if event_shape is not None and tuple(x.shape[1:]) != tuple(event_shape):
        exp = ", ".join(str(d) for d in event_shape)
        raise _refuse(path, f"{what} has shape {tuple(x.shape)}; expected (N, {exp})")
    return x


_INT_DTYPES = tuple(
    getattr(torch, name) for name in ("uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64") if hasattr(torch, name)
)


def _read_tensor_file(path) -> tuple[Tensor, Tensor | None, Path]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist or is not a file")
    suffix = p.suffix.lower()
    labels = None
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as err:
            raise _refuse(p, f"cannot read it without unpickling (object arrays are not allowed): {err}") from None
        except Exception as err:  # noqa: BLE001 - any parse failure becomes a clear refusal
            raise _refuse(p, f"not a readable .npy file ({type(err).__name__}: {err})") from None
        data = _as_tensor(arr, p, "the array")
    elif suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                if "data" in z:
                    key = "data"
                elif len(keys) == 1:
                    key = keys[0]
                else:
                    raise _refuse(p, f"holds arrays {keys}; expected one array or one named 'data'")
                data = _as_tensor(z[key], p, f"array {key!r}")
                if "labels" in z:
                    labels = _as_tensor(z["labels"], p, "array 'labels'")
        except _Refusal:
            raise
        except ValueError as err:
            raise _refuse(p, f"cannot read it without unpickling: {err}") from None
        except Exception as err:  # noqa: BLE001
            raise _refuse(p, f"not a readable .npz file ({type(err).__name__}: {err})") from None
    elif suffix in (".pt", ".pth"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - UnpicklingError for code payloads, RuntimeError for garbage
            reason = (str(err).strip().splitlines() or [""])[0][:200]
            raise _refuse(
                p, f"cannot be loaded safely with torch.load(weights_only=True) ({type(err).__name__}: {reason}); "
                "it holds pickled objects other than tensors and plain containers, or is corrupt"
            ) from None
        if isinstance(obj, dict):
            if "data" not in obj:
                raise _refuse(p, f"is a dict with keys {sorted(map(str, obj))}; expected a tensor or a dict with a 'data' tensor")
            data = _as_tensor(obj["data"], p, "entry 'data'")
            if obj.get("labels") is not None:
                labels = _as_tensor(obj["labels"], p, "entry 'labels'")
        else:
            data = _as_tensor(obj, p, "the content")
    else:
        raise _refuse(p, f"unknown suffix {suffix!r}; expected one of {list(TENSOR_SUFFIXES)}")
    return data, labels, p


def load_tensor_file(path, *, dtype: torch.dtype | None = torch.float32, event_shape: tuple | None = None) -> Tensor:
    """Load a data tensor ``(N, *D)`` from ``.npy``, ``.npz`` or ``.pt``, refusing bad content.

    Args:
        path: the file. ``.npy``: one array. ``.npz``: one array, or one named ``data``.
            ``.pt``/``.pth``: a tensor, or a dict with a ``"data"`` tensor (saved with ``torch.save``).
        dtype: dtype of the result (default float32); ``None`` keeps the stored dtype.
        event_shape: if given, the required ``D`` (shape without the batch dimension).

    Returns:
        ``(N, *D)`` tensor on the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file and the reason: unknown suffix, unreadable or pickled content,
            dtype not floating/integer, a scalar, empty, NaN/Inf, or a shape other than ``(N, *event_shape)``.
    """
    data, _, p = _read_tensor_file(path)
    data = _check_data(data, p, "the data", event_shape)
    return data.to(dtype) if dtype is not None else data


def load_tensor_file_with_labels(
    path, *, dtype: torch.dtype | None = torch.float32, event_shape: tuple | None = None
) -> tuple[Tensor, Tensor | None]:
    """Like :func:`load_tensor_file`, also returning labels ``(N,)`` long (or ``None``).

    Labels come from the ``"labels"`` entry of a ``.pt`` dict or the ``labels`` array of a
    ``.npz``; they must be integers of shape ``(N,)`` and non-negative.
    """
    data, labels, p = _read_tensor_file(path)
    data = _check_data(data, p, "the data", event_shape)
    if labels is not None:
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise _refuse(p, f"labels have dtype {labels.dtype}; expected integers")
        if labels.shape != (data.shape[0],):
            raise _refuse(p, f"labels have shape {tuple(labels.shape)}; expected ({data.shape[0]},) to match the data")
        if bool((labels < 0).any()):
            raise _refuse(p, "labels hold negative values; expected class indices >= 0")
        labels = labels.long()
    return (data.to(dtype) if dtype is not None else data), labels


# --------------------------------------------------------------------------- images
def _read_pnm(data: bytes, path) -> np.ndarray:
    """Decode PGM/PPM (P2, P3, P5, P6) into ``(H, W, C)`` float in ``[0, 1]``."""
    magic = data[:2]
    if magic not in (b"P2", b"P3", b"P5", b"P6"):
        raise _refuse(path, f"unsupported netpbm magic {magic!r}; expected P2, P3, P5 or P6")
    channels = 3 if magic in (b"P3", b"P6") else 1
    fields, pos = [], 2
    while len(fields) < 3:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if pos < len(data) and data[pos : pos + 1] == b"#":
            while pos < len(data) and data[pos : pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace() and data[pos : pos + 1] != b"#":
            pos += 1
        if start == pos:
            raise _refuse(path, "truncated netpbm header")
        fields.append(int(data[start:pos]))
    width, height, maxval = fields
    if width <= 0 or height <= 0 or not 0 < maxval < 65536:
        raise _refuse(path, f"bad netpbm header (width={width}, height={height}, maxval={maxval})")
    _check_pixels(width, height, path)
    count = width * height * channels
    if magic in (b"P5", b"P6"):
        pos += 1  # exactly one whitespace byte after maxval
        dt = np.dtype(">u2") if maxval > 255 else np.dtype("u1")
        raw = data[pos : pos + count * dt.itemsize]
        if len(raw) < count * dt.itemsize:
            raise _refuse(path, "truncated netpbm pixel data")
        arr = np.frombuffer(raw, dtype=dt).astype(np.float64)
    else:
        arr = np.array(data[pos:].split()[:count], dtype=np.float64)
        if arr.size < count:
            raise _refuse(path, "truncated netpbm pixel data")
    return (arr / maxval).reshape(height, width, channels)


def _check_pixels(width, height, path):
    if width * height > MAX_PIXELS:
        raise _refuse(path, f"image of {width}×{height} pixels exceeds the limit of {MAX_PIXELS} pixels")


def _unfilter(raw: bytes, width: int, height: int, bpp: int, row_bytes: int, path) -> np.ndarray:
    """Undo PNG scanline filters. Returns ``(height, row_bytes)`` uint8."""
    stride = row_bytes + 1
    if len(raw) < stride * height:
        raise _refuse(path, "truncated PNG image data")
    buf = np.frombuffer(raw, dtype=np.uint8)[: stride * height].reshape(height, stride)
    out = np.zeros((height, row_bytes), dtype=np.uint8)
    prev = np.zeros(row_bytes, dtype=np.int32)
    for y in range(height):
        ftype = int(buf[y, 0])
        line = buf[y, 1:].astype(np.int32)
        if ftype == 0:
            cur = line
        elif ftype == 1:  # Sub
            if row_bytes % bpp == 0:
                cur = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) & 0xFF
            else:
                cur = line.copy()
                for i in range(bpp, row_bytes):
                    cur[i] = (cur[i] + cur[i - bpp]) & 0xFF
        elif ftype == 2:  # Up
            cur = (line + prev) & 0xFF
        elif ftype == 3:  # Average
            cur = line.copy()
            for i in range(row_bytes):
                left = cur[i - bpp] if i >= bpp else 0
                cur[i] = (cur[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:  # Paeth
            cur = line.copy()
            for i in range(row_bytes):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                cur[i] = (cur[i] + pred) & 0xFF
        else:
            raise _refuse(path, f"bad PNG filter type {ftype} in row {y}")
        out[y] = cur
        prev = cur
    return out


def _read_png(data: bytes, path) -> np.ndarray | None:
    """Decode a non-interlaced PNG into ``(H, W, C)`` float in ``[0, 1]``; ``None`` if unsupported here."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise _refuse(path, "not a PNG file (bad signature)")
    pos, idat, palette, header = 8, [], None, None
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if len(chunk) < length:
            raise _refuse(path, "truncated PNG chunk")
        pos += 12 + length
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif ctype == b"PLTE":
            palette = np.frombuffer(chunk, dtype=np.uint8).reshape(-1, 3)
        elif ctype == b"IDAT":
            idat.append(chunk)
        elif ctype == b"IEND":
            break
    if header is None:
        raise _refuse(path, "PNG without IHDR chunk")
    width, height, depth, color, _, _, interlace = header
    if width == 0 or height == 0:
        raise _refuse(path, "PNG of zero size")
    _check_pixels(width, height, path)
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color)
    if samples is None:
        raise _refuse(path, f"bad PNG colour type {color}")
    if interlace or depth not in (8, 16) and not (color in (0, 3) and depth in (1, 2, 4)):
        return None  # let Pillow handle it
    bits = depth * samples
    row_bytes = (width * bits + 7) // 8
    limit = (row_bytes + 1) * height
    try:
        d = zlib.decompressobj()
        raw = d.decompress(b"".join(idat), limit)
    except zlib.error as err:
        raise _refuse(path, f"corrupt PNG image data ({err})") from None
    rows = _unfilter(raw, width, height, max(1, bits // 8), row_bytes, path)
    if depth == 16:
        arr = rows.view(">u2").astype(np.float64).reshape(height, width, samples) / 65535.0
    elif depth == 8:
        arr = rows.astype(np.float64).reshape(height, width, samples)
    else:  # packed 1/2/4-bit grey or palette
        bitsarr = np.unpackbits(rows, axis=1).reshape(height, row_bytes * 8 // depth, depth)
        weights = 1 << np.arange(depth - 1, -1, -1)
        arr = (bitsarr * weights).sum(-1)[:, :width, None].astype(np.float64)
    if color == 3:
        if palette is None:
            raise _refuse(path, "palette PNG without PLTE chunk")
        idx = arr[..., 0].astype(np.int64)
        if idx.max() >= len(palette):
            raise _refuse(path, "palette index out of range")
        return palette[idx].astype(np.float64) / 255.0
    if depth == 8:
        return arr / 255.0
    if depth < 8:
        return arr / float((1 << depth) - 1)
    return arr


def _read_with_pil(path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            f"reading {str(path)!r} needs Pillow (flowgen itself reads only PNG and PGM/PPM): pip install pillow"
        ) from None
    with Image.open(path) as im:
        _check_pixels(im.width, im.height, path)
        mode = "L" if im.mode in ("1", "L", "I", "I;16", "F", "LA") else "RGB"
        return np.asarray(im.convert(mode), dtype=np.float64).reshape(im.height, im.width, -1) / 255.0


def read_image(path) -> np.ndarray:
    """Read one image as ``(H, W, C)`` float64 in ``[0, 1]`` with ``C`` 1 (grey) or 3 (colour).

    Alpha channels are dropped. PNG and PGM/PPM are decoded here; other formats need Pillow.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in NATIVE_IMAGE_SUFFIXES:
        data = p.read_bytes()
        img = _read_pnm(data, p) if suffix != ".png" else _read_png(data, p)
        if img is None:
            img = _read_with_pil(p)
    elif suffix in PIL_IMAGE_SUFFIXES:
        img = _read_with_pil(p)
    else:
        raise _refuse(p, f"unknown image suffix {suffix!r}; expected one of {list(IMAGE_SUFFIXES)}")
    if img.shape[2] in (2, 4):  # drop alpha
        img = img[..., :-1]
    return img


def _list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def load_image_folder(path, size=None, grayscale: bool | None = None, *, return_labels: bool = False):
    """Load every image under a folder (recursively, sorted by path) as ``(N, C, H, W)`` in ``[-1, 1]``.

    Args:
        path: the folder.
        size: ``None`` (all images must share one size), an int (square) or ``(H, W)``; images are
            resized with antialiased bilinear interpolation.
        grayscale: ``True`` → 1 channel (ITU-R 601 luma), ``False`` → 3 channels (grey images
            repeated), ``None`` → 1 channel if every image is grey, else 3.
        return_labels: also return ``(N,)`` long labels: the index of each image's top-level
            subfolder in the sorted list of subfolder names (ImageFolder layout); every image must
            then sit in a subfolder.

    Returns:
        ``(N, C, H, W)`` float32 tensor, or ``(images, labels, class_names)`` with ``return_labels``.

    Raises:
        FileNotFoundError: no such folder. ValueError: no images, mixed sizes without ``size``,
        unreadable files (naming the file). ImportError: a format that needs Pillow, without it.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(path)!r} does not exist or is not a folder")
    if size is not None:
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        size = tuple(size)
        if len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size):
            raise ValueError(f"size must be None, a positive int or (H, W), got {size!r}")
    if grayscale not in (None, True, False):
        raise TypeError(f"grayscale must be None, True or False, got {grayscale!r}")
    files = _list_images(root)
    if not files:
        raise ValueError(f"image folder {str(path)!r} holds no images with suffixes {list(IMAGE_SUFFIXES)}")
    images = []
    for f in files:
        img = torch.from_numpy(read_image(f)).permute(2, 0, 1)  # (C, H, W) float64 in [0, 1]
        if size is not None and tuple(img.shape[1:]) != size:
            img = torch.nn.functional.interpolate(img[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        images.append(img)
    shapes = {tuple(im.shape[1:]) for im in images}
    if len(shapes) > 1:
        first = tuple(images[0].shape[1:])
        odd = next(f for f, im in zip(files, images) if tuple(im.shape[1:]) != first)
        raise ValueError(
            f"images in {str(path)!r} have different sizes ({str(files[0])!r} is {first[0]}×{first[1]}, "
            f"{str(odd)!r} is not); pass size=(H, W) to resize them"
        )
    all_grey = all(im.shape[0] == 1 for im in images)
    channels = 1 if (grayscale or (grayscale is None and all_grey)) else 3
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)[:, None, None]
    out = []
    for im in images:
        if channels == 1 and im.shape[0] == 3:
            im = (im * luma).sum(0, keepdim=True)
        elif channels == 3 and im.shape[0] == 1:
            im = im.expand(3, -1, -1)
        out.append(im)
    x = (torch.stack(out).clamp(0, 1) * 2 - 1).to(torch.float32)
    if not return_labels:
        return x
    rel = [f.relative_to(root).parts for f in files]
    loose = [str(f) for f, r in zip(files, rel) if len(r) < 2]
    if loose:
        raise ValueError(f"return_labels=True needs every image in a class subfolder of {str(path)!r}; {loose[0]!r} is not")
    names = sorted({r[0] for r in rel})
    labels = torch.tensor([names.index(r[0]) for r in rel], dtype=torch.long)
    return x, labels, names


def write_png(path, image) -> None:
    """Write an 8-bit PNG atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        path: destination file.
        image: ``(H, W)`` grey or ``(H, W, 3)`` RGB (or ``(H, W, 1)``), uint8, or floating in
            ``[0, 1]`` (clipped and rounded). A torch tensor or numpy array.
    """
    arr = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"image must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind != "f":
            raise TypeError(f"image must be uint8 or floating in [0, 1], got dtype {arr.dtype}")
        if not np.isfinite(arr).all():
            raise ValueError("image holds NaN/Inf values")
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    height, width = arr.shape[:2]
    color = {2: 0}.get(arr.ndim, {3: 2, 4: 6}.get(arr.shape[-1]))
    rows = arr.reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as fh:  # honours the umask, unlike mkstemp's 0600
            fh.write(png)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
