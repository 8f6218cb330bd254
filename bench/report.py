"""Render docs/benchmarks.md from one run's sections."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from bench.context import Section
from bench.tables import fmt, md_table

ORDER = (
    "serving",
    "mixed",
    "index",
    "embedding",
    "coldstart",
    "models",
    "search",
    "duplicates",
    "reembed",
    "speech",
)


def _changes(sections: dict[str, Section]) -> str:
    """What we changed because of the benchmarks, with this run's figures where it has them."""
    index = (_get(sections, "index", "results") or [None])[0]
    persist = (
        f" (benchmark 3, {index['n']:,} vectors: rebuild {fmt(index['rebuild_s'], 1)} s, load "
        f"{fmt(index['load_s'], 2)} s, save {fmt(index['save_s'], 2)} s)"
        if index and index["rebuild_s"] == index["rebuild_s"]
        else " (benchmark 3)"
    )
    effect = _get(sections, "coldstart", "warm_up_effect") or {}
    faster = [m for m, e in effect.items() if e["first_ms_without"] > 1.05 * e["first_ms_with"]]
    same = [m for m in effect if m not in faster]
    warm = (
        " Benchmark 5, first request after /readyz without → with warm-up: "
        + ", ".join(
            f"{m} {fmt(e['first_ms_without'], 0)} → {fmt(e['first_ms_with'], 0)} ms"
            for m, e in effect.items()
        )
        + (f" (faster for {', '.join(faster)}" if faster else " (")
        + (f"{'; ' if faster else ''}not faster for {', '.join(same)}" if same else "")
        + ")."
        if effect
        else ""
    )
    model_effect = _get(sections, "coldstart", "model_warm_up_effect") or {}
    m_faster = [
        m for m, e in model_effect.items() if e["first_ms_without"] > 1.05 * e["first_ms_with"]
    ]
    m_same = [m for m in model_effect if m not in m_faster]
    warm += (
        " At the model level (fresh process, no Ray or HTTP): "
        + ", ".join(
            f"{m} {fmt(e['first_ms_without'], 1)} → {fmt(e['first_ms_with'], 1)} ms "
            f"(second call {fmt(e['second_ms'], 1)} ms)"
            for m, e in model_effect.items()
        )
        + (f"; faster for {', '.join(m_faster)}" if m_faster else "")
        + (f"; not faster for {', '.join(m_same)}" if m_same else "")
        + "."
        if model_effect
        else ""
    )
    ratios = _get(sections, "mixed", "ratios") or {}
    one, two = ratios.get("graph, 1 thread"), ratios.get("graph, 2 threads")
    threads = (
        f" (benchmark 2: one thread per replica {fmt(one['geomean'], 2)}x the baseline, two "
        f"threads {fmt(two['geomean'], 2)}x; image {fmt(one['image'], 2)}x vs "
        f"{fmt(two['image'], 2)}x)"
        if one and two
        else " (benchmark 2, run of 2026-11-26, no longer repeated: one thread per replica 1.13x "
        "the baseline, two threads 0.58x)"
    )
    queue = _get(sections, "serving", "throughput_queue_in_replica_vs_router") or {}
    inq = ratios.get("graph, 1 thread, in-replica queue")
    queued = (
        " Benchmark 1, throughput with the queue in the replica over the default: "
        + ", ".join(
            f"{k.replace('@c', ' at c=')} {fmt(v, 1)}x"
            for k, v in queue.items()
            if not k.endswith("@c1")
        )
        + "."
        if queue
        else ""
    ) + (
        f" Benchmark 2: {fmt(inq['geomean'], 2)}x the baseline with it, "
        f"{fmt(one['geomean'], 2)}x without (image {fmt(inq['image'], 2)}x vs "
        f"{fmt(one['image'], 2)}x, voice {fmt(inq['voice'], 2)}x vs {fmt(one['voice'], 2)}x)."
        if one and inq
        else ""
    )
    fast_added = _get(sections, "serving", "serve_http_fast_path_added_ms_c1")
    http_added = _get(sections, "serving", "serve_http_added_ms_c1")
    fast_tput = _get(sections, "serving", "fast_path_throughput_vs_default") or {}
    fast = (
        f" Benchmark 1: Serve's added latency at c=1 {http_added:+.2f} ms → "
        f"{fast_added:+.2f} ms; throughput over the default path "
        + ", ".join(f"{k.replace('@c', ' at c=')} {fmt(v, 2)}x" for k, v in fast_tput.items())
        + "."
        if fast_added is not None and http_added is not None
        else ""
    )
    search_ratio = _get(sections, "search", "search_c32_ratio_vs_bare") or {}
    search_503 = _get(sections, "search", "search_c32_503") or {}
    gathered = (
        " Benchmark 7, 32 clients searching at once: "
        + ", ".join(
            f"{path} {fmt(ratio, 2)}x bare FastAPI's throughput with "
            f"{search_503.get(path, '?')} 503s"
            for path, ratio in search_ratio.items()
        )
        + "."
        if search_ratio
        else ""
    )
    fast_mixed = ratios.get("graph, 1 thread, priorities, fast path")
    mixed_fast = (
        f" Benchmark 2 on the fast path, with the priorities below: image "
        f"{fmt(fast_mixed['image'], 2)}x, search {fmt(fast_mixed['search'], 2)}x, voice "
        f"{fmt(fast_mixed['voice'], 2)}x the global lock, geomean "
        f"{fmt(fast_mixed['geomean'], 2)}x."
        if fast_mixed
        else ""
    )
    prio = ratios.get("graph, 1 thread, priorities")
    priorities = (
        f" Benchmark 2, default path, without → with them: image {fmt(one['image'], 2)}x → "
        f"{fmt(prio['image'], 2)}x, search {fmt(one['search'], 2)}x → "
        f"{fmt(prio['search'], 2)}x, voice {fmt(one['voice'], 2)}x → {fmt(prio['voice'], 2)}x "
        f"the global lock."
        if one and prio
        else ""
    )
    exact = (
        f" (benchmark 3: exact numpy takes {fmt(index['exact_p50_ms'], 2)} ms per query at "
        f"{index['n']:,} vectors here, so 50x needs {fmt(index['exact_p50_ms'] / 50, 3)} ms; "
        "hnswlib gets there only at an ef whose recall is far below 0.99, see the ef sweep)"
        if index
        else ""
    )
    return f"""\
- **Index persistence** (`deployments/vector_store/catalog.py`, `deployments/vector_index.py`):
  the VectorIndex replica used to rebuild every project's HNSW index from SQLite at start.
  Each project's index is now saved beside the database (`<db>.hnsw/`: temp file, fsync,
  rename; its sha256, size and the state it holds recorded in the `index_state` table, whose
  per-project `generation` is bumped in the same transaction as every change) every 60 s
  when changed, sooner after 10,000 changes, and at shutdown; at start it is loaded when all
  of that still matches SQLite, and a stale, damaged or foreign file is ignored and the
  index rebuilt as before{persist}.
- **Warm-up at replica start** (`warm_up()` in `DiffusionImageModel`, `ClipModel`,
  `VoiceModel`, run by the deployment constructors on the model's own thread before the
  replica reports ready; `MODEL_WARM_UP=1` by default, `0` turns it off): one tiny
  generation / embedding / synthesis.{warm} It lengthens the time to ready by its own
  duration (a fraction of a second with the tiny models).
- **One torch thread per model replica on the CPU** (`configs/offline.env`:
  `TORCH_CPU_THREADS=1`, was 2): three model replicas with two threads each on two cores
  oversubscribe them{threads}.
- **Queueing inside the model replica, as an option** (`deployments/model_queue.py`;
  `MODEL_MAX_ONGOING_REQUESTS`, default 1, the deployment contract: one request per GPU
  model replica, the rest in Serve's bounded queue): with `max_ongoing_requests=1` a request
  that finds the replica busy backs off in Serve's router (25 ms, doubling up to 0.5 s) while
  the model may idle. The model methods are now coroutines that wait their turn in a
  one-thread FIFO executor inside the replica, so with a higher
  `MODEL_MAX_ONGOING_REQUESTS` the next request starts the moment the model is free, and
  one cancelled while it waits never runs.{queued}
- Checked and already in place, not changed: `torch.inference_mode()` around every model
  call; no per-request model moves (only inputs go to the device); PNG/MP3 encoding, audio
  decoding and storage I/O on the Gateway, never on a model replica; CLIP batching for
  uploads (`/images/batch`, one `embed_images` call: benchmark 4); fewer F5-TTS steps as an
  option per request (`nfe_steps`) and by default (`VOICE_DEFAULT_NFE_STEPS`), f5-tts 1.1
  using its EPSS schedule by itself at 5, 6, 7, 10, 12 and 16 steps.
- **Ray Serve's fast path** (`configs/fast-path.env`: `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`,
  `RAY_SERVE_ENABLE_HA_PROXY=1`; on in `configs/rayservice.yaml`, `SERVE_FAST_PATH=1
  bin/serve-offline` for the offline profile): by default every HTTP request crosses Serve's
  Python proxy, whose replica then fetches the POST body back from it with one more actor
  call, before the hop to the model. On the fast path HAProxy forwards to the Gateway
  replica, which serves HTTP itself, and replicas call each other over gRPC.{fast} Not the
  offline default: HAProxy makes the Gateway replicas listen on all interfaces (ports from
  30000) whatever `http_options.host` says, which a loopback-only development server should
  not do silently.
- **Gathering at the caller** (`serve_app/call_batching.py`): concurrent CLIP text
  embeddings (search, `/v1/embeddings`), image embeddings (uploads, search by image) and
  index searches from one Gateway replica go to their deployment as one request, sent when
  the previous one comes back; the model still runs one request at a time, and the search
  route no longer asks the index whether the project exists before searching (one hop
  less).{gathered}
- **A router that does not let the model idle** (`deployments/model_router.py`): a request
  waiting for a busy model replica asks again as soon as one of its caller's requests to
  that model completes, and at the latest after 2 ms doubling to 20 ms (Serve's own: 25 ms
  doubling to 0.5 s). The module board no longer holds every request while it reads Serve's
  status.{mixed_fast}
- **CPU priorities where the models share the cores** (`core/cpu_priority.py`,
  `*_CPU_NICE`; `configs/offline.env`: Gateway and CLIP 19, image 18, voice Ray's 15): the
  global lock gave each route turns; the graph lets search, cheap per request, take CPU
  that voice and image need. Ray starts every replica at niceness 15 (raising a priority
  needs a privilege, so a replica can only yield): HTTP handling and CLIP yield the most,
  image less, voice keeps 15.{priorities}
- Not changed, for lack of a way to show a gain here: the index's speed-up against exact
  search{exact}.
"""


