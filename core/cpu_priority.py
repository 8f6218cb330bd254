"""Which process gets the CPU first when the models share the cores (a CPU-only box).

Ray starts its worker processes, Serve replicas included, at niceness 15. A deployment may
yield further (up to 19) so that the others run first; raising a priority would need a
privilege a server should not hold, so a process is never made less nice than it is.
"""

from __future__ import annotations

import os


def yield_cpu(nice: int | None) -> int:
    """Make this process at least `nice` (Unix niceness, 0-19; None: leave it); its niceness."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice is not None and nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    return os.getpriority(os.PRIO_PROCESS, 0)
