"""Benchmark 8, the duplicates scan (`GET .../images/duplicates`) on a 50,000-image project.

    python -m bench.duplicates [--n 50000] [--groups 500] [--threshold 0.95] [--sweep 16,64]
    python -m bench --only duplicates        # the same, as a section of docs/benchmarks.md

The project: CLIP-like vectors (`lowrank`, see `bench.index_bench`) with `groups` planted
near-duplicate groups, each a base image plus 1-4 copies at cosine 0.96-0.995 from it
(a random direction in all 512 dimensions, as a re-encode or a resize moves a vector), all
added in a random order through `VectorCatalog` (SQLite + hnswlib, batches of 1000).

Measured: the cold scan (`VectorCatalog.duplicates`, first page: copy under the lock,
batch k-NN on the copy with every core, grouping) and the part of it under the catalog's
lock; a kept page (the pages after the first, median); searches while the scan runs against
searches alone; groups found against groups planted (recall: planted groups whose images
all land in one found group; exact: found as they were planted); and the baseline, exact
all-pairs cosine in numpy blocks (BLAS on every core) with the same components, side by
side on the same vectors: its time, and how many of its groups the scan found.
`--sweep` adds the scan at other hnswlib `ef` values (on a copy of the same index).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.context import Context, Section
from bench.index_bench import make_data
from bench.inputs import add_numbered
from bench.tables import fmt, md_table

PROJECT = "bench"
DIM = 512
PAGE = 50  # groups per page when reading every group back


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def planted_project(n: int, groups: int, seed: int) -> tuple[np.ndarray, list[frozenset[int]]]:
    """`n` unit vectors in insertion order, and the planted groups as sets of row numbers."""
    rng = np.random.default_rng(seed)
    copies = rng.integers(1, 5, size=groups)
    distinct = n - int(copies.sum())
    data = make_data("lowrank", distinct, DIM, seed)
    bases = rng.choice(distinct, size=groups, replace=False)
    rows: list[np.ndarray] = [data]
    members: list[list[int]] = []
    at = distinct
    for base, count in zip(bases, copies, strict=True):
        cos = rng.uniform(0.96, 0.995, size=count).astype(np.float32)
        direction = rng.standard_normal((count, DIM)).astype(np.float32)
        direction -= (direction @ data[base])[:, None] * data[base]
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        rows.append(cos[:, None] * data[base] + np.sqrt(1 - cos**2)[:, None] * direction)
        members.append([int(base), *range(at, at + count)])
        at += count
    vectors = np.vstack(rows).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(n)  # insertion order: position -> original row
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    planted = [frozenset(int(position[m]) for m in group) for group in members]
    return np.ascontiguousarray(vectors[order]), planted


def exact_groups(vectors: np.ndarray, threshold: float, block: int = 512) -> list[frozenset[int]]:
    """Every group at `threshold`, exactly: all-pairs cosine in blocks of rows, then the
    connected components of the pairs at or above it."""
    from deployments.vector_store.duplicates import components

    n = len(vectors)
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    for start in range(0, n, block):
        sims = vectors[start : start + block] @ vectors.T
        i, j = np.nonzero(sims >= threshold)
        i += start
        keep = j > i
        src.append(i[keep].astype(np.int64))
        dst.append(j[keep].astype(np.int64))
    s, d = np.concatenate(src), np.concatenate(dst)
    if len(s) == 0:
        return []
    root = components(n, s, d)
    joined = np.unique(np.concatenate([s, d]))
    found: dict[int, set[int]] = {}
    for row in joined.tolist():
        found.setdefault(int(root[row]), set()).add(row)
    return [frozenset(g) for g in found.values()]


def _scan_while_searching(
    catalog: Any, threshold: float, queries: np.ndarray
) -> tuple[Any, float, list[float]]:
    """The first page (the cold scan) in a thread, with searches one after another in this
    one until it is done: the page, the scan's seconds, the search latencies (s)."""
    result: list[Any] = []

    def scan() -> None:
        result.append(catalog.duplicates(PROJECT, threshold=threshold, limit=PAGE))

    thread = threading.Thread(target=scan)
    latencies: list[float] = []
    t0 = time.perf_counter()
    thread.start()
    i = 0
    while thread.is_alive():
        s0 = time.perf_counter()
        catalog.search(PROJECT, queries[i % len(queries)], 10)
        latencies.append(time.perf_counter() - s0)
        i += 1
        time.sleep(0.005)  # a client's pace, not a busy loop
    thread.join()
    return result[0], time.perf_counter() - t0, latencies