NOT_MEASURED = """\
This run had no GPU, so the GPU-only items of the issue are not implemented in the server:
fp16/bf16 (already the default on CUDA through `*_DTYPE=auto`), SDPA (diffusers and
open_clip use PyTorch's `scaled_dot_product_attention` by default), `channels_last`,
optional `torch.compile` and pre-allocated CUDA generators. Each must be kept only if a GPU
run shows it: benchmark 6 (`python -m bench --only models --device cuda [--compile]`, the
real-sized architectures with random weights) measures fp16, bf16, `channels_last` and
`torch.compile` against fp32 side by side; none can be shown on this CPU. Absolute times
here mean nothing for production: only ratios measured in the same run are reported, and
absolute figures count only from a GPU run.
"""

GPU_MEASURED = """\
Benchmark 6 ran on a GPU: its fp16, bf16, `channels_last` and `torch.compile` rows are the
evidence for keeping each GPU-only optimisation or not (only a variant faster than fp32 in
the same run counts). The server itself uses fp16/bf16 on CUDA by default (`*_DTYPE=auto`)
and PyTorch's `scaled_dot_product_attention` through diffusers and open_clip.
"""


def _get(sections: dict[str, Section], name: str, *keys: str) -> Any:
    section = sections.get(name)
    value: Any = section.figures if section else None
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _best(variants: dict[str, Any], key: Any) -> tuple[str, Any] | None:
    """(name, entry) of the variant with the smallest key(entry), errors skipped."""
    ok = [(k, v) for k, v in variants.items() if "error" not in v and key(v) == key(v)]
    return min(ok, key=lambda kv: key(kv[1])) if ok else None


