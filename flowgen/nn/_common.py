"""Input checks shared by the models.

Shapes and dtypes are always checked. Values (``t`` finite) are checked only on the CPU: on an
accelerator the check would synchronise the device on every call. ``x_t`` values are not checked
(NaN in, NaN out); the samplers and objectives validate their inputs before calling a model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import checks_values


def check_inputs(x_t, t, *, event_shape: tuple | None = None, event_rank: int | None = None, name: str = "model",
                 module: torch.nn.Module | None = None) -> None:
    """Check ``x_t (B, *D)`` floating and ``t (B,)``; raise TypeError/ValueError naming the argument.

    With ``module``, ``x_t`` and ``t`` must also be on the device of its parameters, and ``x_t`` of
    their dtype unless autocast is on for that device (a mismatch is otherwise a RuntimeError deep
    inside the first layer).
    """
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
    if module is not None:
        p = next(module.parameters(), None)
        if p is not None:
            if x_t.device != p.device:
                raise ValueError(f"x_t is on device {x_t.device} but the {name}'s parameters are on {p.device}; move one of them")
            if x_t.dtype != p.dtype and not torch.is_autocast_enabled(x_t.device.type):
                raise TypeError(
                    f"x_t has dtype {x_t.dtype} but the {name}'s parameters are {p.dtype}; cast x_t "
                    f"(x_t.to({p.dtype})) or the model (model.to({x_t.dtype})), or run under torch.autocast"
                )
    if t.device != x_t.device:
        raise ValueError(f"t is on device {t.device} but x_t is on {x_t.device}; expected both on the same device")
    if t.device.type == "cpu" and checks_values() and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"t holds {int((~torch.isfinite(t)).sum())} NaN/Inf value(s); expected finite times")
