"""Specifications of the public API for the fuzz test: valid arguments, their roles, and corruptions.

An :class:`Api` is one public callable with a set of valid keyword arguments, each tagged with a
*role* (a batch tensor ``(B, *D)``, a time tensor ``(B,)``, a name, a path, a model, a positive
integer …). :func:`cases` turns one ``Api`` into fuzz cases by replacing one argument at a time
with each corruption of its role, plus whole-call corruptions (empty batch, another float dtype
for every tensor, every tensor on another device).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

# --- roles ---------------------------------------------------------------------------------------------
BATCH = "batch"  # (B, *D) floating tensor
TIME = "time"  # (B,) floating tensor in [0, 1]
NAME = "name"  # an enum value given as a string
PATH = "path"  # a flowgen Path
MODEL = "model"  # a callable model(x_t, t[, cond])
POS_INT = "pos_int"  # an integer >= 1
POS_FLOAT = "pos_float"  # a finite number > 0
FIXED = "fixed"  # not fuzzed


@dataclasses.dataclass
class Arg:
    role: str
    value: Any
    names: tuple[str, ...] = ()  # extra names an error about this argument may use


@dataclasses.dataclass
class Case:
    label: str
    fn: Callable[[], Any]
    names: tuple[str, ...]
    check: Callable[[Any], None] | None
    allow_nonfinite: Callable[[Any], bool] | None = None


@dataclasses.dataclass
class Api:
    """One public callable and a valid call of it.

    ``result_check(kwargs)`` returns the check of a successful result for these (possibly
    corrupted) arguments, or ``None``.
    """

    area: str
    name: str
    call: Callable[..., Any]
    args: dict[str, Arg]
    result_check: Callable[[dict], Callable[[Any], None] | None] | None = None
    allow_nonfinite: Callable[[dict], Callable[[Any], bool] | None] | None = None
    skip: tuple[str, ...] = ()  # corruption labels not applicable to this API
    timeout: float = 20.0
    #: arguments whose NaN/Inf (or overflowing) values may propagate to the result: model-like calls,
    #: documented "NaN in, NaN out" (flowgen.nn, preconditioning wrappers, model-calling losses)
    passthrough: tuple[str, ...] = ()

    def kwargs(self, **replace) -> dict:
        kw = {k: a.value for k, a in self.args.items()}
        kw.update(replace)
        return kw


class _Unset:
    pass


# --- corruptions ---------------------------------------------------------------------------------------
def _with_value(x: Tensor, value: float) -> Tensor:
    y = x.detach().clone()
    if y.numel():
        y.view(-1)[0] = value
    return y


def batch_corruptions(x: Tensor) -> list[tuple[str, Any]]:
    """Malformed versions of a ``(B, *D)`` floating tensor (some of them valid: other float dtypes)."""
    b = x.shape[0]
    out = [
        ("scalar", torch.tensor(1.0)),
        ("extra_dim", x.unsqueeze(-1)),
        ("drop_event_dims", x.reshape(b, -1)[:, 0]),
        ("batch_plus_one", torch.cat([x, x[:1]])),
        ("int64", x.round().to(torch.int64)),
        ("bool", x > 0),
        ("complex64", x.to(torch.complex64)),
        ("float16", x.to(torch.float16)),
        ("bfloat16", x.to(torch.bfloat16)),
        ("float64", x.to(torch.float64)),
        ("meta", x.to("meta")),
        ("nan", _with_value(x, float("nan"))),
        ("inf", _with_value(x, float("inf"))),
        ("neg_inf", _with_value(x, float("-inf"))),
        ("list", x.tolist()),
        ("none", None),
        ("string", "x"),
        ("non_contiguous", x.transpose(0, -1).contiguous().transpose(0, -1) if x.dim() > 1 else x),
        ("huge", x * 1e30),
    ]
    if b > 1:
        out.append(("batch_minus_one", x[:-1]))
    if torch.cuda.is_available():
        out.append(("cuda", x.to("cuda")))
    return out


def time_corruptions(t: Tensor) -> list[tuple[str, Any]]:
    b = t.shape[0]
    out = [
        ("t_below_0", _with_value(t, -0.1)),
        ("t_above_1", _with_value(t, 1.5)),
        ("t_nan", _with_value(t, float("nan"))),
        ("t_inf", _with_value(t, float("inf"))),
        ("t_all_0", torch.zeros_like(t)),
        ("t_all_1", torch.ones_like(t)),
        ("t_column", t[:, None]),
        ("t_scalar", t[0].clone()),
        ("t_batch_plus_one", torch.cat([t, t[:1]])),
        ("t_int64", torch.zeros(b, dtype=torch.int64)),
        ("t_bool", torch.ones(b, dtype=torch.bool)),
        ("t_complex", t.to(torch.complex64)),
        ("t_float16", t.to(torch.float16)),
        ("t_bfloat16", t.to(torch.bfloat16)),
        ("t_float64", t.to(torch.float64)),
        ("t_meta", t.to("meta")),
        ("t_float", float(t[0])),
        ("t_list", t.tolist()),
        ("t_none", None),
    ]
    if torch.cuda.is_available():
        out.append(("t_cuda", t.to("cuda")))
    return out


NAME_CORRUPTIONS = [("unknown_name", "no-such-thing"), ("name_int", 3), ("name_none", None), ("name_empty", "")]
PATH_CORRUPTIONS = [("path_string", "RectifiedFlow"), ("path_none", None), ("path_dict", {"name": "VP"})]
MODEL_CORRUPTIONS = [
    ("model_none", None),
    ("model_wrong_shape", lambda x, t, *a: x[:, :1] if x.dim() > 1 and x.shape[1] > 1 else torch.cat([x, x], 1)),
    ("model_nan", lambda x, t, *a: torch.full_like(x, float("nan"))),
    ("model_returns_list", lambda x, t, *a: [0.0]),
]
POS_INT_CORRUPTIONS = [("int_zero", 0), ("int_negative", -2), ("int_float", 1.5), ("int_bool", True), ("int_string", "2"),
                       ("int_nan", float("nan"))]
POS_FLOAT_CORRUPTIONS = [("float_zero", 0.0), ("float_negative", -1.0), ("float_nan", float("nan")), ("float_inf", float("inf")),
                         ("float_string", "1.0"), ("float_none", None)]

#: corruptions whose non-finite result is documented for the ``passthrough`` arguments of an Api
PASSTHROUGH_LABELS = {"nan", "inf", "neg_inf", "huge", "model_nan"}

#: corruptions that break a relation between arguments (batch size, event shape, device, dtype vs a model)
RELATIONAL_LABELS = {"batch_plus_one", "batch_minus_one", "extra_dim", "drop_event_dims", "meta", "cuda", "t_batch_plus_one",
                     "t_meta", "t_cuda", "float16", "bfloat16", "float64", "t_column", "t_scalar"}

ROLE_CORRUPTIONS = {
    NAME: lambda v: NAME_CORRUPTIONS,
    PATH: lambda v: PATH_CORRUPTIONS,
    MODEL: lambda v: MODEL_CORRUPTIONS,
    POS_INT: lambda v: POS_INT_CORRUPTIONS,
    POS_FLOAT: lambda v: POS_FLOAT_CORRUPTIONS,
    BATCH: batch_corruptions,
    TIME: time_corruptions,
}


def _map_tensors(kwargs: dict, roles: dict[str, str], fn) -> dict:
    out = dict(kwargs)
    for k, role in roles.items():
        if role in (BATCH, TIME) and isinstance(out[k], Tensor):
            out[k] = fn(k, role, out[k])
    return out


def global_corruptions(api: Api) -> list[tuple[str, dict, tuple[str, ...]]]:
    """Whole-call corruptions: ``(label, kwargs, names)``."""
    roles = {k: a.role for k, a in api.args.items()}
    tensor_names = tuple(k for k, r in roles.items() if r in (BATCH, TIME))
    if not tensor_names:
        return []
    base = api.kwargs()
    out = []
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        out.append((f"all_{str(dt).replace('torch.', '')}", _map_tensors(base, roles, lambda k, r, v: v.to(dt)), tensor_names))
    out.append(("empty_batch", _map_tensors(base, roles, lambda k, r, v: v[:0]), tensor_names))
    out.append(("all_meta", _map_tensors(base, roles, lambda k, r, v: v.to("meta")), tensor_names))
    return out


def run_api(api: Api, run, *, only: set[str] | None = None) -> int:
    """Run every case of ``api`` through ``run(area, case)``; returns how many were run.

    If the valid call itself is refused (e.g. a prediction that is singular at the path's end for
    this method), a corrupted call may be refused for the same reason: the argument names that the
    valid refusal used are accepted for every case.
    """
    n = 0
    base_names: tuple[str, ...] = ()
    for case in cases(api, only=only):
        if n and base_names:
            case.names = tuple(dict.fromkeys(case.names + base_names))
        outcome, msg = run(api, case)
        if n == 0 and outcome == "refused":
            from _rel_harness import names_word

            base_names = tuple(k for k, a in api.args.items() for nm in (k, *a.names) if names_word(nm, msg))
        n += 1
    return n


def cases(api: Api, *, only: set[str] | None = None) -> Iterator[Case]:
    """Every single-argument corruption of ``api`` and every whole-call corruption."""
    base = api.kwargs()

    def make(label, kw, names, passthrough=False):
        check = api.result_check(kw) if api.result_check is not None else None
        allow = api.allow_nonfinite(kw) if api.allow_nonfinite is not None else None
        if passthrough:
            allow = lambda out: True
        return Case(f"{api.name}({label})", lambda: api.call(**kw), names, check, allow)

    yield make("valid", base, tuple(n for k, a in api.args.items() for n in (k, *a.names)))
    for argname, arg in api.args.items():
        corrupt = ROLE_CORRUPTIONS.get(arg.role)
        if corrupt is None:
            continue
        for label, bad in corrupt(arg.value):
            if label in api.skip or (only is not None and label not in only):
                continue
            passthrough = argname in api.passthrough and label in PASSTHROUGH_LABELS
            names = (argname, *arg.names)
            if arg.role == MODEL:  # flowgen's errors about a network's output say "model output …" / "net output …"
                names += ("model", "net")
            if label in ("float16", "bfloat16"):  # an overflow of the narrow dtype may be reported by naming it
                names += (label,)
            if label in RELATIONAL_LABELS:  # a mismatch between two arguments: naming either is clear
                names += tuple(n for k, a in api.args.items() if a.role in (BATCH, TIME, MODEL) for n in (k, *a.names))
            yield make(f"{argname}={label}", api.kwargs(**{argname: bad}), names, passthrough)
    for label, kw, names in global_corruptions(api):
        if label in api.skip or (only is not None and label not in only):
            continue
        names = tuple(n for k in names for n in (k, *api.args[k].names))
        if label in ("all_float16", "all_bfloat16"):
            names += (label[4:],)
        yield make(label, kw, names)
