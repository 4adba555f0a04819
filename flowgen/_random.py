"""Random draws that accept a generator on any device.

A ``torch.Generator`` lives on one device. flowgen draws with the generator's own device and then
moves the result, so a CPU generator works for tensors on an accelerator and gives the same numbers
on every device (seeded runs reproduce across CPU and GPU).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _draw_device(generator: torch.Generator | None, device) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device("cpu") if device is None else torch.device(device)


def _draw_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def randn(shape, *, generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal ``shape`` on ``device`` in ``dtype`` (drawn in float32/float64 on the generator's device)."""
    out = torch.randn(shape, generator=generator, dtype=_draw_dtype(dtype), device=_draw_device(generator, device))
    return out.to(device=device, dtype=dtype)


def rand(shape, *, generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform ``[0, 1)`` ``shape`` on ``device`` in ``dtype`` (drawn on the generator's device)."""
    out = torch.rand(shape, generator=generator, dtype=_draw_dtype(dtype), device=_draw_device(generator, device))
    return out.to(device=device, dtype=dtype)


def randint(high: int, shape, *, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Uniform integers in ``{0 … high − 1}`` of ``shape`` on ``device`` (drawn on the generator's device)."""
    return torch.randint(0, high, shape, generator=generator, device=_draw_device(generator, device)).to(device=device)
