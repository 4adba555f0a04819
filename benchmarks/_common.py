"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this folder is on the path)."""

from __future__ import annotations


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``"unknown"`` where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine_line() -> str:
    """``"<CPU>, <n> cores, torch <version>, 1 thread, <python>"``: the machine of a one-thread CPU result."""
    import os
    import platform

    import torch

    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread, {platform.python_version()}"


def command_line(script: str, argv) -> str:
    """``"python benchmarks/<script>.py <args>"``: how a result was made (``argv``: ``main``'s, or ``None`` for ``sys.argv``)."""
    import os
    import shlex
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(script)))
    args = list(argv if argv is not None else sys.argv[1:])
    return "python " + shlex.join([os.path.relpath(os.path.abspath(script), root)] + args)


def emit(payload: dict, md: str, *, out: str | None, name: str) -> None:
    """Print ``payload`` as JSON and the markdown ``md``; with ``out``, also write ``<out>/<name>.json`` and ``.md``."""
    import json
    import os

    print(json.dumps(payload, indent=1))
    print(md)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, name + ".json"), "w") as fh:
            json.dump(payload, fh, indent=1)
        with open(os.path.join(out, name + ".md"), "w") as fh:
            fh.write(md)