def models_summary(sections: dict[str, Section]) -> list[list[str]]:
    """Rows for benchmark 6: fp32 and the fastest variant of each real-sized model."""
    figures = sections["models"].figures if "models" in sections else None
    if not figures:
        return []
    rows: list[list[str]] = []
    where = figures["device_name"]
    image = figures.get("image") or {}
    base = image.get("fp32")
    if base and "error" not in base:
        gen = base["generate_p50_ms"]
        text = (
            ", ".join(f"{k} step{'s' if k != '1' else ''} {fmt(v, 0)} ms" for k, v in gen.items())
            + f"; UNet forward {fmt(base['unet_p50_ms'], 0)} ms (fp32)"
        )
        last = list(gen)[-1]
        best = _best(image, lambda e: e["generate_p50_ms"][last])
        if best and best[0] != "fp32":
            e = best[1]
            text += (
                f"; {best[0]}: {last} steps {fmt(e['generate_p50_ms'][last], 0)} ms "
                f"({fmt(gen[last] / e['generate_p50_ms'][last], 2)}x), UNet "
                f"{fmt(e['unet_p50_ms'], 0)} ms"
            )
        rows.append(
            [f"sd-turbo-sized 512x512 generation, random weights ({where})", "—", text, "—"]
        )
    clip = figures.get("clip") or {}
    base = clip.get("fp32")
    if base and "error" not in base:
        rate = base["images_per_s"]
        text = ", ".join(f"batch {k} {fmt(v, 1)}" for k, v in rate.items()) + " images/s (fp32)"
        last = list(rate)[-1]
        best = _best(clip, lambda e: -e["images_per_s"][last])
        if best and best[0] != "fp32":
            text += (
                f"; {best[0]}: batch {last} {fmt(best[1]['images_per_s'][last], 1)} "
                f"({fmt(best[1]['images_per_s'][last] / rate[last], 2)}x)"
            )
        rows.append([f"CLIP ViT-B-32 embedding, random weights ({where})", "—", text, "—"])
    voice = figures.get("voice") or {}
    base = voice.get("fp32")
    if base and "error" not in base:
        rtf = base["rtf"]
        text = ", ".join(f"NFE {k} {fmt(v, 3)}" for k, v in rtf.items()) + " (fp32"
        text += f", {fmt(list(base['audio_s'].values())[0], 1)} s of audio)"
        first = list(rtf)[0]
        best = _best(voice, lambda e: e["rtf"][first])
        if best and best[0] != "fp32":
            text += f"; {best[0]}: NFE {first} {fmt(best[1]['rtf'][first], 3)}"
        rows.append(
            [
                f"F5-TTS v1 base real-time factor (synthesis s / audio s), random weights "
                f"({where})",
                "—",
                text,
                "—",
            ]
        )
    return rows


