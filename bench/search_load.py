"""Benchmark 7, search under concurrency: text-to-image search over HTTP, 1 and 32 clients.

One request, `POST /v1/projects/search/images/search` with `{"query": "a photo of a cat",
"limit": 5}`: check that the project exists, embed the query with the tiny CLIP (one torch
thread, one call at a time) and take the 5 nearest of the project's FILL vectors from its
HNSW index. The same request goes to:

- bare FastAPI: a uvicorn process doing the search in-process (`bench.baseline_server --mode
  search`): the same model and catalog classes, the model under a lock, the blocking part in
  a worker thread, the same answer;
- Serve HTTP, default path: our graph with image search alone, through Serve's proxy, the
  Gateway, the ClipEmbedder and the VectorIndex replicas;
- Serve HTTP, fast path: the same graph in a `bench.serve_child` process on Ray Serve's fast
  path (`configs/fast-path.env`), as in benchmark 1.

The graphs run with the shipped queue bound of the CLIP model (`CLIP_MAX_QUEUED_REQUESTS` at
its default, not the 128 of the other benchmarks' settings), so their 503s at 32 clients are
what the clients of a default deployment would get.

Every server searches a project of the same FILL random unit vectors
(`bench.inputs.fill_catalog`, one seed): the baseline fills its catalog before it listens;
the default-path graph is filled through a VectorIndex handle from this process; the
fast-path graph fills itself (`bench.serve_child --fill`), because a handle must come from
the Ray that serves the app and the child's Ray is not this process's; this process waits
until that project lists FILL images. (Uploading images over HTTP would fill it too, but
slower, and with other vectors than the baseline's.)

Closed loops at concurrency 1 and 32: one warm-up round first, not measured, then the paths
take turns round by round in rotating order. A 503 is counted apart from the other errors.
Throughput at 32 clients is compared with bare FastAPI's; "added" p50 at 1 client is the
median over rounds of (p50 of the path − p50 of bare FastAPI in the same round).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from bench.app_settings import fast_path_env, offline_settings
from bench.context import Context, Section
from bench.inputs import clip_dim, fill_graph
from bench.load import closed_loop, expect_ok, http_session
from bench.machine import free_port
from bench.servers import subprocess_server, wait_http_ok, wait_project_filled
from bench.stats import Sample, median
from bench.tables import fmt, md_table

if TYPE_CHECKING:
    import aiohttp

PROJECT = "search"
FILL = 1000  # vectors in the searched project
BODY = {"query": "a photo of a cat", "limit": 5}
TOP = 32  # clients at once
CONCURRENCY = (1, TOP)
BARE = "bare FastAPI"
DEFAULT = "Serve HTTP, default path"
FAST = "Serve HTTP, fast path"
PATHS = (BARE, DEFAULT, FAST)
GRAPHS = (DEFAULT, FAST)
APP = "search"  # the default-path graph's app on this process's Ray
WARM_UP_S = 1.0
TARGET_RATIO = 0.5
TARGET_TAIL = 5.0


def _graph_settings(ctx: Context, name: str) -> dict[str, Any]:
    """Image search alone, with the shipped queue bound of the CLIP model."""
    from core import defaults

    return offline_settings(
        ctx.models,
        ctx.subdir(name),
        IMAGE_SEARCH_ENABLED=True,
        CLIP_MAX_QUEUED_REQUESTS=defaults.CLIP_MAX_QUEUED_REQUESTS,
    )


def run(ctx: Context) -> Section:
    started = time.perf_counter()
    duration = 2.0 if ctx.quick else 5.0
    dim = clip_dim(ctx.models)
    port, fast_port = free_port(), free_port()
    bare_args = [
        "-m",
        "bench.baseline_server",
        "--mode",
        "search",
        "--models",
        str(ctx.models),
        "--port",
        str(port),
        "--threads",
        "1",
        "--work",
        str(ctx.subdir("search-bare")),
        "--fill",
        str(FILL),
    ]
    fast_args = [
        "-m",
        "bench.serve_child",
        "--port",
        str(fast_port),
        "--settings",
        json.dumps(_graph_settings(ctx, "search_fast")),
        "--fill",
        f"{PROJECT}:{FILL}:{dim}",
    ]
    urls = {BARE: f"http://127.0.0.1:{port}", FAST: f"http://127.0.0.1:{fast_port}"}
    bare_log, fast_log = ctx.log_dir / "search_bare_fastapi.log", ctx.log_dir / "search_fast.log"
    with (
        subprocess_server(bare_args, bare_log) as process,
        subprocess_server(
            fast_args, fast_log, env=fast_path_env(ctx.subdir("hap"))
        ) as fast_process,
    ):
        wait_http_ok(f"{urls[BARE]}/readyz", 600, process, log_path=bare_log)
        wait_http_ok(f"{urls[FAST]}/readyz", 600, fast_process, log_path=fast_log)
        urls[DEFAULT] = ctx.serve.deploy(APP, f"/{APP}", _graph_settings(ctx, APP))
        try:
            fill_graph(APP, PROJECT, FILL, dim)
            wait_project_filled(urls[DEFAULT], PROJECT, FILL, 600)
            wait_project_filled(urls[FAST], PROJECT, FILL, 600, fast_process, fast_log)
            totals, rounds = asyncio.run(_measure(ctx, urls, duration))
        finally:
            ctx.serve.delete(APP)
    return _report(totals, rounds, ctx, duration, time.perf_counter() - started)


async def _check_answer(session: aiohttp.ClientSession, url: str) -> None:
    """One search before the timing: the project is there and the answer has `limit` hits."""
    async with session.post(f"{url}/v1/projects/{PROJECT}/images/search", json=BODY) as r:
        answer = json.loads(await expect_ok(r))
    if answer["project_id"] != PROJECT or len(answer["results"]) != BODY["limit"]:
        raise RuntimeError(f"unexpected search answer from {url}: {answer!r:.300}")


async def _measure(
    ctx: Context, urls: dict[str, str], duration: float
) -> tuple[dict[tuple[str, int], Sample], list[dict[tuple[str, int], Sample]]]:
    async with http_session() as session:

        def search(url: str) -> Callable[[], Awaitable[None]]:
            target = f"{url}/v1/projects/{PROJECT}/images/search"

            async def call() -> None:
                async with session.post(target, json=BODY) as response:
                    await expect_ok(response)

            return call

        calls = {path: search(urls[path]) for path in PATHS}
        for path in PATHS:
            await _check_answer(session, urls[path])
        for concurrency in CONCURRENCY:  # connections, caches, first calls: not measured
            for path in PATHS:
                await closed_loop(calls[path], concurrency, WARM_UP_S)

        totals: dict[tuple[str, int], Sample] = {}
        rounds: list[dict[tuple[str, int], Sample]] = []
        for r in range(ctx.rounds):
            this_round: dict[tuple[str, int], Sample] = {}
            for concurrency in CONCURRENCY:
                order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]  # rotate the order
                for path in order:
                    sample = await closed_loop(calls[path], concurrency, duration)
                    this_round[(path, concurrency)] = sample
                    totals.setdefault((path, concurrency), Sample()).add(sample)
            rounds.append(this_round)
    return totals, rounds


def tail_ratio(sample: Sample) -> float:
    """p99 over p50 (NaN without a successful request)."""
    return sample.p99_ms / sample.p50_ms if sample.count else float("nan")


def verdicts(values: Mapping[str, float], ok: Callable[[float], bool]) -> str:
    """`met (path), **not met** (path)` for the graph paths in `values`."""
    return ", ".join(
        f"{'met' if ok(values[path]) else '**not met**'} ({path.removeprefix('Serve HTTP, ')})"
        for path in GRAPHS
        if path in values
    )


def _report(
    totals: dict[tuple[str, int], Sample],
    rounds: list[dict[tuple[str, int], Sample]],
    ctx: Context,
    duration: float,
    seconds: float,
) -> Section:
    from core import defaults

    rows = []
    for concurrency in CONCURRENCY:
        bare = totals[(BARE, concurrency)]
        for path in PATHS:
            sample = totals[(path, concurrency)]
            rows.append(
                [
                    concurrency,
                    path,
                    fmt(sample.throughput, 1),
                    fmt(sample.p50_ms, 2),
                    fmt(sample.p99_ms, 2),
                    fmt(tail_ratio(sample), 1),
                    sample.rejected,
                    sample.errors - sample.rejected,
                    fmt(sample.throughput / bare.throughput, 2) if bare.throughput else "n/a",
                ]
            )
    bare_top = totals[(BARE, TOP)].throughput
    ratio = {p: totals[(p, TOP)].throughput / bare_top if bare_top else 0.0 for p in GRAPHS}
    per_round = {
        p: [
            r[(p, TOP)].throughput / r[(BARE, TOP)].throughput
            for r in rounds
            if r[(BARE, TOP)].throughput
        ]
        for p in GRAPHS
    }
    tails = {p: tail_ratio(totals[(p, TOP)]) for p in PATHS}
    rejected = {p: totals[(p, TOP)].rejected for p in PATHS}
    added = {p: median(r[(p, 1)].p50_ms - r[(BARE, 1)].p50_ms for r in rounds) for p in GRAPHS}
    figures: dict[str, Any] = {
        "search_c32_ratio_vs_bare": ratio,
        "search_c32_ratio_vs_bare_per_round": per_round,
        "search_c32_p99_over_p50": tails,
        "search_c32_503": rejected,
        "search_c1_added_ms": added,
        "search_fill": FILL,
        "clip_max_queued_requests": defaults.CLIP_MAX_QUEUED_REQUESTS,
        "paths": {f"{p}@c{c}": s.summary() for (p, c), s in totals.items()},
    }
    markdown = "\n\n".join(
        [
            f"Request: `POST /v1/projects/{PROJECT}/images/search` with `{json.dumps(BODY)}` "
            f"(tiny CLIP text embedding on one torch thread, top {BODY['limit']} of {FILL} "
            f"vectors). The graphs run image search alone with the shipped queue bound, "
            f"`CLIP_MAX_QUEUED_REQUESTS={defaults.CLIP_MAX_QUEUED_REQUESTS}`. {ctx.rounds} "
            f"round(s) of {duration:g} s per path and concurrency after a warm-up round, paths "
            "in rotating order. *503s* are refusals for lack of room; *other errors* are the "
            "rest.",
            md_table(
                [
                    "clients",
                    "path",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "p99/p50",
                    "503s",
                    "other errors",
                    "req/s vs bare",
                ],
                rows,
            ),
            md_table(
                [
                    "path",
                    f"req/s vs bare at {TOP} clients",
                    "per round",
                    f"p99/p50 at {TOP}",
                    f"503s at {TOP}",
                    "added p50 at 1 client",
                ],
                [
                    [
                        p,
                        f"**{fmt(ratio[p], 2)}x**",
                        ", ".join(fmt(v, 2) for v in per_round[p]),
                        fmt(tails[p], 1),
                        rejected[p],
                        f"{added[p]:+.2f} ms",
                    ]
                    for p in GRAPHS
                ],
            ),
            f"Targets: throughput at {TOP} clients ≥ {TARGET_RATIO}x bare FastAPI's doing the "
            f"same search in-process — {verdicts(ratio, lambda v: v >= TARGET_RATIO)}; p99/p50 "
            f"≤ {TARGET_TAIL:g} — {verdicts(tails, lambda v: v <= TARGET_TAIL)}; no 503 with "
            f"the default queue bounds — {verdicts(rejected, lambda v: v == 0)}. Bare FastAPI: "
            f"p99/p50 {fmt(tails[BARE], 1)}, {rejected[BARE]} 503s.",
        ]
    )
    return Section("7. Search under concurrency", markdown, figures, seconds)
