"""A small U-Net for images ``(B, C, H, W)`` from 8×8 up to 64×64, conditioned on time and class.

Residual blocks (GroupNorm → SiLU → 3×3 conv, the time/class embedding added per channel,
GroupNorm → SiLU → dropout → zero-initialised 3×3 conv), one level per entry of
``channel_mults`` with ``num_res_blocks`` blocks, a strided-conv downsample between levels,
self-attention at the chosen levels and in the bottleneck, skip connections by concatenation
and nearest-neighbour upsampling. The output convolution is zero-initialised, so an untrained
network predicts zero.

References:
    Ronneberger et al. 2015, arXiv:1505.04597 (U-Net);
    Ho et al. 2020, arXiv:2006.11239, Appendix B (the diffusion U-Net);
    Dhariwal & Nichol 2021, arXiv:2105.05233 (design choices);
    Ho & Salimans 2022, arXiv:2207.12598 (null class).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_inputs
from .embeddings import ClassEmbedding, SinusoidalEmbedding

__all__ = ["UNet"]


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0 and channels // g >= 4:
            return g
    return 1


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            heads = 1
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, c/heads)
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Small U-Net ``model(x_t, t, cond=None) → (B, C_out, H, W)``.

    Args:
        in_channels: image channels ``C``.
        base_channels: channels of the first level.
        channel_mults: channel multiplier per level; ``H`` and ``W`` must be divisible by
            ``2 ** (len(channel_mults) - 1)``.
        num_classes: classes for conditioning, or ``None``. Row ``num_classes`` of the class
            embedding (``model.null_class``) is the null class; ``cond=None`` means null.
        out_channels: output channels (default ``in_channels``).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: indices of levels with self-attention (the bottleneck always has it
            when ``mid_attention``).
        mid_attention: self-attention in the bottleneck.
        heads: attention heads.
        dropout: dropout inside the residual blocks.
        time_embed_dim: width of the time/class embedding (default ``4 * base_channels``).
        time_scale: multiplier of ``t`` in the sinusoidal embedding (1000 for ``t ∈ [0, 1]``).

    Shapes:
        ``x_t (B, C, H, W)``, ``t (B,)`` real, ``cond (B,)`` long or ``None``.

    References:
        Ronneberger et al. 2015, arXiv:1505.04597; Ho et al. 2020, arXiv:2006.11239.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2),
        num_classes: int | None = None,
        *,
        out_channels: int | None = None,
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (),
        mid_attention: bool = True,
        heads: int = 4,
        dropout: float = 0.0,
        time_embed_dim: int | None = None,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("base_channels", base_channels), ("num_res_blocks", num_res_blocks)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < 2**31:
                raise ValueError(f"{name} must be a positive int below 2**31, got {value!r}")
        channel_mults = tuple(channel_mults)
        if not channel_mults or any(not isinstance(m, int) or m < 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive ints, got {channel_mults!r}")
        if any(not 0 <= i < len(channel_mults) for i in attention_levels):
            raise ValueError(f"attention_levels must index channel_mults (0..{len(channel_mults) - 1}), got {attention_levels!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.channel_mults = channel_mults
        self.num_classes = num_classes
        self.null_class = num_classes
        self.factor = 2 ** (len(channel_mults) - 1)
        emb_dim = time_embed_dim or 4 * base_channels

        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(base_channels, scale=time_scale),
            nn.Linear(base_channels, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.class_embed = ClassEmbedding(num_classes, emb_dim) if num_classes is not None else None
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        chans = [base_channels * m for m in channel_mults]
        self.down = nn.ModuleList()
        skips = [base_channels]
        c = base_channels
        for i, ch in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(c, ch, emb_dim, dropout))
                c = ch
                if i in attention_levels:
                    blocks.append(Attention(c, heads))
                skips.append(c)
            down = nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(chans) - 1 else None
            if down is not None:
                skips.append(c)
            self.down.append(nn.ModuleDict({"blocks": blocks, **({"down": down} if down is not None else {})}))

        self.mid1 = ResBlock(c, c, emb_dim, dropout)
        self.mid_attn = Attention(c, heads) if mid_attention else nn.Identity()
        self.mid2 = ResBlock(c, c, emb_dim, dropout)

        self.up = nn.ModuleList()
        for i, ch in reversed(list(enumerate(chans))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(c + skips.pop(), ch, emb_dim, dropout))
                c = ch
                if i in attention_levels:
                    blocks.append(Attention(c, heads))
            up = nn.Conv2d(c, c, 3, padding=1) if i > 0 else None
            self.up.append(nn.ModuleDict({"blocks": blocks, **({"up": up} if up is not None else {})}))
        assert not skips

        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = _zero(nn.Conv2d(c, self.out_channels, 3, padding=1))

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        check_inputs(x_t, t, event_rank=3, name="UNet", module=self)
        if x_t.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x_t with {self.in_channels} channel(s) (B, C, H, W), got {tuple(x_t.shape)}")
        h_, w_ = x_t.shape[-2:]
        if h_ % self.factor or w_ % self.factor:
            raise ValueError(
                f"UNet with {len(self.channel_mults)} levels needs H and W divisible by {self.factor}, got {h_}×{w_}"
            )
        if cond is not None and self.class_embed is None:
            raise ValueError("cond was given but this UNet is unconditional (num_classes=None)")
        emb = self.time_embed(t.to(x_t.dtype))
        if self.class_embed is not None:
            emb = emb + self.class_embed(cond, x_t.shape[0], x_t.device)
        emb = F.silu(emb)

        h = self.conv_in(x_t)
        hs = [h]
        for level in self.down:
            for block in level["blocks"]:
                if isinstance(block, ResBlock):
                    h = block(h, emb)
                    hs.append(h)
                else:  # attention follows its ResBlock: replace that skip
                    h = block(h)
                    hs[-1] = h
            if "down" in level:
                h = level["down"](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level in self.up:
            for block in level["blocks"]:
                if isinstance(block, ResBlock):
                    h = block(torch.cat([h, hs.pop()], dim=1), emb)
                else:
                    h = block(h)
            if "up" in level:
                h = level["up"](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
