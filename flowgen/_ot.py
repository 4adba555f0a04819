"""Exact minimum-cost perfect matching (the assignment problem) for a square cost matrix.

One solver for the exact OT coupling and the exact W2 metric. With uniform weights and equal sizes
the optimal transport plan is a permutation (Birkhoff–von Neumann), so two exact solvers apply:

* POT's network simplex (``ot.emd``; Bonneel et al. 2011) — the field's standard exact OT solver,
  used for ``n > 64``: on 2-D point clouds it took 3.4 ms at n = 256, 85 ms at 1024 and 0.38 s at
  2000, against 7.7 ms, 0.31 s and 3.4 s for scipy's assignment (2-core AMD EPYC);
* scipy's ``linear_sum_assignment`` (Crouse 2016) — for small problems, and as the fallback when
  POT is missing, stops before optimality, or returns a plan that is not a permutation.

Both release the GIL, so :func:`flowgen.objectives.prefetch_pairs` overlaps them with training.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["assignment"]

#: Below this size scipy's assignment is as fast as the network simplex (and has no set-up cost).
SMALL = 64
#: Network-simplex iteration cap; a run that reaches it is not optimal and falls back to scipy.
MAX_ITER = 10**8


def _network_simplex():
    try:
        from ot.lp import emd
    except ImportError:  # POT is a dependency; an install without it still solves exactly, more slowly
        return None
    return emd


def assignment(cost: np.ndarray) -> np.ndarray:
    """The column matched to each row by a minimum-cost perfect matching of ``cost``.

    Args:
        cost: ``(n, n)`` finite costs (float64 is used).

    Returns:
        ``cols (n,)`` int64 with ``Σ_i cost[i, cols[i]]`` minimal over all permutations.
    """
    cost = np.ascontiguousarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost must be a square (n, n) matrix, got shape {cost.shape}")
    n = cost.shape[0]
    emd = _network_simplex() if n > SMALL else None
    if emd is not None:
        weights = np.full(n, 1.0 / n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a stop before optimality is detected below and falls back
            plan, log = emd(weights, weights, cost, numItermax=MAX_ITER, log=True, check_marginals=False)
        if log.get("warning") is None:
            cols = plan.argmax(axis=1)
            if np.all(np.bincount(cols, minlength=n) == 1) and np.all(plan[np.arange(n), cols] > 0.5 / n):
                return cols.astype(np.int64)
    return linear_sum_assignment(cost)[1].astype(np.int64)