def run_one(
    work: Path, n: int, groups: int, threshold: float, seed: int, sweep: list[int]
) -> dict[str, Any]:
    from deployments.vector_store import duplicates as dup
    from deployments.vector_store.catalog import VectorCatalog

    out: dict[str, Any] = {
        "n": n,
        "planted_groups": groups,
        "threshold": threshold,
        "k": dup.DEFAULT_NEIGHBOURS,
        "ef": dup.SCAN_EF,
        "threads": dup.SCAN_THREADS,
        "load_before": load_average(),
    }
    vectors, planted = planted_project(n, groups, seed)
    out["planted_images"] = sum(len(g) for g in planted)
    queries = make_data("lowrank", 200, DIM, seed + 1)
    with tempfile.TemporaryDirectory(prefix="duplicates-bench-", dir=work) as tmp:
        catalog = VectorCatalog(Path(tmp) / "bench.db", dim=DIM, max_elements=n)
        t0 = time.perf_counter()
        add_numbered(catalog, PROJECT, vectors)
        out["build_s"] = time.perf_counter() - t0
        out["load_after_build"] = load_average()

        idle = []
        for q in queries:
            s0 = time.perf_counter()
            catalog.search(PROJECT, q, 10)
            idle.append(time.perf_counter() - s0)
        first, wall, during = _scan_while_searching(catalog, threshold, queries)
        scan = catalog._duplicate_scans.get(PROJECT, first.generation, threshold, out["k"])
        assert scan is not None
        out.update(
            cold_first_page_s=wall,
            scan_s=scan.seconds,
            locked_s=scan.locked_seconds,
            search_idle_p50_ms=float(np.median(idle) * 1000),
            search_during_p50_ms=float(np.median(during) * 1000),
            search_during_max_ms=float(np.max(during) * 1000),
            searches_during=len(during),
        )
        found: list[frozenset[int]] = []
        page_times: list[float] = []
        page = first
        found += [frozenset(int(h.record.id) for h in g.members) for g in page.groups]
        while page.next_cursor:
            s0 = time.perf_counter()
            page = catalog.duplicates(
                PROJECT, threshold=threshold, limit=PAGE, cursor=page.next_cursor
            )
            page_times.append(time.perf_counter() - s0)
            found += [frozenset(int(h.record.id) for h in g.members) for g in page.groups]
        s0 = time.perf_counter()
        again = catalog.duplicates(PROJECT, threshold=threshold, limit=PAGE)
        page_times.append(time.perf_counter() - s0)
        assert again.generation == first.generation
        out["kept_page_ms"] = float(np.median(page_times) * 1000)
        out["pages"] = len(page_times)
        out["found_groups"] = first.total
        assert len(found) == first.total  # every group once, nothing deleted meanwhile

        sweeps: list[tuple[int, float, list[frozenset[int]]]] = []
        if sweep:
            state = catalog._indexes[PROJECT]
            labels = np.arange(n, dtype=np.int64)  # add_numbered: label = row = age order
            for ef in sweep:
                copy = state.snapshot()
                s0 = time.perf_counter()
                swept = dup.scan_groups(copy, labels, vectors, threshold, out["k"], ef=ef)
                seconds = time.perf_counter() - s0
                sets = [frozenset(g.labels) for g in swept]
                sweeps.append((ef, seconds, sets))
        catalog.close(save=False)
    out["load_before_exact"] = load_average()
    t0 = time.perf_counter()
    exact = exact_groups(vectors, threshold)
    out["exact_s"] = time.perf_counter() - t0
    out["load_after"] = load_average()

    def score(sets: list[frozenset[int]]) -> dict[str, Any]:
        as_set = set(sets)
        exact_set = set(exact)
        return {
            "groups": len(sets),
            "planted_exact": sum(g in as_set for g in planted) / len(planted),
            "planted_recall": sum(any(g <= f for f in sets) for g in planted) / len(planted),
            "exact_agreement": len(as_set & exact_set) / max(1, len(exact_set)),
        }

    out["scan"] = score(found)
    out["exact"] = score(exact)
    out["sweep"] = [{"ef": ef, "s": seconds, **score(sets)} for ef, seconds, sets in sweeps]
    out["speedup"] = out["exact_s"] / out["scan_s"]
    return out


