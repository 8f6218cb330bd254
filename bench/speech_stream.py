"""Benchmark 10, streamed speech: time to the first audio byte against time to the full clip.

    python -m bench.speech_stream [--rounds 5] [--nfe-steps 8]
    python -m bench --only speech          # the same, as a section of docs/benchmarks.md

The voice module alone with the tiny F5-TTS on the CPU, over HTTP through Serve's proxy:
`POST /v1/voice/generate` with `stream=1` (WAV) speaking a 4-sentence text (about 210 bytes)
after a 3 s reference, read with httpx as the bytes come. Per round: the time to the first
audio byte, to the last byte of the stream, and, interleaved, the same request not streamed
(the whole clip in one answer). Reported as medians; the target (issue 16) is the first
audio within a third of the full time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.context import Context, Section
from bench.tables import fmt, md_table

TEXT = (
    "The weather is lovely today. We could walk along the river for an hour or two, then stop "
    "for lunch somewhere quiet. The cafe by the old bridge opens at noon and bakes its own "
    "bread! Would you like to come along with us this time?"
)
REF_TEXT = "Hello there, how are you?"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def measure(url: str, rounds: int, nfe_steps: int) -> dict[str, Any]:
    """Streamed and whole requests, interleaved, `rounds` each (after one warm-up of each)."""
    import httpx

    from bench.inputs import reference_wav

    ref = reference_wav(3.0)
    fields = {"ref_text": REF_TEXT, "text": TEXT, "format": "wav", "nfe_steps": str(nfe_steps)}
    first_s, stream_s, whole_s, reads = [], [], [], []
    with httpx.Client(timeout=300) as client:
        for round_ in range(rounds + 1):
            files = {"ref_audio": ("ref.wav", ref, "audio/wav")}
            start = time.perf_counter()
            first, count = float("nan"), 0
            with client.stream(
                "POST",
                f"{url}/v1/voice/generate",
                files=files,
                data={**fields, "stream": "1", "seed": str(round_)},
            ) as response:
                response.raise_for_status()
                for _ in response.iter_raw():
                    if count == 0:
                        first = time.perf_counter() - start
                    count += 1
            done = time.perf_counter() - start
            start = time.perf_counter()
            whole = client.post(
                f"{url}/v1/voice/generate", files=files, data={**fields, "seed": str(round_)}
            )
            whole.raise_for_status()
            whole_done = time.perf_counter() - start
            if round_ == 0:
                continue  # warm-up: the first request of each kind pays for lazy set-up
            first_s.append(first)
            stream_s.append(done)
            whole_s.append(whole_done)
            reads.append(count)
    first_med, stream_med = statistics.median(first_s), statistics.median(stream_s)
    return {
        "rounds": rounds,
        "nfe_steps": nfe_steps,
        "text_bytes": len(TEXT.encode()),
        "first_byte_s": first_med,
        "stream_full_s": stream_med,
        "whole_clip_s": statistics.median(whole_s),
        "ratio_first_to_full": first_med / stream_med,
        "ratio_first_to_whole": first_med / statistics.median(whole_s),
        "reads_median": statistics.median(reads),
        "loadavg": load_average(),
    }


def markdown(r: dict[str, Any]) -> str:
    table = md_table(
        ["first audio byte (s)", "streamed, last byte (s)", "whole clip, not streamed (s)",
         "first / streamed full", "first / whole"],
        [[fmt(r["first_byte_s"], 2), fmt(r["stream_full_s"], 2), fmt(r["whole_clip_s"], 2),
          fmt(r["ratio_first_to_full"], 2), fmt(r["ratio_first_to_whole"], 2)]],
    )  # fmt: skip
    return (
        f"{table}\n\nMedians of {r['rounds']} rounds, a {r['text_bytes']}-byte 4-sentence text, "
        f"{r['nfe_steps']} steps, tiny F5-TTS on the CPU, WAV over HTTP through Serve "
        f"(load average {r['loadavg']}). Target: the first audio within a third of the full "
        "time."
    )


def run(ctx: Context, nfe_steps: int = 8) -> Section:
    from bench.app_settings import offline_settings

    started = time.perf_counter()
    url = ctx.serve.deploy(
        "speech", "/speech", offline_settings(ctx.models, ctx.subdir("speech"), VOICE_ENABLED=True)
    )
    try:
        result = measure(url, 2 if ctx.quick else 5, nfe_steps)
    finally:
        ctx.serve.delete("speech")
    return Section(
        "10. Streamed speech",
        markdown(result),
        {"results": [result]},
        time.perf_counter() - started,
    )


def main(argv: list[str] | None = None) -> None:
    from bench.env import prepare_environment

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nfe-steps", type=int, default=8)
    parser.add_argument("--models", type=Path, default=None, help="tiny models (built if absent)")
    args = parser.parse_args(argv)
    prepare_environment()
    from bench.app_settings import offline_settings
    from bench.inputs import build_models
    from bench.servers import LocalServe

    with tempfile.TemporaryDirectory(prefix="bench-speech-") as tmp:
        work = Path(tmp)
        models = build_models(args.models or work / "models")
        serve = LocalServe(num_cpus=4).start()
        try:
            settings = offline_settings(models, work, VOICE_ENABLED=True)
            url = serve.deploy("speech", "/speech", settings)
            result = measure(url, args.rounds, args.nfe_steps)
        finally:
            serve.shutdown()
    print(markdown(result))
    print(f"ratio (first audio byte / full streamed clip): {result['ratio_first_to_full']:.2f}")


if __name__ == "__main__":
    main()
