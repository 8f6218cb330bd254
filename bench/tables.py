"""Formatting of the benchmarks' figures: numbers as text (NaN as "n/a") and markdown tables.

`bench.report` assembles docs/benchmarks.md; each benchmark formats its own section with
these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.{digits}f}"


def fmt_dict(values: Mapping[str, float], digits: int = 0) -> str:
    """`key: value, ...` with each value through `fmt`."""
    return ", ".join(f"{k}: {fmt(v, digits)}" for k, v in values.items())


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
