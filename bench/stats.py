"""Timing statistics of the benchmarks: a `Sample` of request latencies, errors and wall time,
and the medians and geometric means the reports are made of.

Every benchmark measures its baseline and its candidates in the same run, interleaved round
by round (A, B, C, A, B, C, ...), so that load from other processes on a shared machine hits
all of them alike; figures are reported as ratios, or as differences of medians of rounds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Sample:
    """Latencies (s) of the successful requests of one or more timed runs, errors, wall time.

    `errors` counts every failed request; `rejected` the 503s among them (`HttpOverloaded`).
    """

    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    rejected: int = 0
    wall_s: float = 0.0
    error_examples: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        """Successful requests per second of wall time."""
        return self.count / self.wall_s if self.wall_s > 0 else 0.0

    def pct_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        return float(np.percentile(np.asarray(self.latencies_s), q) * 1000.0)

    @property
    def p50_ms(self) -> float:
        return self.pct_ms(50)

    @property
    def p99_ms(self) -> float:
        return self.pct_ms(99)

    def add(self, other: Sample) -> None:
        self.latencies_s.extend(other.latencies_s)
        self.errors += other.errors
        self.rejected += other.rejected
        self.wall_s += other.wall_s
        self.error_examples.extend(other.error_examples[: max(0, 3 - len(self.error_examples))])

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "errors": self.errors,
            "rejected": self.rejected,
            "wall_s": round(self.wall_s, 3),
            "throughput": round(self.throughput, 3),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "error_examples": self.error_examples[:3],
        }


def median(values: Iterable[float]) -> float:
    """The median, NaN left out; NaN when nothing is left."""
    data = [v for v in values if v == v]  # drop NaN
    return float(np.median(data)) if data else float("nan")


def geomean(values: Iterable[float]) -> float:
    """The geometric mean of the positive values; NaN when there are none."""
    data = [v for v in values if v > 0]
    return float(np.exp(np.mean(np.log(data)))) if data else float("nan")
