"""core/cpu_priority.yield_cpu: a process yields the CPU by raising its niceness, never the
other way (run in a child process, so the test runner keeps its own priority)."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import json, os
from core.cpu_priority import yield_cpu
start = os.getpriority(os.PRIO_PROCESS, 0)
unset = yield_cpu(None)
higher = yield_cpu(min(start + 2, 19))
lower = yield_cpu(max(start - 1, 0))
print(json.dumps([start, unset, higher, lower]))
"""


def test_yield_cpu_only_ever_yields() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], check=True, capture_output=True, text=True
    ).stdout
    start, unset, higher, lower = json.loads(out)
    assert unset == start
    assert higher == min(start + 2, 19)
    assert lower == higher  # asking for a higher priority changes nothing
