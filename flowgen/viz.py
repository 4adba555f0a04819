"""Dependency-free PNG figures: scatter plots of 2-D samples and grids of images.

Everything is drawn with numpy into an RGB array and written by a small PNG encoder
(``zlib`` + ``struct``), so plotting needs no plotting library. Titles use a built-in 5×7
bitmap font (upper-case letters, digits and a few symbols).

* :func:`scatter_png` — one or more panels side by side, each with one or more point clouds.
* :func:`image_grid_png` — a grid of images ``(N, C, H, W)`` (``C`` = 1 or 3).
* :func:`write_png` / :func:`read_png` — the encoder and a decoder for what it writes.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["write_png", "read_png", "scatter_png", "image_grid_png", "render_scatter", "render_image_grid", "COLORS"]

#: Default series colours (RGB in [0, 1]): samples blue, reference grey, then orange, green, red, purple.
COLORS = [(0.12, 0.47, 0.71), (0.55, 0.55, 0.55), (1.0, 0.50, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.40, 0.74)]

# --------------------------------------------------------------------------------------------
# PNG encoding
# --------------------------------------------------------------------------------------------
_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _to_uint8(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(np.asarray(arr, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    return arr


def write_png(path, image) -> str:
    """Write an image as an 8-bit PNG (written to a temporary file, then renamed).

    Args:
        path: output file.
        image: ``(H, W)`` grey or ``(H, W, 3)`` RGB; ``uint8``, or floats in ``[0, 1]``.

    Returns:
        The path written.
    """
    arr = _to_uint8(image)
    if arr.ndim == 2:
        color_type, channels = 0, 1
    elif arr.ndim == 3 and arr.shape[2] == 3:
        color_type, channels = 2, 3
    else:
        raise ValueError(f"image must have shape (H, W) or (H, W, 3), got {arr.shape}")
    h, w = arr.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"image must be non-empty, got shape {arr.shape}")
    rows = np.concatenate([np.zeros((h, 1), np.uint8), arr.reshape(h, w * channels)], axis=1)
    data = _SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
    data += _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _chunk(b"IEND", b"")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def read_png(path) -> np.ndarray:
    """Decode an 8-bit grey or RGB, non-interlaced PNG (any filter type) into ``uint8`` ``(H, W[, 3])``."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.startswith(_SIGNATURE):
        raise ValueError(f"{path!r} is not a PNG file")
    pos, idat, header = len(_SIGNATURE), b"", None
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos:pos + 4])
        tag, body = raw[pos + 4:pos + 8], raw[pos + 8:pos + 8 + n]
        pos += 12 + n
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        elif tag == b"IEND":
            break
    if header is None:
        raise ValueError(f"{path!r} has no IHDR chunk")
    w, h, depth, color_type, _, _, interlace = header
    if depth != 8 or color_type not in (0, 2) or interlace:
        raise ValueError(f"{path!r}: only 8-bit grey/RGB non-interlaced PNGs are supported")
    c = 1 if color_type == 0 else 3
    stride = w * c
    data = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, stride + 1)
    out = np.zeros((h, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for y in range(h):
        ftype, line = data[y, 0], data[y, 1:].astype(np.int32)
        cur = np.zeros(stride, np.int32)
        for x in range(stride):
            a = cur[x - c] if x >= c else 0
            b = prev[x]
            cc = prev[x - c] if x >= c else 0
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            else:
                p = a + b - cc
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else cc)
            cur[x] = (line[x] + pred) & 0xFF
        out[y], prev = cur, cur
    img = out.astype(np.uint8)
    return img.reshape(h, w) if c == 1 else img.reshape(h, w, 3)


# --------------------------------------------------------------------------------------------
# a 5×7 bitmap font for titles
# --------------------------------------------------------------------------------------------
_FONT = {
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E), "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F), "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02), "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E), "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E), "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11), "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E), "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F), "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F), "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E), "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11), "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11), "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D), "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E), "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A), "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04), "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    " ": (0, 0, 0, 0, 0, 0, 0), ".": (0, 0, 0, 0, 0, 0x0C, 0x0C), "-": (0, 0, 0, 0x1F, 0, 0, 0),
    "=": (0, 0, 0x1F, 0, 0x1F, 0, 0), ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0), "_": (0, 0, 0, 0, 0, 0, 0x1F),
    "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0), "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08), ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08),
    "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0), "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03),
    "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04),
}


