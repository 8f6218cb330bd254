"""Benchmark 2, mixed workload: image generation, search and voice requests at once.

Three servers hold the same tiny models and answer the same three routes:

- baseline: the original server's design, one process with one global lock around every
  model call (`bench.baseline_server --mode mixed`, torch on both cores);
- graph, 1 thread: our Serve graph, one lock per deployment (each model replica on its own
  process), `TORCH_CPU_THREADS=1` per model replica;
- graph, 1 thread, priorities: the same with the offline profile's CPU priorities
  (`*_CPU_NICE`: the Gateway and CLIP yield the most, image less, voice keeps Ray's 15);
- graph, 1 thread, priorities, fast path: that on Ray Serve's fast path (HAProxy in front,
  the Gateway answering HTTP itself, gRPC between replicas), the production path, in a Ray
  of its own (`bench.serve_child`);
- graph, 1 thread, in-replica queue: model replicas that hold their whole queue
  (`MODEL_MAX_ONGOING_REQUESTS=65`; waiting requests wait inside the replica in order)
  instead of one request (the default; the rest wait in Serve's router).

Closed-loop clients per route (image 2, search 4, voice 2) run at the same time for a fixed
time; the servers take turns round by round. Per route: requests/s and p50/p99. The
headline is the ratio of throughputs, per route and as a geometric mean of the three.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.app_settings import fast_path_env, offline_settings
from bench.context import Context, Section
from bench.inputs import clip_dim, fill_graph, reference_wav
from bench.load import closed_loop, expect_ok, http_session
from bench.machine import cpu_seconds_of_tree, free_port
from bench.servers import subprocess_server, wait_http_ok, wait_project_filled
from bench.stats import Sample, geomean
from bench.tables import fmt, md_table

ROUTES = ("image", "search", "voice")
CLIENTS = {"image": 2, "search": 4, "voice": 2}
PROJECT = "mix"
FILL = 1000  # vectors in the searched project
IMAGE_BODY = {
    "title": "A red fox",
    "description": "in the snow",
    "width": 64,
    "height": 64,
    "steps": 2,
    "seed": 1,
}
SEARCH_BODY = {"query": "a red fox in the snow", "limit": 10}
VOICE_FIELDS = {
    "text": "Nice to meet you.",
    "ref_text": "Hello there, how are you?",
    "nfe_steps": "8",
    "seed": "1",
    "format": "mp3",
}
TARGET_RATIO = 1.5


def _graph_settings(ctx: Context, name: str, extra: dict[str, Any]) -> dict[str, Any]:
    return offline_settings(
        ctx.models,
        ctx.subdir(name),
        **{"IMAGE_ENABLED": True, "IMAGE_SEARCH_ENABLED": True, "VOICE_ENABLED": True, **extra},
    )


PRIORITIES = "graph, 1 thread, priorities"
FAST_PATH = "graph, 1 thread, priorities, fast path"
# The offline profile's CPU priorities (configs/offline.env): HTTP handling and the CLIP model
# yield the most, the image model less, the voice model keeps Ray's 15.
PRIORITY_SETTINGS = {"GATEWAY_CPU_NICE": 19, "CLIP_CPU_NICE": 19, "IMAGE_CPU_NICE": 18}


def run(
    ctx: Context,
    variants: dict[str, dict[str, Any]] | None = None,
    fast_variants: dict[str, dict[str, Any]] | None = None,
) -> Section:
    """Graph apps to compare, name -> extra settings: `variants` on Serve's default HTTP path
    (apps on this process's Ray), `fast_variants` on Serve's fast path, the production path,
    each in a Ray of its own (`bench.serve_child`: Ray reads the switch once per process)."""
    started = time.perf_counter()
    duration = 8.0 if ctx.quick else 20.0
    variants = (
        {
            "graph, 1 thread": {"TORCH_CPU_THREADS": 1},
            PRIORITIES: {"TORCH_CPU_THREADS": 1, **PRIORITY_SETTINGS},
            "graph, 1 thread, in-replica queue": {
                "TORCH_CPU_THREADS": 1,
                "MODEL_MAX_ONGOING_REQUESTS": 65,
            },
        }
        if variants is None
        else variants
    )
    if fast_variants is None:
        fast_variants = {FAST_PATH: {"TORCH_CPU_THREADS": 1, **PRIORITY_SETTINGS}}
    port = free_port()
    baseline_args = [
        "-m",
        "bench.baseline_server",
        "--mode",
        "mixed",
        "--models",
        str(ctx.models),
        "--port",
        str(port),
        "--threads",
        "2",
        "--work",
        str(ctx.subdir("mixed-baseline")),
        "--fill",
        str(FILL),
    ]
    urls: dict[str, str] = {}
    apps: list[str] = []
    with ExitStack() as servers:
        process = servers.enter_context(
            subprocess_server(baseline_args, ctx.log_dir / "mixed_baseline.log")
        )
        children = [
            _start_fast_child(ctx, servers, f"mixedf{i}", extra)
            for i, extra in enumerate(fast_variants.values())
        ]
        try:
            for i, (name, extra) in enumerate(variants.items()):
                app = f"mixed{i}"
                urls[name] = ctx.serve.deploy(app, f"/{app}", _graph_settings(ctx, app, extra))
                apps.append(app)
                _fill_graph(ctx, app)
            wait_http_ok(f"http://127.0.0.1:{port}/readyz", 600, process)
            for name, (url, child, log) in zip(fast_variants, children, strict=True):
                wait_http_ok(f"{url}/readyz", 600, child, log_path=log)
                wait_project_filled(url, PROJECT, FILL, 600, child, log)
                urls[name] = url
            urls = {"baseline (global lock)": f"http://127.0.0.1:{port}", **urls}
            totals, rounds, cpu = asyncio.run(_measure(ctx, urls, duration))
        finally:
            for app in apps:
                ctx.serve.delete(app)
    return _report(totals, rounds, cpu, ctx, duration, time.perf_counter() - started)


def _start_fast_child(
    ctx: Context, servers: ExitStack, name: str, extra: dict[str, Any]
) -> tuple[str, subprocess.Popen[bytes], Path]:
    """A graph on Serve's fast path in a process and Ray of its own, its project filled."""
    port = free_port()
    args = [
        "-m",
        "bench.serve_child",
        "--port",
        str(port),
        "--settings",
        json.dumps(_graph_settings(ctx, name, extra)),
        "--fill",
        f"{PROJECT}:{FILL}:{clip_dim(ctx.models)}",
    ]
    log = ctx.log_dir / f"{name}.log"
    child = servers.enter_context(
        subprocess_server(args, log, env=fast_path_env(ctx.subdir(f"h{name[-1]}")))
    )
    return f"http://127.0.0.1:{port}", child, log


def _fill_graph(ctx: Context, app: str) -> None:
    """The same searched project as the baseline's: FILL random vectors, through the handle."""
    fill_graph(app, PROJECT, FILL, clip_dim(ctx.models))


async def _measure(
    ctx: Context, urls: dict[str, str], duration: float
) -> tuple[dict[tuple[str, str], Sample], list[dict[tuple[str, str], Sample]], dict[str, float]]:
    import aiohttp

    reference = reference_wav()
    async with http_session() as session:

        def calls(url: str) -> dict[str, Any]:
            async def image() -> None:
                async with session.post(f"{url}/v1/images/generate", json=IMAGE_BODY) as r:
                    await expect_ok(r)

            async def search() -> None:
                async with session.post(
                    f"{url}/v1/projects/{PROJECT}/images/search", json=SEARCH_BODY
                ) as r:
                    await expect_ok(r)

            async def voice() -> None:
                form = aiohttp.FormData()
                form.add_field("ref_audio", reference, filename="ref.wav", content_type="audio/wav")
                for key, value in VOICE_FIELDS.items():
                    form.add_field(key, value)
                async with session.post(f"{url}/v1/voice/generate", data=form) as r:
                    await expect_ok(r)

            return {"image": image, "search": search, "voice": voice}

        async def mixed_run(url: str, seconds: float) -> dict[str, Sample]:
            route_calls = calls(url)
            results = await asyncio.gather(
                *(closed_loop(route_calls[route], CLIENTS[route], seconds) for route in ROUTES)
            )
            return dict(zip(ROUTES, results, strict=True))

        names = list(urls)
        for name in names:  # first calls, connections: not measured
            await mixed_run(urls[name], 2.0)
        totals: dict[tuple[str, str], Sample] = {}
        rounds: list[dict[tuple[str, str], Sample]] = []
        cpu: dict[str, float] = {}
        for r in range(ctx.rounds):
            this_round: dict[tuple[str, str], Sample] = {}
            for name in names[r % len(names) :] + names[: r % len(names)]:
                cpu0 = cpu_seconds_of_tree()
                results = await mixed_run(urls[name], duration)
                cpu[name] = cpu.get(name, 0.0) + cpu_seconds_of_tree() - cpu0
                for route, sample in results.items():
                    this_round[(name, route)] = sample
                    totals.setdefault((name, route), Sample()).add(sample)
            rounds.append(this_round)
    return totals, rounds, cpu


def _report(
    totals: dict[tuple[str, str], Sample],
    rounds: list[dict[tuple[str, str], Sample]],
    cpu: dict[str, float],
    ctx: Context,
    duration: float,
    seconds: float,
) -> Section:
    names = list(dict.fromkeys(name for name, _route in totals))
    cpu_rows = []
    for name in names:
        requests = sum(totals[(name, r)].count for r in ROUTES)
        wall = totals[(name, ROUTES[0])].wall_s
        cpu_rows.append(
            [
                name,
                fmt(cpu.get(name, 0.0) / max(requests, 1) * 1000, 1),
                fmt(cpu.get(name, 0.0) / max(wall, 1e-9), 2),
            ]
        )
    baseline = names[0]
    rows = []
    ratios: dict[str, dict[str, float]] = {}
    for name in names:
        ratios[name] = {}
        for route in ROUTES:
            sample = totals[(name, route)]
            base = totals[(baseline, route)]
            ratio = sample.throughput / base.throughput if base.throughput else float("nan")
            ratios[name][route] = ratio
            rows.append(
                [
                    name,
                    route,
                    fmt(sample.throughput, 2),
                    fmt(sample.p50_ms, 0),
                    fmt(sample.p99_ms, 0),
                    fmt(ratio, 2),
                    sample.errors,
                ]
            )
        ratios[name]["geomean"] = geomean(ratios[name][r] for r in ROUTES)
        total = sum(totals[(name, r)].throughput for r in ROUTES)
        base_total = sum(totals[(baseline, r)].throughput for r in ROUTES)
        ratios[name]["total req/s"] = total / base_total if base_total else float("nan")
    per_round = {
        name: [
            geomean(
                r[(name, route)].throughput / r[(baseline, route)].throughput
                for route in ROUTES
                if r[(baseline, route)].throughput
            )
            for r in rounds
        ]
        for name in names[1:]
    }
    best = max(names[1:], key=lambda n: ratios[n]["geomean"])
    summary_rows = [
        [
            name,
            fmt(ratios[name]["image"], 2),
            fmt(ratios[name]["search"], 2),
            fmt(ratios[name]["voice"], 2),
            f"**{fmt(ratios[name]['geomean'], 2)}**",
            fmt(ratios[name]["total req/s"], 2),
            ", ".join(fmt(v, 2) for v in per_round[name]),
        ]
        for name in names[1:]
    ]
    total = ratios[best]["total req/s"]
    verdict_total = "met" if total >= TARGET_RATIO else "not met"
    verdict = "met" if ratios[best]["geomean"] >= TARGET_RATIO else "not met"
    gains = [r for r in ROUTES if ratios[best][r] >= 1.05]
    losses = [r for r in ROUTES if ratios[best][r] <= 0.95]
    figures = {
        "ratios": ratios,
        "per_round_geomean": per_round,
        "best": best,
        "samples": {f"{n}/{r}": s.summary() for (n, r), s in totals.items()},
        "cpu_s": cpu,
    }
    markdown = "\n\n".join(
        [
            f"Clients at once: image {CLIENTS['image']} (64x64, 2 steps, PNG), search "
            f"{CLIENTS['search']} (text embedding + top-10 of {FILL} vectors), voice "
            f"{CLIENTS['voice']} (3 s WAV reference, 8 NFE steps, MP3). {ctx.rounds} round(s) of "
            f"{duration:g} s per server, servers in rotating order. Ratios are throughput over "
            "the global-lock baseline's.",
            md_table(
                ["server", "route", "req/s", "p50 ms", "p99 ms", "req/s vs baseline", "errors"],
                rows,
            ),
            md_table(
                [
                    "server",
                    "image",
                    "search",
                    "voice",
                    "geomean",
                    "total req/s",
                    "geomean per round",
                ],
                summary_rows,
            ),
            "CPU of this run's processes (client, servers, Ray) while each server was measured: "
            "per request (all routes together), and in cores busy on average (the machine has "
            "2; other users' load comes on top):",
            md_table(["server", "CPU ms / request", "cores busy"], cpu_rows),
            f"Best: **{best}**. Against the global-lock baseline: total requests/s "
            f"**{fmt(total, 2)}x** (target ≥ {TARGET_RATIO}x: **{verdict_total}**); geometric "
            f"mean of the per-route ratios **{fmt(ratios[best]['geomean'], 2)}x** (**{verdict}**)."
            + (f" Faster: {', '.join(gains)}." if gains else "")
            + (f" Slower: {', '.join(losses)}." if losses else "")
            + " With one lock per deployment a search no longer waits behind an image or voice "
            "call, so search runs far ahead of the baseline; on two cores, which the three "
            "models and the graph's own per-request work (proxy, Gateway, actor calls) already "
            "saturate, it then takes CPU that image and voice need (the baseline, which starves "
            "search, leaves them more of it). The CPU priorities give that CPU back to the "
            "models, and the fast path cuts the graph's own work per request (CPU ms / request "
            "above).",
        ]
    )
    return Section("2. Mixed workload", markdown, figures, seconds)
