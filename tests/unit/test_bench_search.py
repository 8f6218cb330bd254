"""Benchmark 7's counting and reporting code, and benchmark 1's floor row, on made-up samples
(no Ray, no servers), so that they keep working between the runs of `python -m bench`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import search_load, serving
from bench.context import Context
from bench.load import HttpOverloaded, HttpStatusError, closed_loop, expect_ok
from bench.report import _summary
from bench.stats import Sample
from core import defaults


class _Response(SimpleNamespace):
    async def read(self) -> bytes:
        return b"busy"


def test_a_503_is_an_error_counted_as_rejected() -> None:
    with pytest.raises(HttpOverloaded):
        asyncio.run(expect_ok(_Response(status=503)))  # type: ignore[arg-type]
    with pytest.raises(HttpStatusError) as error:
        asyncio.run(expect_ok(_Response(status=500)))  # type: ignore[arg-type]
    assert not isinstance(error.value, HttpOverloaded)

    calls = iter(range(1_000_000))

    async def call() -> None:
        n = next(calls)
        if n % 3 == 1:
            raise HttpOverloaded("HTTP 503")
        if n % 3 == 2:
            raise HttpStatusError("HTTP 500")

    sample = asyncio.run(closed_loop(call, 1, 0.2))
    assert sample.rejected >= 1 and sample.errors > sample.rejected
    total = Sample()
    total.add(sample)
    total.add(sample)
    assert total.rejected == 2 * sample.rejected
    assert total.summary()["rejected"] == total.rejected


def _sample(latency_ms: float, count: int, rejected: int = 0, tail_ms: float = 0.0) -> Sample:
    latencies = [latency_ms / 1000] * count + [tail_ms / 1000] * (count // 10 if tail_ms else 0)
    return Sample(latencies_s=latencies, errors=rejected, rejected=rejected, wall_s=1.0)


def _context(tmp_path: Path) -> Context:
    return Context(work=tmp_path, models=tmp_path, quick=True, rounds=1)


def test_search_report_and_summary_rows(tmp_path: Path) -> None:
    one_round = {
        (search_load.BARE, 1): _sample(5.0, 200),
        (search_load.DEFAULT, 1): _sample(9.0, 110),
        (search_load.FAST, 1): _sample(7.0, 140),
        (search_load.BARE, 32): _sample(100.0, 300),
        (search_load.DEFAULT, 32): _sample(150.0, 100, rejected=40, tail_ms=2000.0),
        (search_load.FAST, 32): _sample(120.0, 200),
    }
    section = search_load._report(one_round, [one_round], _context(tmp_path), 2.0, 10.0)
    figures = section.figures
    assert figures["search_c32_ratio_vs_bare"][search_load.FAST] == pytest.approx(200 / 300)
    assert figures["search_c32_503"] == {
        search_load.BARE: 0,
        search_load.DEFAULT: 40,
        search_load.FAST: 0,
    }
    assert figures["search_c1_added_ms"][search_load.DEFAULT] == pytest.approx(4.0)
    assert figures["search_c32_p99_over_p50"][search_load.DEFAULT] > 5

    summary = _summary({"search": section})
    ratio_row = next(line for line in summary.splitlines() if "vs bare FastAPI" in line)
    assert ratio_row.endswith("| **not met** (default path), met (fast path) |")
    tail_row = next(line for line in summary.splitlines() if "p99/p50" in line)
    assert tail_row.endswith("| **not met** (default path), met (fast path) |")
    rejected_row = next(line for line in summary.splitlines() if "503s" in line)
    assert f"CLIP_MAX_QUEUED_REQUESTS={defaults.CLIP_MAX_QUEUED_REQUESTS}`" in rejected_row
    assert rejected_row.endswith("| **not met** (default path), met (fast path) |")


def test_serving_floor_row(tmp_path: Path) -> None:
    p50 = {
        "direct": 1.0,
        "bare FastAPI": 2.0,  # +1.0
        "Serve handle": 2.5,  # +1.5: the floor is +2.5 ms
        serving.FAST: 4.0,  # +3.0: 0.5 ms over the floor
    }
    one_round = {
        (path, c): _sample(p50.get(path, 3.0), 100) for path in serving.PATHS for c in (1, 8, 32)
    }
    section = serving._report(one_round, [one_round], _context(tmp_path), 1.0, 10.0)
    assert section.figures["floor_ms_c1"] == pytest.approx(2.5)
    assert section.figures["fast_path_over_floor_ms_c1"] == pytest.approx(0.5)
    row = next(line for line in _summary({"serving": section}).splitlines() if "floor" in line)
    assert "≤ floor + 1 ms" in row and row.endswith("| met |")
