r"""Embeddings of a real scalar per sample (time ``t``, or ``log σ``, or a log-SNR) and of class labels.

:class:`SinusoidalEmbedding` maps ``t`` to ``[cos(ω_k s t), sin(ω_k s t)]`` with geometric
frequencies ``ω_k = P^{-k/h}`` (``h = dim // 2``, ``P = max_period``, ``s = scale``), the
Transformer/DDPM positional code. :class:`FourierEmbedding` uses random Gaussian frequencies
``ω_k ~ N(0, scale²)`` fixed at construction: ``[cos(2π ω_k t), sin(2π ω_k t)]``.

Both accept any finite real input of shape ``(B,)`` (``t ∈ [0, 1]``, but also ``log σ`` or a
log-SNR as in EDM and consistency models), return ``(B, dim)`` in the input's dtype, and have
no range checks: the models check the range-free shape contract only.

:class:`ClassEmbedding` holds ``num_classes + 1`` rows; row ``num_classes`` is the learned *null
class* used for classifier-free guidance, and ``cond=None`` means the null class for the whole
batch.

References:
    Vaswani et al. 2017, arXiv:1706.03762, Sec. 3.5 (sinusoidal code);
    Ho et al. 2020, arXiv:2006.11239, Appendix B (time embedding of the DDPM U-Net);
    Tancik et al. 2020, arXiv:2006.10739 (random Fourier features);
    Song et al. 2021, arXiv:2011.13456, Appendix C (Gaussian Fourier embedding of log σ);
    Ho & Salimans 2022, arXiv:2207.12598 (classifier-free guidance, null label).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalEmbedding", "FourierEmbedding", "ClassEmbedding", "drop_labels"]


def _check_scalar_batch(t, name: str = "t") -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name} must have shape (B,), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal embedding ``(B,) → (B, dim)`` with geometric frequencies.

    Args:
        dim: output size (an odd ``dim`` is zero-padded by one column).
        max_period: the longest period ``P`` (frequencies run from 1 down to ``1/P``).
        scale: multiplies the input first; the default 1000 spreads ``t ∈ [0, 1]`` over the range
            of the DDPM integer steps. Use ``scale=1`` for inputs already of order 1–100.

    References:
        Vaswani et al. 2017, arXiv:1706.03762, Sec. 3.5; Ho et al. 2020, arXiv:2006.11239.
    """

    def __init__(self, dim: int, *, max_period: float = 10000.0, scale: float = 1000.0):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim, self.max_period, self.scale = dim, float(max_period), float(scale)
        half = dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float64) / max(half, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """Embed ``t`` of shape ``(B,)``; returns ``(B, dim)`` in ``t``'s floating dtype."""
        t = _check_scalar_batch(t)
        args = (t[:, None] * self.scale) * self.freqs.to(device=t.device, dtype=t.dtype)[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
        if self.dim % 2:
            emb = nn.functional.pad(emb, (0, 1))
        return emb

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period:g}, scale={self.scale:g}"


class FourierEmbedding(nn.Module):
    """Random Fourier features ``(B,) → (B, dim)``: ``[cos(2π ω t), sin(2π ω t)]``, ``ω ~ N(0, scale²)``.

    The frequencies are drawn once at construction (from ``generator`` if given, else the global
    RNG) and stored as a buffer, so they are saved in the ``state_dict``.

    Args:
        dim: output size (even; an odd ``dim`` is zero-padded by one column).
        scale: standard deviation of the frequencies; 16 suits ``t ∈ [0, 1]``, smaller values suit
            wider inputs such as ``log σ``.
        generator: optional ``torch.Generator`` for the frequencies.

    References:
        Tancik et al. 2020, arXiv:2006.10739; Song et al. 2021, arXiv:2011.13456, Appendix C.
    """

    def __init__(self, dim: int, *, scale: float = 16.0, generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        self.dim, self.scale = dim, float(scale)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=generator) * self.scale)

    def forward(self, t: Tensor) -> Tensor:
        """Embed ``t`` of shape ``(B,)``; returns ``(B, dim)`` in ``t``'s floating dtype."""
        t = _check_scalar_batch(t)
        args = 2 * math.pi * t[:, None] * self.freqs.to(dtype=t.dtype)[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
        if self.dim % 2:
            emb = nn.functional.pad(emb, (0, 1))
        return emb

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale:g}"


class ClassEmbedding(nn.Module):
    """Learned class embedding with a null class for classifier-free guidance.

    Args:
        num_classes: number of real classes ``K``; row ``K`` (:attr:`null_class`) is the null class.
        dim: embedding size.

    ``forward(cond, batch)`` takes ``cond`` a ``LongTensor (B,)`` with values in ``[0, K]`` (``K``
    meaning "no label"), or ``None`` for the null class everywhere, and returns ``(B, dim)``.

    References:
        Ho & Salimans 2022, arXiv:2207.12598.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        self.num_classes = num_classes
        self.null_class = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, cond: Tensor | None, batch: int, device: torch.device) -> Tensor:
        if cond is None:
            cond = torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        else:
            cond = check_cond(cond, batch)
            check_cond_range(cond, self.num_classes)
        return self.embedding(cond)


def check_cond(cond, batch: int) -> Tensor:
    """Validate class labels: an integer tensor of shape ``(batch,)``; returns it as ``long``."""
    if not isinstance(cond, Tensor):
        raise TypeError(f"cond must be a LongTensor of shape (B,) or None, got {type(cond).__name__}")
    if cond.is_floating_point() or cond.is_complex() or cond.dtype == torch.bool:
        raise TypeError(f"cond must be an integer (long) tensor of class indices, got dtype {cond.dtype}")
    if cond.shape != (batch,):
        raise ValueError(f"cond must have shape ({batch},) to match the batch, got {tuple(cond.shape)}")
    return cond.long()


def check_cond_range(cond: Tensor, num_classes: int) -> None:
    """On the CPU, raise ValueError unless ``0 <= cond <= num_classes`` (``num_classes`` = null class).

    Skipped on accelerators, where the check would synchronise the device on every call; there an
    out-of-range label fails inside the embedding lookup instead.
    """
    if cond.device.type == "cpu" and cond.numel() and (bool((cond < 0).any()) or bool((cond > num_classes).any())):
        raise ValueError(
            f"cond must hold class indices in [0, {num_classes}] ({num_classes} is the null class), "
            f"got values in [{int(cond.min())}, {int(cond.max())}]"
        )


def drop_labels(cond: Tensor, *, p: float, null_class: int, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by ``null_class`` with probability ``p`` (classifier-free guidance training).

    Args:
        cond: ``(B,)`` integer labels.
        p: drop probability in ``[0, 1]``.
        null_class: the index of the null class (``model.null_class``).
        generator: optional ``torch.Generator`` on ``cond``'s device.

    Returns:
        ``(B,)`` long labels.

    References:
        Ho & Salimans 2022, arXiv:2207.12598, Algorithm 1.
    """
    if isinstance(cond, Tensor) and cond.dim() != 1:
        raise ValueError(f"cond must have shape (B,), got {tuple(cond.shape)}")
    cond = check_cond(cond, cond.shape[0] if isinstance(cond, Tensor) else -1)
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    if p == 0.0:
        return cond
    u = torch.rand(cond.shape, generator=generator, device=cond.device)
    return torch.where(u < p, torch.full_like(cond, null_class), cond)
