"""Benchmark 4, embedding uploads: one batch of 32 images against 32 single uploads.

Through our Serve graph over HTTP (the image-search module alone, tiny CLIP on one thread):
`POST /v1/projects/{p}/images/batch` with 32 files, against 32 `POST .../images` one after
another, and 32 single uploads 8 at a time. Each run uploads 32 new images (distinct
bytes: a duplicate would skip the embedding). The variants take turns round by round.
Reported: images/s, and CPU seconds per image of this process and every process it
started (Ray's raylet, the proxy and the replicas included).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.app_settings import offline_settings
from bench.context import Context, Section
from bench.inputs import random_images
from bench.load import expect_ok, http_session
from bench.machine import cpu_seconds_of_tree
from bench.stats import median
from bench.tables import fmt, md_table

BATCH = 32
VARIANTS = ("batch of 32", "32 single, one at a time", "32 single, 8 at a time")
TARGET_RATIO = 3.0


def run(ctx: Context) -> Section:
    started = time.perf_counter()
    rounds = max(ctx.rounds, 2) if ctx.quick else max(ctx.rounds, 5)
    url = ctx.serve.deploy(
        "embedding",
        "/embedding",
        offline_settings(ctx.models, ctx.subdir("embedding"), IMAGE_SEARCH_ENABLED=True),
    )
    try:
        images = random_images(BATCH * len(VARIANTS) * (rounds + 1), seed=11)
        results = asyncio.run(_measure(url, images, rounds))
    finally:
        ctx.serve.delete("embedding")
    return _report(results, rounds, time.perf_counter() - started)


async def _measure(url: str, images: list[bytes], rounds: int) -> dict[str, list[dict]]:
    import aiohttp

    chunks = iter(images[i : i + BATCH] for i in range(0, len(images), BATCH))
    async with http_session() as session:

        async def single(project: str, data: bytes, name: str) -> None:
            form = aiohttp.FormData()
            form.add_field("file", data, filename=name, content_type="image/jpeg")
            async with session.post(f"{url}/v1/projects/{project}/images", data=form) as r:
                await expect_ok(r)

        async def batch(project: str, files: list[bytes]) -> None:
            form = aiohttp.FormData()
            for i, data in enumerate(files):
                form.add_field("files", data, filename=f"{i}.jpg", content_type="image/jpeg")
            async with session.post(f"{url}/v1/projects/{project}/images/batch", data=form) as r:
                body = await expect_ok(r)
            assert b'"created":32' in body.replace(b" ", b""), body[:200]

        async def run_variant(variant: str, files: list[bytes], project: str) -> None:
            if variant == VARIANTS[0]:
                await batch(project, files)
            elif variant == VARIANTS[1]:
                for i, data in enumerate(files):
                    await single(project, data, f"{i}.jpg")
            else:
                queue = list(enumerate(files))

                async def worker() -> None:
                    while queue:
                        i, data = queue.pop()
                        await single(project, data, f"{i}.jpg")

                await asyncio.gather(*(worker() for _ in range(8)))

        for variant in VARIANTS:  # first calls: not measured
            await run_variant(variant, next(chunks), "warm")
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for r in range(rounds):
            for variant in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
                files = next(chunks)
                cpu0, t0 = cpu_seconds_of_tree(), time.perf_counter()
                await run_variant(variant, files, f"round{r}")
                wall, cpu = time.perf_counter() - t0, cpu_seconds_of_tree() - cpu0
                results[variant].append({"wall_s": wall, "cpu_s": cpu})
    return results


def _report(results: dict[str, list[dict]], rounds: int, seconds: float) -> Section:
    def images_per_s(variant: str) -> float:
        return BATCH / median(r["wall_s"] for r in results[variant])

    def cpu_ms_per_image(variant: str) -> float:
        return median(r["cpu_s"] for r in results[variant]) / BATCH * 1000

    base = images_per_s(VARIANTS[1])
    base_cpu = cpu_ms_per_image(VARIANTS[1])
    per_round = [
        s["wall_s"] / b["wall_s"]
        for b, s in zip(results[VARIANTS[0]], results[VARIANTS[1]], strict=True)
    ]
    rows = [
        [
            v,
            fmt(images_per_s(v), 1),
            fmt(images_per_s(v) / base, 2),
            fmt(cpu_ms_per_image(v), 1),
            fmt(cpu_ms_per_image(v) / base_cpu, 2),
        ]
        for v in VARIANTS
    ]
    ratio = images_per_s(VARIANTS[0]) / base
    verdict = "met" if ratio >= TARGET_RATIO else "not met"
    figures = {
        "batch_vs_single_ratio": ratio,
        "batch_vs_concurrent_single_ratio": images_per_s(VARIANTS[0]) / images_per_s(VARIANTS[2]),
        "per_round_ratio": per_round,
        "raw": results,
    }
    markdown = "\n\n".join(
        [
            f"{rounds} round(s); each run uploads 32 new 192x192 JPEGs into the graph (embed, "
            "store the original in the local store, index in SQLite + hnswlib). Medians over "
            "rounds; CPU is user + system time of every process of the run (client, Ray, "
            "replicas).",
            md_table(
                ["upload", "images/s", "vs 32 single", "CPU ms / image", "CPU vs single"], rows
            ),
            f"Batch over single uploads: **{fmt(ratio, 2)}x** images/s (per round: "
            + ", ".join(fmt(v, 2) for v in per_round)
            + f"). Target ≥ {TARGET_RATIO:g}x — **{verdict}**.",
        ]
    )
    return Section("4. Embedding uploads", markdown, figures, seconds)
