"""Count the host reads of tensor values in a block of code: the device synchronisations it would make on a GPU.

``bool(t)``, ``t.item()``, ``float(t)``, ``int(t)``, ``t.tolist()``, ``t.nonzero()``, ``t.numpy()``
and ``t.cpu()`` of a tensor not on the CPU each wait for the device on a GPU. Counted on the CPU,
the same code makes the same reads, so a CPU test can pin a training step's synchronisations
(``benchmarks/distill_step_overhead.py`` counts them on a real GPU)::

    with HostReads() as reads:
        loss = step(batch)
    assert reads.count == 0, reads.where
"""

from __future__ import annotations

import collections
import traceback

from torch.overrides import TorchFunctionMode

__all__ = ["HostReads"]

#: Tensor functions that read values back to the host.
READS = frozenset({"__bool__", "item", "__float__", "__int__", "__index__", "tolist", "nonzero", "numpy", "cpu"})


def _place(name: str) -> str:
    """``"<file under flowgen>:<line> <name>"`` of the innermost flowgen frame calling, else ``name``."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        file = frame.filename.replace("\\", "/")
        if "/flowgen/" in file:
            return f"{file.rsplit('/flowgen/', 1)[-1]}:{frame.lineno} {name}"
    return name


class HostReads(TorchFunctionMode):
    """A ``with`` block that counts host reads of tensor values (see the module docstring).

    Attributes:
        where: ``Counter`` of ``"<file under flowgen>:<line> <function>"`` (or the bare function name
            for reads outside flowgen) to the number of reads made there.
    """

    def __init__(self):
        super().__init__()
        self.where: collections.Counter = collections.Counter()

    @property
    def count(self) -> int:
        """Host reads so far."""
        return sum(self.where.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS and not (name == "cpu" and args and getattr(args[0], "device", None) is not None
                                  and args[0].device.type == "cpu"):
            self.where[_place(name)] += 1
        return func(*args, **(kwargs or {}))
