"""The fuzz harness: run one call, classify its outcome, count it.

A *case* is one call of a public function with (possibly) malformed arguments. Its outcome is
acceptable in exactly two ways:

* it **works**: it returns, every tensor (and float) in the result is finite, and the case's own
  ``check`` (shape, dtype) passes;
* it is **refused** with ``ValueError`` or ``TypeError`` whose message names one of the case's
  argument names (the argument that was malformed).

Anything else fails the test: another exception type (``RuntimeError`` from deep inside torch,
``IndexError``, ``AttributeError`` …), a refusal that does not say which argument is wrong, a
silent NaN/Inf in the result, or a call that runs past the per-case time limit (``signal`` timer,
so a hang cannot stall the suite).

Every case is counted in :data:`COUNTS` (per area); ``tests/reliability/conftest.py`` prints the
totals at the end of the run.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import re
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

#: area → number of cases tried (works + refused).
COUNTS: collections.Counter = collections.Counter()
#: area → number of cases that were refused with a clear error.
REFUSED: collections.Counter = collections.Counter()

#: the message of the latest refusal (read by ``_specs.run_api``).
LAST_REFUSAL = [""]

#: default per-case wall-clock limit in seconds.
CASE_TIMEOUT = 20.0


class CaseTimeout(BaseException):
    """Raised by the timer signal when a case runs past its limit (not an Exception: nothing may swallow it)."""


class CaseFailure(AssertionError):
    """A case whose outcome is neither a correct result nor a clear ValueError/TypeError."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`CaseTimeout` in the main thread after ``seconds`` (no-op outside the main thread)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout(f"case ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def nonfinite_in(obj, where: str = "result", depth: int = 0) -> list[str]:
    """Places in ``obj`` (tensors, floats, containers, dataclasses, namedtuples) holding NaN/Inf."""
    if depth > 6:
        return []
    if isinstance(obj, Tensor):
        if obj.is_floating_point() or obj.is_complex():
            if obj.device.type == "meta":
                return []
            if not bool(torch.isfinite(obj).all()):
                return [f"{where} {tuple(obj.shape)} {obj.dtype}"]
        return []
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [f"{where}={obj}"]
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            out += nonfinite_in(v, f"{where}[{k!r}]", depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        out = []
        for i, v in enumerate(obj):
            out += nonfinite_in(v, f"{where}[{i}]", depth + 1)
        return out
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = []
        for f in dataclasses.fields(obj):
            out += nonfinite_in(getattr(obj, f.name), f"{where}.{f.name}", depth + 1)
        return out
    return []


def run_case(area: str, label: str, fn: Callable[[], Any], *, names: Iterable[str],
             check: Callable[[Any], None] | None = None, timeout: float = CASE_TIMEOUT,
             allow_nonfinite: Callable[[Any], bool] | None = None) -> str:
    """Run one case; return ``"ok"`` or ``"refused"``, or raise :class:`CaseFailure`.

    Args:
        area: bucket for the counts (``"paths"``, ``"samplers"`` …).
        label: what was called with what, for the failure message.
        fn: the call.
        names: argument names one of which a ValueError/TypeError message must contain.
        check: extra checks on a returned result (raise AssertionError to fail).
        timeout: per-case wall-clock limit.
        allow_nonfinite: predicate on the result that documents where NaN/Inf is the correct answer
            (e.g. ``log_snr`` at an end where ``σ = 0``).
    """
    names = tuple(names)
    COUNTS[area] += 1
    try:
        with time_limit(timeout):
            result = fn()
    except CaseTimeout:
        raise CaseFailure(f"[{area}] {label}: no answer within {timeout} s (hang?)") from None
    except (ValueError, TypeError) as err:
        msg = str(err)
        if names and not any(names_word(n, msg) for n in names):
            raise CaseFailure(
                f"[{area}] {label}: {type(err).__name__} does not name the argument (expected one of {names}): {msg!r}"
            ) from err
        if "\n" in msg.strip() and len(msg) > 2000:
            raise CaseFailure(f"[{area}] {label}: error message is a wall of text ({len(msg)} chars)") from err
        REFUSED[area] += 1
        LAST_REFUSAL[0] = msg
        return "refused"
    except CaseFailure:
        raise
    except Exception as err:
        raise CaseFailure(f"[{area}] {label}: raised {type(err).__name__} (expected a result or ValueError/TypeError): {err}") from err
    bad = nonfinite_in(result)
    if bad and not (allow_nonfinite is not None and allow_nonfinite(result)):
        raise CaseFailure(f"[{area}] {label}: returned non-finite values silently: {bad[:3]}")
    if check is not None:
        try:
            check(result)
        except AssertionError as err:
            raise CaseFailure(f"[{area}] {label}: wrong result: {err}") from None
    return "ok"


def names_word(name: str, msg: str) -> bool:
    """Whether ``name`` occurs in ``msg`` as a whole word (``x`` does not match ``x_t`` or ``max``)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", msg) is not None


def total() -> int:
    return sum(COUNTS.values())


# --- result checks -----------------------------------------------------------------------------------
def tensor_like(shape, dtypes) -> Callable[[Any], None]:
    """A check: the result is a tensor of ``shape`` whose dtype is in ``dtypes``."""
    shape = tuple(shape)
    dtypes = tuple(dtypes)

    def check(out):
        assert isinstance(out, Tensor), f"expected a Tensor, got {type(out).__name__}"
        assert tuple(out.shape) == shape, f"shape {tuple(out.shape)}, expected {shape}"
        assert out.dtype in dtypes, f"dtype {out.dtype}, expected one of {dtypes}"

    return check