def search_summary(sections: dict[str, Section]) -> list[list[str]]:
    """Rows for benchmark 7: throughput, tail and 503s of search at 32 clients, per graph path."""
    from bench.search_load import TARGET_RATIO, TARGET_TAIL, verdicts

    ratio = _get(sections, "search", "search_c32_ratio_vs_bare")
    if not ratio:
        return []
    tails = _get(sections, "search", "search_c32_p99_over_p50")
    rejected = _get(sections, "search", "search_c32_503")
    added = _get(sections, "search", "search_c1_added_ms")
    bound = _get(sections, "search", "clip_max_queued_requests")

    def per_path(values: dict[str, float], digits: int, unit: str) -> str:
        return "; ".join(f"{p}: {fmt(v, digits)}{unit}" for p, v in values.items())

    return [
        [
            "Search at 32 concurrent HTTP clients vs bare FastAPI doing the same search "
            "in-process (req/s ratio)",
            f"≥ {TARGET_RATIO}x",
            per_path(ratio, 2, "x")
            + "; added p50 at 1 client: "
            + "; ".join(f"{p}: {v:+.2f} ms" for p, v in added.items()),
            verdicts(ratio, lambda v: v >= TARGET_RATIO),
        ],
        [
            "Search p99/p50 at 32 clients",
            f"≤ {TARGET_TAIL:g}",
            per_path(tails, 1, ""),
            verdicts(tails, lambda v: v <= TARGET_TAIL),
        ],
        [
            f"Search 503s at 32 clients with the default queue bounds "
            f"(`CLIP_MAX_QUEUED_REQUESTS={bound}`)",
            "0",
            "; ".join(f"{p}: {v}" for p, v in rejected.items()),
            verdicts(rejected, lambda v: v == 0),
        ],
    ]


