"""A time- and class-conditioned MLP for vector data ``(B, dim)``.

The input layer sees ``[x_t, emb(t)]``; the class embedding (with its learned null class) is
added to the first hidden activation; ``depth`` hidden layers of width ``hidden`` with SiLU;
a linear output of size ``dim``. ``MLP(2)`` is the 3×256 network of the flow-matching toy
benchmarks.

References:
    Lipman et al. 2023, arXiv:2210.02747 (flow matching on 2-D data with an MLP);
    Tong et al. 2024, arXiv:2302.00482 (conditional flow matching benchmarks);
    Ho & Salimans 2022, arXiv:2207.12598 (null class).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._common import check_inputs
from .embeddings import ClassEmbedding, SinusoidalEmbedding

__all__ = ["MLP"]


class MLP(nn.Module):
    """Time-conditioned MLP ``model(x_t, t, cond=None) → (B, dim)``.

    Args:
        dim: data dimension.
        hidden: width of each hidden layer.
        depth: number of hidden layers (≥ 1).
        num_classes: number of classes for conditioning, or ``None`` for an unconditional model.
            With classes, the embedding has ``num_classes + 1`` rows and ``model.null_class ==
            num_classes`` is the null class used for classifier-free guidance.
        time_embed_dim: size of the sinusoidal time embedding.
        time_scale: multiplier of ``t`` inside the embedding (1000 for ``t ∈ [0, 1]``; use a
            smaller value for inputs like ``log σ``).

    Shapes:
        ``x_t (B, dim)``, ``t (B,)`` real, ``cond (B,)`` long in ``[0, num_classes]`` or ``None``
        (null class). Output ``(B, dim)`` in ``x_t``'s dtype.

    References:
        Lipman et al. 2023, arXiv:2210.02747; Ho & Salimans 2022, arXiv:2207.12598.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        num_classes: int | None = None,
        time_embed_dim: int = 64,
        *,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth), ("time_embed_dim", time_embed_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < 2**31:
                raise ValueError(f"{name} must be a positive int below 2**31, got {value!r}")
        self.dim, self.hidden, self.depth, self.num_classes = dim, hidden, depth, num_classes
        self.time_embed = SinusoidalEmbedding(time_embed_dim, scale=time_scale)
        self.class_embed = ClassEmbedding(num_classes, hidden) if num_classes is not None else None
        self.null_class = num_classes
        self.input = nn.Linear(dim + time_embed_dim, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.output = nn.Linear(hidden, dim)
        self.act = nn.SiLU()

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        check_inputs(x_t, t, event_shape=(self.dim,), name="MLP", module=self)
        if cond is not None and self.class_embed is None:
            raise ValueError("cond was given but this MLP is unconditional (num_classes=None)")
        temb = self.time_embed(t.to(x_t.dtype))
        h = self.input(torch.cat([x_t, temb], dim=1))
        if self.class_embed is not None:
            h = h + self.class_embed(cond, x_t.shape[0], x_t.device)
        h = self.act(h)
        for layer in self.layers:
            h = self.act(layer(h))
        return self.output(h)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, depth={self.depth}, num_classes={self.num_classes}"
