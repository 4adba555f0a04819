"""Input checks shared by the models (shape contract only: no device syncs on the hot path)."""

from __future__ import annotations

from torch import Tensor


def check_inputs(x_t, t, *, event_shape: tuple | None = None, event_rank: int | None = None, name: str = "model") -> None:
    """Check ``x_t (B, *D)`` floating and ``t (B,)``; raise TypeError/ValueError naming the argument."""
    if not isinstance(x_t, Tensor):
        raise TypeError(f"x_t must be a torch.Tensor, got {type(x_t).__name__}")
    if not x_t.is_floating_point():
        raise TypeError(f"x_t must be a floating-point tensor, got dtype {x_t.dtype}")
    if event_rank is not None and x_t.dim() != event_rank + 1:
        raise ValueError(f"{name} expects x_t of rank {event_rank + 1} (B, ...), got shape {tuple(x_t.shape)}")
    if event_shape is not None and tuple(x_t.shape[1:]) != tuple(event_shape):
        exp = ", ".join(str(d) for d in event_shape)
        raise ValueError(f"{name} expects x_t of shape (B, {exp}), got {tuple(x_t.shape)}")
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a torch.Tensor of shape (B,), got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != x_t.shape[0]:
        raise ValueError(f"t must have shape ({x_t.shape[0]},) to match x_t {tuple(x_t.shape)}, got {tuple(t.shape)}")