def markdown(r: dict[str, Any]) -> str:
    rows = [
        [
            f"scan (hnswlib k={r['k']}, ef={max(r['ef'], r['k'] + 1)}, {r['threads']} threads)",
            fmt(r["scan_s"], 1),
            r["scan"]["groups"],
            f"{r['scan']['planted_recall']:.4f}",
            f"{r['scan']['planted_exact']:.4f}",
            f"{r['scan']['exact_agreement']:.4f}",
            f"{fmt(r['speedup'], 1)}x",
        ],
        *(
            [
                f"scan at ef={s['ef']} (raw, no SQLite)",
                fmt(s["s"], 1),
                s["groups"],
                f"{s['planted_recall']:.4f}",
                f"{s['planted_exact']:.4f}",
                f"{s['exact_agreement']:.4f}",
                f"{fmt(r['exact_s'] / s['s'], 1)}x",
            ]
            for s in r["sweep"]
        ),
        [
            "baseline: exact all-pairs numpy (blocks of 512 rows)",
            fmt(r["exact_s"], 1),
            r["exact"]["groups"],
            f"{r['exact']['planted_recall']:.4f}",
            f"{r['exact']['planted_exact']:.4f}",
            "1.0000",
            "1.0x",
        ],
    ]
    table = md_table(
        [
            "method",
            "seconds",
            "groups found",
            "planted recall",
            "planted exact",
            "exact groups found",
            "speed-up vs exact",
        ],
        rows,
    )
    return "\n\n".join(
        [
            f"{r['n']:,} images of {DIM} dimensions (lowrank) with {r['planted_groups']} planted "
            f"groups ({r['planted_images']:,} images, copies at cosine 0.96-0.995 from their "
            f"base), threshold {r['threshold']}. Load average (1/5/15 min) before the run "
            f"{r['load_before']}, after the build {r['load_after_build']}, before the baseline "
            f"{r['load_before_exact']}, at the end {r['load_after']}.",
            table,
            "Planted recall: planted groups whose images all landed in one found group; "
            "planted exact: found exactly as planted; exact groups found: the baseline's "
            "groups that the scan found identically.",
            md_table(
                ["", ""],
                [
                    ["first page, cold (scan + page)", f"{fmt(r['cold_first_page_s'], 2)} s"],
                    ["of which the catalog's lock was held", f"{fmt(r['locked_s'], 3)} s"],
                    [
                        f"a kept page of {PAGE} groups (median of {r['pages']})",
                        f"{fmt(r['kept_page_ms'], 1)} ms",
                    ],
                    [
                        "search p50 alone / p50 and max during the scan",
                        f"{fmt(r['search_idle_p50_ms'], 2)} / "
                        f"{fmt(r['search_during_p50_ms'], 2)} and "
                        f"{fmt(r['search_during_max_ms'], 1)} ms "
                        f"({r['searches_during']} searches)",
                    ],
                    ["building the project (not part of the scan)", f"{fmt(r['build_s'], 0)} s"],
                ],
            ),
        ]
    )


def run(ctx: Context) -> Section:
    started = time.perf_counter()
    n = 20_000 if ctx.quick else 50_000
    result = run_one(ctx.work, n, groups=n // 100, threshold=0.95, seed=0, sweep=[])
    return Section(
        "8. Duplicates scan",
        markdown(result),
        {"results": [_plain(result)]},
        time.perf_counter() - started,
    )


def _plain(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not isinstance(v, list) or k == "sweep"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--groups", type=int, default=500)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", default="", help="comma-separated extra ef values")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory")
    args = parser.parse_args(argv)
    sweep = [int(v) for v in args.sweep.split(",") if v.strip()]
    result = run_one(
        args.work or Path(tempfile.gettempdir()),
        args.n,
        args.groups,
        args.threshold,
        args.seed,
        sweep,
    )
    print(markdown(result))


if __name__ == "__main__":
    main()