def _summary(sections: dict[str, Section]) -> str:
    rows: list[list[str]] = []
    added = _get(sections, "serving", "serve_http_added_ms_c1")
    if added is not None:
        handle = _get(sections, "serving", "serve_handle_added_ms_c1")
        rows.append(
            [
                "Serve added latency per request, c=1 (HTTP over a direct call)",
                "≤ 2.5 ms",
                f"HTTP {added:+.2f} ms, handle {handle:+.2f} ms",
                "met" if added <= 2.5 else "**not met**",
            ]
        )
        fast = _get(sections, "serving", "serve_http_fast_path_added_ms_c1")
        if fast is not None:
            healthz = _get(sections, "serving", "healthz_p50_ms_c1")
            fast_healthz = _get(sections, "serving", "fast_path_healthz_p50_ms_c1")
            rows.append(
                [
                    "The same on Ray Serve's fast path (`configs/fast-path.env`)",
                    "≤ 2.5 ms",
                    f"HTTP {fast:+.2f} ms; /healthz {fmt(fast_healthz, 2)} ms vs "
                    f"{fmt(healthz, 2)} ms through Serve's proxy",
                    "met" if fast <= 2.5 else "**not met**",
                ]
            )
            floor = _get(sections, "serving", "floor_ms_c1")
            if floor is not None:
                from bench.serving import OVER_FLOOR_MS

                rows.append(
                    [
                        "Serve added latency at c=1 on the fast path vs the floor (bare FastAPI's "
                        "added latency + one Serve handle hop, same run)",
                        f"≤ floor + {OVER_FLOOR_MS:g} ms",
                        f"fast path {fast:+.2f} ms; floor {floor:+.2f} ms; "
                        f"{fast - floor:+.2f} ms over it",
                        "met" if fast <= floor + OVER_FLOOR_MS else "**not met**",
                    ]
                )
    ratios = _get(sections, "mixed", "ratios")
    if ratios:
        best = _get(sections, "mixed", "best")
        r = ratios[best]
        rows.append(
            [
                f"Mixed-workload throughput vs global-lock baseline ({best})",
                "≥ 1.5x",
                f"total req/s {fmt(r['total req/s'], 2)}x; per route: image {fmt(r['image'], 2)}x, "
                f"search {fmt(r['search'], 2)}x, voice {fmt(r['voice'], 2)}x, geomean "
                f"{fmt(r['geomean'], 2)}x",
                ("met" if r["total req/s"] >= 1.5 else "**not met**")
                + " (total), "
                + ("met" if r["geomean"] >= 1.5 else "**not met**")
                + " (per-route geomean)",
            ]
        )
        others = {name: v for name, v in ratios.items() if name not in (best, next(iter(ratios)))}
        if others:
            rows.append(
                [
                    "Mixed workload, other graph settings (geomean / total req/s)",
                    "—",
                    "; ".join(
                        f"{name}: {fmt(v['geomean'], 2)}x / {fmt(v['total req/s'], 2)}x"
                        for name, v in others.items()
                    ),
                    "—",
                ]
            )
    rows += search_summary(sections)
    results = _get(sections, "index", "results")
    if results:
        for r in results:
            ok = [s for s in r["sweep"] if s["recall"] >= 0.99]
            best = max(ok, key=lambda s: s["speedup"]) if ok else None
            rows.append(
                [
                    f"Index recall@10 and speed-up vs exact, {r['n']:,} x 512 ({r['data']})",
                    "recall ≥ 0.99 at ≥ 50x (50k)",
                    f"recall {r['recall_catalog']:.4f} at default ef, "
                    f"{fmt(r['exact_p50_ms'] / r['raw_p50_ms'], 1)}x (raw), "
                    f"{fmt(r['exact_p50_ms'] / r['catalog_p50_ms'], 1)}x (catalog)"
                    + (f"; best ≥0.99: ef={best['ef']} {fmt(best['speedup'], 1)}x" if best else ""),
                    "met" if best and best["speedup"] >= 50 else "**not met**",
                ]
            )
            if r["rebuild_s"] == r["rebuild_s"]:
                rows.append(
                    [
                        f"Index start-up, {r['n']:,} vectors: load vs rebuild",
                        "—",
                        f"{fmt(r['load_s'], 2)} s vs {fmt(r['rebuild_s'], 1)} s "
                        f"({fmt(r['rebuild_s'] / r['load_s'], 0)}x)",
                        "—",
                    ]
                )
    ratio = _get(sections, "embedding", "batch_vs_single_ratio")
    if ratio is not None:
        rows.append(
            [
                "Batch embedding (32 files) vs 32 single uploads",
                "≥ 3x",
                f"{fmt(ratio, 2)}x",
                "met" if ratio >= 3 else "**not met**",
            ]
        )
    ready = _get(sections, "coldstart", "ready_s")
    if ready:
        text = ", ".join(
            f"{k.split('/')[0]} {fmt(v, 1)} s" for k, v in ready.items() if k.endswith("/warm")
        )
        rows.append(
            [
                "Cold start: process start to /readyz 200 (offline profile, warm-up on)",
                "—",
                text,
                "—",
            ]
        )
    model_effect = _get(sections, "coldstart", "model_warm_up_effect")
    if model_effect:
        text = ", ".join(
            f"{m} {fmt(e['first_ms_without'], 1)} → {fmt(e['first_ms_with'], 1)} ms"
            for m, e in model_effect.items()
        )
        rows.append(
            ["First model call in a fresh process, without → with warm-up", "faster", text, "—"]
        )
    effect = _get(sections, "coldstart", "warm_up_effect")
    if effect:
        text = ", ".join(
            f"{m} {fmt(e['first_ms_without'], 0)} → {fmt(e['first_ms_with'], 0)} ms"
            for m, e in effect.items()
        )
        rows.append(["First request after ready, without → with warm-up", "faster", text, "—"])
    rows += models_summary(sections)
    if not rows:
        return "(no benchmark ran)"
    return md_table(["figure", "target", "measured (this run)", "verdict"], rows)


