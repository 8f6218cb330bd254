"""Benchmark the image-search index: hnswlib through `VectorCatalog` vs raw hnswlib vs exact.

    python -m bench.index_bench [--n 50000] [--dim 512] [--queries 1000]
                                [--m M] [--ef-construction EFC] [--ef-search EF]
                                [--data uniform|lowrank] [--sweep 64,128,256,512]

One run measures, on n random L2-normalised vectors in one project: build time through the
catalog (SQLite rows + hnswlib, in batches of 1000) and of hnswlib alone; search latency p50/p99
through the catalog (hnswlib + SQLite row fetch), raw hnswlib and exact numpy (matrix-vector
product + argpartition); recall@10 against the exact answer; hnswlib's memory per vector; and the
time to reopen the catalog (rebuilding the index from SQLite). It prints markdown tables.

`--data uniform` draws i.i.d. Gaussian vectors: the hardest case for any graph index (every
point is nearly equidistant from every other in 512-d). `--data lowrank` draws vectors from a
32-dimensional latent space plus noise, which is closer to how real CLIP embeddings behave.
`--sweep` adds a recall/latency table over `ef` values on the raw index.
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import hnswlib
import numpy as np

from bench.inputs import add_numbered
from deployments.vector_store.catalog import VectorCatalog

K = 10
PROJECT = "bench"
_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(VectorCatalog.__init__).parameters.items()
    if p.default is not inspect.Parameter.empty
}


def make_data(kind: str, n: int, dim: int, seed: int) -> np.ndarray:
    """n unit vectors of `dim`: i.i.d. Gaussian ("uniform") or low intrinsic dimension."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        x = rng.standard_normal((n, dim), dtype=np.float32)
    else:
        basis = np.random.default_rng(12345).standard_normal((32, dim), dtype=np.float32)
        latent = rng.standard_normal((n, 32), dtype=np.float32)
        x = latent @ basis + 0.3 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def exact_topk(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by inner product, best first, in chunks."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        sims = queries[start : start + 256] @ data.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
        out[start : start + 256] = np.take_along_axis(part, order, axis=1)
    return out


Search = Callable[[np.ndarray], np.ndarray]


def search_paths(
    catalog: VectorCatalog, raw: hnswlib.Index, data: np.ndarray
) -> tuple[Search, Search, Search]:
    """One query's top-K ids, best first, three ways: through the catalog (hnswlib + SQLite
    rows), through the raw hnswlib index, and exactly (numpy over `data`)."""

    def via_catalog(q: np.ndarray) -> np.ndarray:
        return np.array([int(h.record.id) for h in catalog.search(PROJECT, q, K)])

    def via_raw(q: np.ndarray) -> np.ndarray:
        return raw.knn_query(q, k=K)[0][0]

    def exact(q: np.ndarray) -> np.ndarray:
        sims = data @ q
        part = np.argpartition(-sims, K)[:K]
        return part[np.argsort(-sims[part])]

    return via_catalog, via_raw, exact


def timed(fn: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple[np.ndarray, list]:
    """Per-query latencies (s) and results of `fn` over `queries`, one call at a time."""
    times = np.empty(len(queries))
    results = []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        results.append(fn(q))
        times[i] = time.perf_counter() - t0
    return times, results


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    pairs = zip(found, truth, strict=True)
    hits = sum(len(set(np.asarray(f).tolist()) & set(t.tolist())) for f, t in pairs)
    return hits / truth.size


def ms(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q) * 1000)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--m", type=int, default=_DEFAULTS["hnsw_m"])
    parser.add_argument("--ef-construction", type=int, default=_DEFAULTS["ef_construction"])
    parser.add_argument("--ef-search", type=int, default=_DEFAULTS["ef_search"])
    parser.add_argument("--data", choices=["uniform", "lowrank"], default="uniform")
    parser.add_argument("--sweep", default="", help="comma-separated ef values for the raw index")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    n, dim = args.n, args.dim
    data = make_data(args.data, n, dim, args.seed)
    queries = make_data(args.data, args.queries, dim, args.seed + 1)
    truth = exact_topk(data, queries, K)
    rows: list[tuple[str, str]] = []

    with tempfile.TemporaryDirectory(prefix="index-bench-") as tmp:
        db_path = Path(tmp) / "bench.db"
        catalog = VectorCatalog(
            db_path,
            dim=dim,
            max_elements=n,
            hnsw_m=args.m,
            ef_construction=args.ef_construction,
            ef_search=args.ef_search,
            persist_indexes=False,  # reopen = rebuild from SQLite (load: bench/index.py)
        )
        t0 = time.perf_counter()
        add_numbered(catalog, PROJECT, data[:n])
        build_catalog = time.perf_counter() - t0

        raw = hnswlib.Index(space="ip", dim=dim)
        raw.init_index(max_elements=n, M=args.m, ef_construction=args.ef_construction)
        t0 = time.perf_counter()
        raw.add_items(data, np.arange(n))
        build_raw = time.perf_counter() - t0
        raw.set_ef(args.ef_search)
        raw.set_num_threads(1)

        via_catalog, via_raw, exact = search_paths(catalog, raw, data)
        t_cat, r_cat = timed(via_catalog, queries)
        t_raw, r_raw = timed(via_raw, queries)
        t_exact, r_exact = timed(exact, queries)

        sweep: list[tuple[int, float, float, float]] = []
        for ef in [int(v) for v in args.sweep.split(",") if v.strip()]:
            raw.set_ef(ef)
            t_s, r_s = timed(via_raw, queries)
            sweep.append((ef, recall(r_s, truth), ms(t_s, 50), ms(t_s, 99)))

        db_bytes = db_path.stat().st_size + sum(
            p.stat().st_size for p in db_path.parent.glob(db_path.name + "-*")
        )
        catalog.close()
        t0 = time.perf_counter()
        reopened = VectorCatalog(
            db_path,
            dim=dim,
            max_elements=n,
            hnsw_m=args.m,
            ef_construction=args.ef_construction,
            ef_search=args.ef_search,
            persist_indexes=False,  # reopen = rebuild from SQLite (load: bench/index.py)
        )
        reopen = time.perf_counter() - t0
        assert reopened.stats() == {PROJECT: n}
        reopened.close()

    rows += [
        ("data", f"{args.data}, n={n}, dim={dim}, queries={args.queries}"),
        (
            "hnswlib params",
            f"M={args.m}, ef_construction={args.ef_construction}, ef_search={args.ef_search}",
        ),
        ("build via VectorCatalog (SQLite + hnswlib, batches of 1000)", f"{build_catalog:.1f} s"),
        ("build hnswlib alone (one add_items)", f"{build_raw:.1f} s"),
        (
            "search p50 / p99, VectorCatalog.search (k=10)",
            f"{ms(t_cat, 50):.3f} / {ms(t_cat, 99):.3f} ms",
        ),
        (
            "search p50 / p99, raw hnswlib knn_query (1 thread)",
            f"{ms(t_raw, 50):.3f} / {ms(t_raw, 99):.3f} ms",
        ),
        (
            "search p50 / p99, exact numpy (matvec + argpartition)",
            f"{ms(t_exact, 50):.3f} / {ms(t_exact, 99):.3f} ms",
        ),
        (
            "recall@10 VectorCatalog / raw hnswlib / exact",
            f"{recall(r_cat, truth):.4f} / {recall(r_raw, truth):.4f} / "
            f"{recall(r_exact, truth):.4f}",
        ),
        (
            "speed-up exact / hnswlib (p50): catalog, raw",
            f"{np.median(t_exact) / np.median(t_cat):.1f}x, "
            f"{np.median(t_exact) / np.median(t_raw):.1f}x",
        ),
        (
            "hnswlib memory per vector (index_file_size / n)",
            f"{raw.index_file_size() / n:.0f} B (raw vector {4 * dim} B)",
        ),
        ("SQLite bytes per image (db + wal / n)", f"{db_bytes / n:.0f} B"),
        ("reopen VectorCatalog (rebuild index from SQLite)", f"{reopen:.1f} s"),
    ]
    print("| metric | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if sweep:
        print("\n| ef (raw hnswlib) | recall@10 | p50 ms | p99 ms | exact/hnswlib p50 |")
        print("|---|---|---|---|---|")
        for ef, rec, p50, p99 in sweep:
            print(f"| {ef} | {rec:.4f} | {p50:.3f} | {p99:.3f} | {ms(t_exact, 50) / p50:.1f}x |")


if __name__ == "__main__":
    main()
