"""Reliability tests: report how many fuzz cases ran, per area, at the end of the session."""

from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*modules? in eval mode.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
warnings.filterwarnings("ignore", ".*litlogger.*")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    import _rel_harness as _harness

    if not _harness.COUNTS:
        return
    tr = terminalreporter
    tr.section("flowgen reliability fuzz")
    for area, n in sorted(_harness.COUNTS.items()):
        tr.write_line(f"{area:>18}: {n:6d} cases ({_harness.REFUSED[area]:6d} refused with a named argument, "
                      f"{n - _harness.REFUSED[area]:6d} correct results)")
    tr.write_line(f"{'total':>18}: {_harness.total():6d} cases")