def _text_mask(text: str, scale: int = 2) -> np.ndarray:
    """Boolean mask ``(7·scale, 6·len·scale)`` of ``text`` in the 5×7 font (lower case drawn as upper case)."""
    glyphs = [_FONT.get(ch.upper(), _FONT["?"]) for ch in text]
    mask = np.zeros((7, 6 * max(len(glyphs), 1)), bool)
    for i, rows in enumerate(glyphs):
        for y, bits in enumerate(rows):
            for x in range(5):
                if bits & (1 << (4 - x)):
                    mask[y, 6 * i + x] = True
    return np.kron(mask, np.ones((scale, scale), bool))


def _draw_text(canvas: np.ndarray, text: str, y: int, x_center: int, scale: int = 2, color=(0.1, 0.1, 0.1)) -> None:
    mask = _text_mask(text, scale)
    h, w = mask.shape
    x0 = max(0, x_center - w // 2)
    w = min(w, canvas.shape[1] - x0)
    h = min(h, canvas.shape[0] - y)
    if w <= 0 or h <= 0:
        return
    region = canvas[y:y + h, x0:x0 + w]
    region[mask[:h, :w]] = color


# --------------------------------------------------------------------------------------------
# scatter plots
# --------------------------------------------------------------------------------------------
def _as_points(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {arr.shape}")
    return arr[np.isfinite(arr).all(axis=1)]


def _auto_limits(clouds: list[np.ndarray]) -> tuple[float, float, float, float]:
    pts = np.concatenate([c for c in clouds if len(c)], axis=0) if any(len(c) for c in clouds) else np.zeros((1, 2))
    lo = np.quantile(pts, 0.002, axis=0)
    hi = np.quantile(pts, 0.998, axis=0)
    center, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6) * 1.1
    return center[0] - half, center[0] + half, center[1] - half, center[1] + half


def render_scatter(panels, *, size: int = 320, limits=None, alpha: float = 0.6, radius: int = 1) -> np.ndarray:
    """Draw scatter panels side by side into an RGB float array ``(H, W, 3)`` in ``[0, 1]``.

    Args:
        panels: a sequence of panels; each panel is ``(title, clouds)`` where ``clouds`` is a
            sequence of ``(points (N, 2), color)`` or of bare ``(N, 2)`` arrays (colours from :data:`COLORS`).
        size: side of each square panel in pixels.
        limits: ``(xmin, xmax, ymin, ymax)`` shared by all panels; by default the 0.2–99.8 %
            range of all points, square.
        alpha: opacity of one point (overlapping points darken).
        radius: point radius in pixels.
    """
    prepared = []
    for panel in panels:
        title, clouds = panel if isinstance(panel, tuple) and len(panel) == 2 and isinstance(panel[0], str) else ("", panel)
        items = []
        for j, c in enumerate(clouds):
            if isinstance(c, tuple) and len(c) == 2 and not hasattr(c[1], "shape") and len(c[1]) == 3:
                pts, color = c
            else:
                pts, color = c, COLORS[j % len(COLORS)]
            items.append((_as_points(pts), np.asarray(color, dtype=np.float64)))
        prepared.append((title, items))
    if not prepared:
        raise ValueError("panels must not be empty")
    if limits is None:
        limits = _auto_limits([p for _, items in prepared for p, _ in items])
    xmin, xmax, ymin, ymax = map(float, limits)
    title_h = 24 if any(t for t, _ in prepared) else 0
    gap = 8
    width = len(prepared) * size + (len(prepared) + 1) * gap
    canvas = np.ones((size + title_h + 2 * gap, width, 3))
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if dy * dy + dx * dx <= radius * radius]
    for k, (title, items) in enumerate(prepared):
        x0, y0 = gap + k * (size + gap), gap + title_h
        panel = canvas[y0:y0 + size, x0:x0 + size]
        for pts, color in items:
            if not len(pts):
                continue
            px = np.floor((pts[:, 0] - xmin) / (xmax - xmin) * (size - 1) + 0.5).astype(np.int64)
            py = np.floor((ymax - pts[:, 1]) / (ymax - ymin) * (size - 1) + 0.5).astype(np.int64)
            counts = np.zeros((size, size))
            for dy, dx in offsets:
                yy, xx = py + dy, px + dx
                ok = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
                np.add.at(counts, (yy[ok], xx[ok]), 1.0)
            cover = 1.0 - (1.0 - alpha) ** counts
            panel[...] = panel * (1.0 - cover[..., None]) + color[None, None, :] * cover[..., None]
        frame = (0.75, 0.75, 0.75)
        panel[0, :], panel[-1, :], panel[:, 0], panel[:, -1] = frame, frame, frame, frame
        if title:
            _draw_text(canvas, title, gap // 2 + 2, x0 + size // 2)
    return canvas


def scatter_png(path, panels, **kwargs) -> str:
    """Write :func:`render_scatter` of ``panels`` to a PNG. A bare ``(N, 2)`` array is one panel.

    Example:
        >>> scatter_png("moons.png", [("DATA", [ref]), ("SAMPLES", [samples])])  # doctest: +SKIP
    """
    if hasattr(panels, "shape"):
        panels = [("", [panels])]
    return write_png(path, render_scatter(panels, **kwargs))


# --------------------------------------------------------------------------------------------
# image grids
# --------------------------------------------------------------------------------------------
def render_image_grid(images, *, nrow: int | None = None, scale: int = 4, pad: int = 2,
                      value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` (``C`` = 1 or 3) into an RGB array, nearest-neighbour upscaled.

    Args:
        images: array or tensor; values mapped from ``value_range`` to ``[0, 1]`` and clipped.
        nrow: images per row (default ``ceil(sqrt(N))``).
        scale: integer upscaling factor.
        pad: pixels between images (before scaling is not applied to padding).
    """
    if hasattr(images, "detach"):
        images = images.detach().cpu().float().numpy()
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or arr.shape[0] < 1:
        raise ValueError(f"images must have shape (N, C, H, W) with C in (1, 3), got {arr.shape}")
    lo, hi = value_range
    arr = np.clip((np.nan_to_num(arr, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    if arr.shape[1] == 1:
        arr = np.repeat(arr, 3, axis=1)
    n, _, h, w = arr.shape
    nrow = int(nrow or int(np.ceil(np.sqrt(n))))
    ncol_rows = int(np.ceil(n / nrow))
    hs, ws = h * scale, w * scale
    canvas = np.ones((ncol_rows * (hs + pad) + pad, nrow * (ws + pad) + pad, 3))
    for i in range(n):
        r, c = divmod(i, nrow)
        img = np.kron(arr[i].transpose(1, 2, 0), np.ones((scale, scale, 1)))
        y, x = pad + r * (hs + pad), pad + c * (ws + pad)
        canvas[y:y + hs, x:x + ws] = img
    return canvas


def image_grid_png(path, images, **kwargs) -> str:
    """Write :func:`render_image_grid` of ``images (N, C, H, W)`` to a PNG."""
    return write_png(path, render_image_grid(images, **kwargs))


def is_image_shape(shape: Sequence[int]) -> bool:
    """Whether a per-sample shape looks like an image ``(C, H, W)`` with ``C`` in (1, 3)."""
    return len(shape) == 3 and shape[0] in (1, 3)
