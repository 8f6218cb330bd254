"""Benchmark 5, cold start: process start to /readyz 200 for the offline profile, per module,
and the first requests after it, with and without model warm-up.

Each start is a fresh `python -m bench.serve_child` process (its own Ray, the offline
profile's settings from `configs/offline.env`, tiny models, storage in a temporary
directory). The clock starts before the process is spawned and stops at the first 200 from
/readyz; the state of each module in /readyz's body is polled too, so the time at which each
module became ready is known within a start of all modules. Then one request per enabled
module, twice: the first is the one warm-up is meant to make fast. `MODEL_WARM_UP=0` turns
the warm-up off for the comparison.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx

from bench.context import Context, Section
from bench.env import REPO, child_environment
from bench.inputs import random_images, reference_wav
from bench.machine import free_port
from bench.servers import stop_process
from bench.stats import median
from bench.tables import fmt, md_table
from serve_app.tiny import model_settings

MODULES = ("image", "image_search", "voice")
SWITCHES = {
    "image": "IMAGE_ENABLED",
    "image_search": "IMAGE_SEARCH_ENABLED",
    "voice": "VOICE_ENABLED",
}
READY_TIMEOUT_S = 900


def _plan(ctx: Context) -> list[tuple[str, bool]]:
    pairs = [("all", True), ("all", False)]
    if ctx.quick:
        return pairs
    plan = [(module, True) for module in MODULES]
    return plan + pairs + pairs[::-1]


def run(ctx: Context) -> Section:
    started = time.perf_counter()
    results = []
    images = iter(random_images(64, seed=23))
    for target, warm in _plan(ctx):
        results.append(_start(ctx, target, warm, images))
    model_level = _model_level(ctx)
    return _report(results, model_level, time.perf_counter() - started)


def _model_level(ctx: Context) -> list[dict[str, Any]]:
    """First and second call of each model in a fresh process, with and without warm-up
    (`bench.warmup_child`): the same question without Ray and HTTP in the way."""
    samples = 1 if ctx.quick else 3
    out = []
    for r in range(samples):
        for model in ("clip", "voice", "image"):
            for warm in (False, True) if r % 2 == 0 else (True, False):
                args = [
                    sys.executable,
                    "-m",
                    "bench.warmup_child",
                    "--model",
                    model,
                    "--models",
                    str(ctx.models),
                ] + (["--warm-up"] if warm else [])
                done = subprocess.run(
                    args, cwd=REPO, capture_output=True, text=True, timeout=600, check=True
                )
                out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def _settings(ctx: Context, target: str, warm: bool, work: str) -> dict[str, Any]:
    models = ctx.models
    settings: dict[str, Any] = {
        **model_settings(models),
        "LOCAL_STORAGE_DIR": f"{work}/storage",
        "IMAGE_SEARCH_DB_PATH": f"{work}/image_search.db",
        "IMAGE_SEARCH_DB_BACKUP_ENABLED": False,
        "MODEL_WARM_UP": warm,
    }
    for module, switch in SWITCHES.items():
        settings[switch] = target in ("all", module)
    return settings


def _start(ctx: Context, target: str, warm: bool, images: Any) -> dict[str, Any]:
    work = ctx.subdir(f"coldstart-{target}-{'warm' if warm else 'cold'}-{time.time_ns()}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = _settings(ctx, target, warm, str(work))
    env = child_environment()
    env.pop("OPENAI_API_KEY", None)
    log = open(ctx.log_dir / f"coldstart-{target}-{warm}.log", "ab")  # noqa: SIM115
    t0 = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.serve_child",
            "--port",
            str(port),
            "--settings",
            json.dumps(settings),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out: dict[str, Any] = {
        "target": target,
        "warm_up": warm,
        "module_ready_s": {},
        "first_ms": {},
        "second_ms": {},
    }
    try:
        enabled = MODULES if target == "all" else (target,)
        deadline = t0 + READY_TIMEOUT_S
        with httpx.Client(timeout=30) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"serve_child exited with {process.returncode}")
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{target}: not ready after {READY_TIMEOUT_S}s")
                try:
                    response = client.get(f"{url}/readyz")
                except httpx.HTTPError:
                    time.sleep(0.2)
                    continue
                now = time.perf_counter() - t0
                out.setdefault("http_up_s", now)
                try:  # before the app is deployed the proxy answers plain text
                    body = response.json()
                except ValueError:
                    body = {}
                for module in enabled:
                    state = body.get("modules", {}).get(module, {}).get("state")
                    if state == "ready":
                        out["module_ready_s"].setdefault(module, now)
                if response.status_code == 200:
                    out["ready_s"] = now
                    break
                time.sleep(0.2)
            for module in enabled:
                for key in ("first_ms", "second_ms"):
                    t1 = time.perf_counter()
                    _request(client, url, module, next(images))
                    out[key][module] = (time.perf_counter() - t1) * 1000
    finally:
        t_stop = time.perf_counter()
        stop_process(process, timeout_s=60)
        out["stop_s"] = time.perf_counter() - t_stop
        log.close()
    return out


def _request(client: httpx.Client, url: str, module: str, image: bytes) -> None:
    if module == "image":
        response = client.post(
            f"{url}/v1/images/generate", json={"title": "cold start", "seed": 1}, timeout=300
        )
    elif module == "image_search":
        response = client.post(
            f"{url}/v1/projects/cold/images",
            files={"file": ("a.jpg", image, "image/jpeg")},
            timeout=300,
        )
    else:
        response = client.post(
            f"{url}/v1/voice/generate",
            files={"ref_audio": ("ref.wav", reference_wav(), "audio/wav")},
            data={
                "text": "Nice to meet you.",
                "ref_text": "Hello there, how are you?",
                "seed": "1",
                "format": "mp3",
            },
            timeout=300,
        )
    if response.status_code >= 300:
        raise RuntimeError(f"{module}: HTTP {response.status_code}: {response.text[:300]}")


def _report(
    results: list[dict[str, Any]], model_level: list[dict[str, Any]], seconds: float
) -> Section:
    rows = []
    for r in results:
        modules = MODULES if r["target"] == "all" else (r["target"],)
        rows.append(
            [
                r["target"],
                "on" if r["warm_up"] else "off",
                fmt(r["ready_s"], 1),
                ", ".join(
                    f"{m} {fmt(r['module_ready_s'].get(m, float('nan')), 1)}" for m in modules
                ),
                ", ".join(
                    f"{m} {fmt(r['first_ms'][m], 0)} / {fmt(r['second_ms'][m], 0)}" for m in modules
                ),
                fmt(r["stop_s"], 1),
            ]
        )
    both = [r for r in results if r["target"] == "all"]
    effect_rows = []
    figures: dict[str, Any] = {"starts": results, "warm_up_effect": {}}
    for module in MODULES:
        on = [r["first_ms"][module] for r in both if r["warm_up"]]
        off = [r["first_ms"][module] for r in both if not r["warm_up"]]
        second = [r["second_ms"][module] for r in both]
        if on and off:
            figures["warm_up_effect"][module] = {
                "first_ms_with": median(on),
                "first_ms_without": median(off),
                "second_ms": median(second),
            }
            effect_rows.append(
                [
                    module,
                    fmt(median(off), 0),
                    fmt(median(on), 0),
                    fmt(median(off) / median(on), 1) + "x",
                    fmt(median(second), 0),
                ]
            )
    if both:
        ready_on = [r["ready_s"] for r in both if r["warm_up"]]
        ready_off = [r["ready_s"] for r in both if not r["warm_up"]]
        figures["ready_all_s"] = {"with": median(ready_on), "without": median(ready_off)}
    model_rows = []
    figures["model_warm_up_effect"] = {}
    for model in ("clip", "voice", "image"):
        runs = [m for m in model_level if m["model"] == model]
        off_ms = median(m["first_ms"] for m in runs if not m["warm_up"])
        on_ms = median(m["first_ms"] for m in runs if m["warm_up"])
        second_ms = median(m["second_ms"] for m in runs)
        cost = median(m["warm_up_ms"] for m in runs if m["warm_up"])
        figures["model_warm_up_effect"][model] = {
            "first_ms_without": off_ms,
            "first_ms_with": on_ms,
            "second_ms": second_ms,
            "warm_up_ms": cost,
            "samples": len(runs) // 2,
        }
        model_rows.append(
            [
                model,
                fmt(off_ms, 1),
                fmt(on_ms, 1),
                fmt(off_ms / on_ms, 2) + "x",
                fmt(second_ms, 1),
                fmt(cost, 0),
            ]
        )
    ready: dict[str, list[float]] = {}
    for r in results:
        ready.setdefault(f"{r['target']}/{'warm' if r['warm_up'] else 'cold'}", []).append(
            r["ready_s"]
        )
    figures["ready_s"] = {key: median(values) for key, values in ready.items()}
    markdown = "\n\n".join(
        [
            "Each row is a fresh process (its own Ray) serving the offline profile "
            "(`configs/offline.env`, tiny models): seconds from spawning it to /readyz 200, when "
            "each module turned ready within it, and the latency of the first and second "
            "request per module after that (image: generate 128x128 with 2 steps; image_search: "
            "upload one JPEG; voice: clone from a 3 s WAV with 8 steps).",
            md_table(
                [
                    "modules",
                    "warm-up",
                    "to /readyz 200 s",
                    "module ready at s",
                    "first / second request ms",
                    "shutdown s",
                ],
                rows,
            ),
            "Warm-up effect (all modules, median of starts): first request without and with "
            "warm-up at replica start.",
            md_table(
                [
                    "module",
                    "first request, no warm-up ms",
                    "first request, warm-up ms",
                    "speed-up",
                    "second request ms",
                ],
                effect_rows,
            ),
            (
                f"Time to /readyz 200 with all modules (median of starts): "
                f"{fmt(figures['ready_all_s']['with'], 1)} s with warm-up, "
                f"{fmt(figures['ready_all_s']['without'], 1)} s without. A module's first request "
                "can stay slower than its second for reasons outside the model (the image-search "
                "upload also creates the project, its index and its storage directory)."
                if both
                else ""
            ),
            "The same at the model level, without Ray or HTTP: each model loaded in a fresh "
            "process (one torch thread), with or without `warm_up()`, then two real calls "
            f"(median of {len(model_level) // 6 or 1} sample(s) each, alternating order):",
            md_table(
                [
                    "model",
                    "first call, no warm-up ms",
                    "first call, warm-up ms",
                    "speed-up",
                    "second call ms",
                    "warm-up cost ms",
                ],
                model_rows,
            ),
        ]
    )
    return Section("5. Cold start", markdown, figures, seconds)
