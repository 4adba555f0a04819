"""A small Diffusion Transformer (DiT) for images ``(B, C, H, W)``.

The image is cut into ``p×p`` patches, linearly embedded, and given a fixed 2-D sine-cosine
position code (computed for the actual grid, so any ``H, W`` divisible by ``p`` works). Each block
is pre-norm self-attention and an MLP, modulated by adaptive LayerNorm from the time/class
embedding with zero-initialised gates (adaLN-Zero), so an untrained block is the identity and
an untrained network predicts zero.

References:
    Peebles & Xie 2023, arXiv:2212.09748 (DiT, adaLN-Zero);
    Dosovitskiy et al. 2021, arXiv:2010.11929 (patch embedding);
    Ho & Salimans 2022, arXiv:2207.12598 (null class).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_inputs
from .embeddings import ClassEmbedding, SinusoidalEmbedding

__all__ = ["DiT"]


def _sincos_2d(dim: int, gh: int, gw: int, device, dtype) -> Tensor:
    """Fixed 2-D sine-cosine position code ``(gh * gw, dim)``; half the channels per axis."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64, device=device) / max(quarter, 1)))
    ys, xs = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64, device=device), torch.arange(gw, dtype=torch.float64, device=device), indexing="ij"
    )
    parts = []
    for pos in (ys.reshape(-1), xs.reshape(-1)):
        a = pos[:, None] * omega[None]
        parts += [torch.sin(a), torch.cos(a)]
    pe = torch.cat(parts, dim=1)
    if pe.shape[1] < dim:
        pe = F.pad(pe, (0, dim - pe.shape[1]))
    return pe.to(dtype)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(inner, hidden))
        self.ada = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=1)
        b, n, d = x.shape
        h = _modulate(self.norm1(x), sh1, sc1)
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + g1[:, None] * self.proj(a)
        x = x + g2[:, None] * self.mlp(_modulate(self.norm2(x), sh2, sc2))
        return x


class DiT(nn.Module):
    """Small DiT ``model(x_t, t, cond=None) → (B, C_out, H, W)``.

    Args:
        in_channels: image channels ``C``.
        patch_size: patch side ``p``; ``H`` and ``W`` must be divisible by it.
        hidden: token width (divisible by ``heads``).
        depth: number of transformer blocks.
        heads: attention heads.
        num_classes: classes for conditioning, or ``None``; ``model.null_class == num_classes``.
        out_channels: output channels (default ``in_channels``).
        mlp_ratio: MLP width as a multiple of ``hidden``.
        dropout: dropout in the MLPs.
        time_scale: multiplier of ``t`` in the sinusoidal embedding (1000 for ``t ∈ [0, 1]``).

    Shapes:
        ``x_t (B, C, H, W)``, ``t (B,)`` real, ``cond (B,)`` long or ``None``.

    References:
        Peebles & Xie 2023, arXiv:2212.09748.
    """

    def __init__(
        self,
        in_channels: int = 1,
        patch_size: int = 2,
        hidden: int = 128,
        depth: int = 4,
        heads: int = 4,
        num_classes: int | None = None,
        *,
        out_channels: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("patch_size", patch_size), ("hidden", hidden), ("depth", depth), ("heads", heads)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < 2**31:
                raise ValueError(f"{name} must be a positive int below 2**31, got {value!r}")
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.in_channels, self.patch_size, self.hidden = in_channels, patch_size, hidden
        self.out_channels = out_channels or in_channels
        self.num_classes = num_classes
        self.null_class = num_classes
        self.patch = nn.Conv2d(in_channels, hidden, patch_size, stride=patch_size)
        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(hidden, scale=time_scale), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.class_embed = ClassEmbedding(num_classes, hidden) if num_classes is not None else None
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, patch_size * patch_size * self.out_channels)
        for layer in (self.ada_out, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.xavier_uniform_(self.patch.weight.view(hidden, -1))

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        check_inputs(x_t, t, event_rank=3, name="DiT", module=self)
        b, ch, h, w = x_t.shape
        p = self.patch_size
        if ch != self.in_channels:
            raise ValueError(f"DiT expects x_t with {self.in_channels} channel(s) (B, C, H, W), got {tuple(x_t.shape)}")
        if h % p or w % p:
            raise ValueError(f"DiT with patch_size={p} needs H and W divisible by {p}, got {h}×{w}")
        if cond is not None and self.class_embed is None:
            raise ValueError("cond was given but this DiT is unconditional (num_classes=None)")
        c = self.time_embed(t.to(x_t.dtype))
        if self.class_embed is not None:
            c = c + self.class_embed(cond, b, x_t.device)
        gh, gw = h // p, w // p
        x = self.patch(x_t).flatten(2).transpose(1, 2)  # (B, N, hidden)
        x = x + _sincos_2d(self.hidden, gh, gw, x.device, x.dtype)[None]
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=1)
        x = self.out(_modulate(self.norm_out(x), shift, scale))  # (B, N, p*p*C)
        x = x.reshape(b, gh, gw, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, self.out_channels, h, w)
