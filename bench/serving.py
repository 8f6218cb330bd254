"""Benchmark 1, serving overhead: one cheap model call four ways.

The "model" is the tiny CLIP text embedding of a short string (about a millisecond on one
thread), so the serving path dominates. The same call is made:

- direct: `ClipModel.embed_texts` in this process (threads at concurrency > 1; the model's
  lock serialises them, as the replica's max_ongoing_requests=1 does);
- bare FastAPI: a uvicorn process holding the same model (`bench.baseline_server --mode
  embed`), `POST /v1/embeddings`;
- Serve HTTP: our graph, `POST /v1/embeddings` through Serve's proxy, the Gateway and the
  ClipEmbedder replica;
- Serve handle: `ClipEmbedder.embed_text` through a DeploymentHandle from this driver;
- the last two again on a second app whose model replica holds up to 64 requests
  (`MODEL_MAX_ONGOING_REQUESTS=64`: they wait inside the replica, in order) instead of the
  default 1 (they wait in Serve's router, which retries with a growing backoff);
- and, to split the HTTP cost, `GET /healthz` through Serve's proxy and the Gateway alone
  (no model call, no request body);
- the HTTP paths again on Ray Serve's fast path (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`,
  `RAY_SERVE_ENABLE_HA_PROXY=1`: HAProxy in front, the Gateway replica answering HTTP itself,
  gRPC between replicas), a Ray of its own in a `bench.serve_child` process: Ray reads these
  variables once per process, so the default and the fast path cannot share one Ray.

Every path runs its model on one torch thread. Concurrency 1, 8 and 32, closed loop; the
paths take turns round by round. "Added" latency is the median over rounds of the
difference of p50s against the direct call of the same round.

The floor of the added latency at concurrency 1 is what any HTTP server in front of one
model deployment pays: bare FastAPI's added p50 (HTTP alone) plus the Serve handle's (one
deployment hop), both from the same run. The fast path is held to that floor plus 1 ms.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from bench.app_settings import fast_path_env, offline_settings
from bench.context import Context, Section
from bench.load import closed_loop, expect_ok, http_session, threaded_closed_loop
from bench.machine import free_port
from bench.servers import subprocess_server, wait_http_ok
from bench.stats import Sample, median
from bench.tables import fmt, md_table

TEXT = "a photo of a cat"
CONCURRENCY = (1, 8, 32)
QUEUED = "in-replica queue"  # MODEL_MAX_ONGOING_REQUESTS above the concurrency
IN_REPLICA = {"MODEL_MAX_ONGOING_REQUESTS": 64}
NO_MODEL = "Serve HTTP /healthz, no model"
FAST = "Serve HTTP, Ray fast path"
FAST_NO_MODEL = "Serve HTTP /healthz, Ray fast path"
PATHS = (
    "direct",
    "bare FastAPI",
    "Serve HTTP",
    "Serve handle",
    f"Serve HTTP, {QUEUED}",
    f"Serve handle, {QUEUED}",
    NO_MODEL,
    FAST,
    FAST_NO_MODEL,
)
TARGET_MS = 2.5
OVER_FLOOR_MS = 1.0  # the fast path's added latency may exceed the floor by this much


def run(ctx: Context) -> Section:
    from deployments.clip_model import ClipModel
    from deployments.configs import ClipEmbedderConfig

    started = time.perf_counter()
    duration = 1.0 if ctx.quick else 2.0
    model = ClipModel(
        ClipEmbedderConfig(model=f"local-dir:{ctx.models / 'clip'}", device="cpu", torch_threads=1)
    )
    model.warm_up()
    port, fast_port = free_port(), free_port()
    bare_args = [
        "-m",
        "bench.baseline_server",
        "--mode",
        "embed",
        "--models",
        str(ctx.models),
        "--port",
        str(port),
        "--threads",
        "1",
    ]
    fast_settings = offline_settings(
        ctx.models, ctx.subdir("serving_fast"), IMAGE_SEARCH_ENABLED=True
    )
    fast_args = [
        "-m",
        "bench.serve_child",
        "--port",
        str(fast_port),
        "--settings",
        json.dumps(fast_settings),
    ]
    with (
        subprocess_server(bare_args, ctx.log_dir / "bare_fastapi.log") as process,
        subprocess_server(
            fast_args, ctx.log_dir / "serve_fast_path.log", env=fast_path_env(ctx.subdir("haproxy"))
        ) as fast_process,
    ):
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", 600, process)
        fast_url = f"http://127.0.0.1:{fast_port}"
        wait_http_ok(f"{fast_url}/readyz", 600, fast_process)
        serve_urls = {
            app: ctx.serve.deploy(
                app,
                f"/{app}",
                offline_settings(ctx.models, ctx.subdir(app), IMAGE_SEARCH_ENABLED=True, **extra),
            )
            for app, extra in (("serving", {}), ("servingq", IN_REPLICA))
        }
        serve_urls["fast"] = fast_url
        try:
            samples, rounds = asyncio.run(
                _measure(ctx, model, f"http://127.0.0.1:{port}", serve_urls, duration)
            )
        finally:
            for app in ("serving", "servingq"):
                ctx.serve.delete(app)
    return _report(samples, rounds, ctx, duration, time.perf_counter() - started)


async def _measure(
    ctx: Context, model: Any, bare_url: str, serve_urls: dict[str, str], duration: float
) -> tuple[dict[tuple[str, int], Sample], list[dict[tuple[str, int], Sample]]]:
    from ray import serve

    handles = {
        app: serve.get_deployment_handle("ClipEmbedder", app_name=app)
        for app in ("serving", "servingq")
    }
    body = {"model": "clip", "input": TEXT}
    async with http_session() as session:

        async def bare() -> None:
            async with session.post(f"{bare_url}/v1/embeddings", json=body) as response:
                await expect_ok(response)

        def serve_http(app: str) -> Any:
            url = f"{serve_urls[app]}/v1/embeddings"

            async def call() -> None:
                async with session.post(url, json=body) as response:
                    await expect_ok(response)

            return call

        def serve_handle(app: str) -> Any:
            handle = handles[app]

            async def call() -> None:
                await handle.embed_text.remote([TEXT])

            return call

        def direct() -> None:
            model.embed_texts([TEXT])

        async def run_path(path: str, concurrency: int, seconds: float) -> Sample:
            if path == "direct":
                return threaded_closed_loop(direct, concurrency, seconds)
            call = {
                "bare FastAPI": bare,
                "Serve HTTP": serve_http("serving"),
                "Serve handle": serve_handle("serving"),
                f"Serve HTTP, {QUEUED}": serve_http("servingq"),
                f"Serve handle, {QUEUED}": serve_handle("servingq"),
                NO_MODEL: healthz("serving"),
                FAST: serve_http("fast"),
                FAST_NO_MODEL: healthz("fast"),
            }[path]
            return await closed_loop(call, concurrency, seconds)

        def healthz(app: str) -> Any:
            url = f"{serve_urls[app]}/healthz"

            async def call() -> None:
                async with session.get(url) as response:
                    await expect_ok(response)

            return call

        for path in PATHS:  # connections, caches, first-call costs: not measured
            await run_path(path, 4, 0.5)

        totals: dict[tuple[str, int], Sample] = {}
        rounds: list[dict[tuple[str, int], Sample]] = []
        for r in range(ctx.rounds):
            this_round: dict[tuple[str, int], Sample] = {}
            for concurrency in CONCURRENCY:
                order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]  # rotate the order
                for path in order:
                    sample = await run_path(path, concurrency, duration)
                    this_round[(path, concurrency)] = sample
                    totals.setdefault((path, concurrency), Sample()).add(sample)
            rounds.append(this_round)
    return totals, rounds


def _report(
    totals: dict[tuple[str, int], Sample],
    rounds: list[dict[tuple[str, int], Sample]],
    ctx: Context,
    duration: float,
    seconds: float,
) -> Section:
    def added(path: str, concurrency: int) -> float:
        return median(
            r[(path, concurrency)].p50_ms - r[("direct", concurrency)].p50_ms for r in rounds
        )

    rows = []
    for concurrency in CONCURRENCY:
        direct = totals[("direct", concurrency)]
        for path in PATHS:
            sample = totals[(path, concurrency)]
            rows.append(
                [
                    concurrency,
                    path,
                    fmt(sample.p50_ms, 2),
                    fmt(sample.p99_ms, 2),
                    fmt(sample.throughput, 0),
                    "—" if path == "direct" else f"{added(path, concurrency):+.2f}",
                    fmt(sample.throughput / direct.throughput, 2) if direct.throughput else "n/a",
                    sample.errors,
                ]
            )
    http_added = added("Serve HTTP", 1)
    handle_added = added("Serve handle", 1)
    bare_added = added("bare FastAPI", 1)
    over_bare = median(r[("Serve HTTP", 1)].p50_ms - r[("bare FastAPI", 1)].p50_ms for r in rounds)
    healthz_p50 = median(r[(NO_MODEL, 1)].p50_ms for r in rounds)
    fast_added = added(FAST, 1)
    fast_healthz_p50 = median(r[(FAST_NO_MODEL, 1)].p50_ms for r in rounds)
    floor = bare_added + handle_added  # bare HTTP plus one deployment hop
    figures: dict[str, Any] = {
        "floor_ms_c1": floor,
        "fast_path_over_floor_ms_c1": fast_added - floor,
        "healthz_p50_ms_c1": healthz_p50,
        "fast_path_healthz_p50_ms_c1": fast_healthz_p50,
        "serve_http_fast_path_added_ms_c1": fast_added,
        "fast_path_throughput_vs_default": {
            f"HTTP@c{c}": totals[(FAST, c)].throughput
            / max(totals[("Serve HTTP", c)].throughput, 1e-9)
            for c in CONCURRENCY
        },
        "throughput_queue_in_replica_vs_router": {
            f"{kind}@c{c}": totals[(f"Serve {kind}, {QUEUED}", c)].throughput
            / max(totals[(f"Serve {kind}", c)].throughput, 1e-9)
            for kind in ("HTTP", "handle")
            for c in CONCURRENCY
        },
        "serve_http_added_ms_c1": http_added,
        "serve_handle_added_ms_c1": handle_added,
        "bare_fastapi_added_ms_c1": bare_added,
        "serve_http_over_bare_ms_c1": over_bare,
        "paths": {f"{p}@c{c}": s.summary() for (p, c), s in totals.items()},
    }
    verdict = "met" if http_added <= TARGET_MS else "not met"
    fast_verdict = "met" if fast_added <= TARGET_MS else "not met"
    floor_verdict = "met" if fast_added <= floor + OVER_FLOOR_MS else "not met"
    markdown = "\n\n".join(
        [
            f"Model: tiny CLIP text embedding of {TEXT!r} (one torch thread everywhere). "
            f"{ctx.rounds} round(s) of {duration:g} s per path and concurrency, paths in rotating "
            "order. *Added p50* is the median over rounds of (p50 of the path − p50 of the "
            "direct call in the same round).",
            md_table(
                [
                    "concurrency",
                    "path",
                    "p50 ms",
                    "p99 ms",
                    "req/s",
                    "added p50 ms",
                    "req/s vs direct",
                    "errors",
                ],
                rows,
            ),
            f"Serve added latency at concurrency 1: **HTTP {http_added:+.2f} ms**, handle "
            f"{handle_added:+.2f} ms over a direct call (bare FastAPI + uvicorn: "
            f"{bare_added:+.2f} ms; Serve HTTP over bare FastAPI: {over_bare:+.2f} ms). "
            f"Target: HTTP ≤ {TARGET_MS} ms over direct — **{verdict}** on this machine. "
            f"Where it goes: `GET /healthz` through the proxy and the Gateway alone, no model and "
            f"no body, takes {healthz_p50:.2f} ms (p50); one handle call to the model replica "
            f"adds {handle_added:+.2f} ms; the rest is the POST body, which the Gateway replica "
            "fetches from the proxy with one more actor call (Ray Serve's design), and the route.",
            f"On Ray Serve's fast path (`configs/fast-path.env`: HAProxy in front, the Gateway "
            f"replica serving HTTP itself, gRPC between replicas): **HTTP {fast_added:+.2f} ms** "
            f"over direct at concurrency 1 — **{fast_verdict}**; `GET /healthz` "
            f"{fast_healthz_p50:.2f} ms (p50) against {healthz_p50:.2f} ms through Serve's proxy; "
            "throughput over the default path: "
            + ", ".join(
                f"{k} {fmt(v, 2)}x" for k, v in figures["fast_path_throughput_vs_default"].items()
            )
            + ".",
            f"The floor at concurrency 1, bare HTTP plus one deployment hop (bare FastAPI's "
            f"added {bare_added:+.2f} ms + the Serve handle's {handle_added:+.2f} ms): "
            f"{floor:+.2f} ms. The fast path adds {fast_added:+.2f} ms, "
            f"{fast_added - floor:+.2f} ms over the floor. Target: ≤ floor + "
            f"{OVER_FLOOR_MS:g} ms — **{floor_verdict}**.",
            "Requests waiting in the model replica (`MODEL_MAX_ONGOING_REQUESTS=64`) over "
            "waiting in Serve's router (the default, 1), throughput: "
            + ", ".join(
                f"{k} {fmt(v, 2)}x"
                for k, v in figures["throughput_queue_in_replica_vs_router"].items()
            )
            + ".",
        ]
    )
    return Section("1. Serving overhead", markdown, figures, seconds)