def render_section(section: Section) -> str:
    """One benchmark's section of docs/benchmarks.md, as `render` writes it."""
    return "\n\n".join(
        [
            f"## {section.title}",
            section.markdown.strip("\n"),
            f"_This benchmark took {section.seconds:.0f} s._",
        ]
    )


def render(
    sections: dict[str, Section],
    failures: dict[str, str],
    args: argparse.Namespace,
    command: str,
    machine: dict[str, Any],
    started_at: datetime,
    total_s: float,
    revision: str,
) -> str:
    gpu = machine.get("gpu") or "none"
    parts = [
        "# Benchmarks",
        "Generated by `python -m bench`; do not edit by hand, rerun it. Every figure comes "
        "from one run in which each baseline and its candidates were measured side by side, "
        "interleaved round by round, and is reported as a ratio or a difference against that "
        "baseline.",
        "## This run",
        md_table(
            ["", ""],
            [
                ["command", f"`{command}`"],
                ["date", started_at.strftime("%Y-%m-%d %H:%M UTC")],
                ["revision", revision],
                [
                    "machine",
                    f"{machine.get('cpus')} CPU cores ({machine.get('cpu_model')}), "
                    f"{machine.get('memory_gib')} GiB, GPU: {gpu}",
                ],
                [
                    "software",
                    f"Python {machine.get('python')}, torch {machine.get('torch')}, "
                    f"Ray {machine.get('ray')}",
                ],
                [
                    "load average (1/5/15 min) at start / end",
                    f"{machine.get('load_average')} / {machine.get('load_average_end')}",
                ],
                ["rounds per comparison", str(args.rounds)],
                [
                    "index sizes",
                    ", ".join(f"{n:,}" for n in args.index_sizes)
                    + f" ({', '.join(args.index_data)} data)",
                ],
                ["benchmarks", ", ".join(sections) or "none"],
                ["took", f"{total_s / 60:.1f} min"],
            ],
        ),
        "The machine is shared: other engineers' test runs load its two cores at the same "
        "time (see the load average), which inflates absolute latencies and their spread. "
        "That is why every comparison is interleaved and reported relative to its baseline. "
        + (
            "**This task had no GPU machine: absolute numbers here are not production "
            "figures; they count only from a GPU run.**"
            if gpu == "none"
            else ""
        ),
        "## Summary",
        _summary(sections),
        "## What we changed because of it",
        _changes(sections),
        "## GPU-only items",
        GPU_MEASURED if gpu != "none" and "models" in sections else NOT_MEASURED,
    ]
    for name in ORDER:
        if name in sections:
            parts.append(render_section(sections[name]))
    for name, trace in failures.items():
        parts += [f"## {name}: failed", "```", trace.strip()[-3000:], "```"]
    return "\n\n".join(p.strip("\n") for p in parts if p) + "\n"
