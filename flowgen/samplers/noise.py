"""Per-sample seeded noise: sample ``i`` gets the same noise whatever else is in the batch.

Each sample has its own CPU ``torch.Generator`` seeded with its seed; its noise is drawn in
float64 on the CPU and then cast and moved, so the same seed gives the same noise on every
device and (up to rounding) in every dtype. Pass the same generators to a stochastic sampler
(``generator=generators``) to make its fresh noise per-sample too.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["seeded_generators", "seeded_noise"]


def seeded_generators(seeds) -> list[torch.Generator]:
    """One CPU generator per seed.

    Args:
        seeds: a sequence of ints or a 1-D integer tensor ``(B,)``.

    Returns:
        ``B`` generators, generator ``i`` seeded with ``seeds[i]``.
    """
    if isinstance(seeds, Tensor):
        if seeds.dim() != 1 or seeds.is_floating_point() or seeds.is_complex():
            raise TypeError(f"seeds must be a 1-D integer tensor (B,), got dtype {seeds.dtype} and shape {tuple(seeds.shape)}")
        seeds = seeds.tolist()
    if not isinstance(seeds, Sequence) or isinstance(seeds, (str, bytes)):
        raise TypeError(f"seeds must be a sequence of ints or a 1-D integer tensor, got {type(seeds).__name__}")
    out = []
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"seeds[{i}] must be a non-negative int, got {s!r}")
        g = torch.Generator(device="cpu")
        g.manual_seed(s)
        out.append(g)
    return out


def seeded_noise(seeds, shape, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Standard normal noise ``(B, *shape)`` where row ``i`` depends only on ``seeds[i]``.

    Args:
        seeds: ``B`` non-negative ints (sequence or 1-D integer tensor), or ``B`` generators
            from :func:`seeded_generators` (they advance, so a stochastic sampler can continue them).
        shape: the per-sample event shape ``D`` (tuple of ints).
        dtype: floating dtype of the result.
        device: device of the result (noise is drawn on the CPU).

    Returns:
        ``(B, *shape)`` tensor.
    """
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"shape must be a tuple of non-negative ints (the per-sample shape), got {shape!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if isinstance(seeds, (list, tuple)) and seeds and all(isinstance(g, torch.Generator) for g in seeds):
        gens = list(seeds)
    else:
        gens = seeded_generators(seeds)
    if not gens:
        return torch.empty((0, *shape), dtype=dtype, device=device)
    rows = [torch.randn(shape, generator=g, dtype=torch.float64) for g in gens]
    return torch.stack(rows).to(dtype=dtype, device=device)
