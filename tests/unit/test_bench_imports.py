"""Importing a benchmark module changes nothing: no `os.environ` edits at import time. The
entry points (`python -m bench`, `bench.serve_child`, `bench.warmup_child`,
`bench.baseline_server`) call `bench.env.prepare_environment()` themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter imports each module in turn and reports what each import changed.
PROBE = """
import importlib, json, os, sys
changes = {}
for name in sys.argv[1:]:
    before = dict(os.environ)
    importlib.import_module(name)
    after = dict(os.environ)
    diff = {k: [before.get(k), after.get(k)] for k in before.keys() | after.keys()
            if before.get(k) != after.get(k)}
    if diff:
        changes[name] = diff
print(json.dumps(changes))
"""


def _environment_changes(
    modules: list[str], extra_path: Path | None = None
) -> dict[str, dict[str, list[str | None]]]:
    from bench.env import DEFAULTS

    # Without the variables the benchmarks set, so that a `setdefault` at import shows.
    env = {k: v for k, v in os.environ.items() if k not in DEFAULTS}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(p) for p in (extra_path, ROOT) if p] + [env.get("PYTHONPATH", "")]
    )
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, dict[str, list[str | None]]] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_importing_a_bench_module_leaves_the_environment_alone() -> None:
    modules = sorted(f"bench.{p.stem}" for p in (ROOT / "bench").glob("*.py"))
    assert "bench.env" in modules and "bench.serve_child" in modules
    assert _environment_changes(modules) == {}


def test_the_probe_sees_an_import_time_change(tmp_path: Path) -> None:
    """The check above can fail: a module that sets a variable when imported is caught."""
    (tmp_path / "sets_env.py").write_text(
        "import os\nos.environ.setdefault('BENCH_IMPORT_PROBE', '1')\n"
    )
    assert _environment_changes(["sets_env"], tmp_path) == {
        "sets_env": {"BENCH_IMPORT_PROBE": [None, "1"]}
    }
