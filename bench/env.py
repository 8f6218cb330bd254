"""The benchmarks' process environment: where the repository is, the variables every
benchmark process needs before the libraries that read them are imported, and the
environment handed to the processes the benchmarks start.

Nothing changes at import. `prepare_environment()` is called first thing by each entry point
(`python -m bench`, and the child processes `bench.serve_child`, `bench.warmup_child` and
`bench.baseline_server`), before any of them imports Hugging Face or Ray code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Set (where not set already) in every benchmark process.
DEFAULTS: dict[str, str] = {
    # huggingface_hub reads it once, when first imported: set it before anything imports it.
    "HF_HUB_OFFLINE": "1",
    # The benchmarks start Rays of their own on loopback (`address="local"`).
    "RAY_AUTH_MODE": "disabled",
}


def prepare_environment() -> None:
    """Give this process the benchmarks' environment defaults (an existing value wins)."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process a benchmark starts: this one's, without `RAY_ADDRESS`
    (the child starts a Ray of its own, never joins another), with `extra` on top."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(extra or {})
    return env
