"""Benchmark 10, streamed speech and prepared voices, in one run.

    python -m bench.speech_stream [--rounds 5] [--nfe-steps 8]
    python -m bench --only speech          # the same, as a section of docs/benchmarks.md

The voice module alone with the tiny F5-TTS on the CPU, over HTTP through Serve's proxy.

Streaming: `POST /v1/voice/generate` with `stream=1` (WAV) speaking a 4-sentence text
(about 210 bytes) after a 3 s reference, read with httpx as the bytes come. Per round: the
time to the first audio byte, to the last byte of the stream, and, interleaved, the same
request not streamed (the whole clip in one answer). Reported as medians; the target
(issue 16) is the first audio within a third of the full time.

Prepared voices: `POST /v1/r2/voice/generate` with a saved voice (a 10 s reference), the
same short sentence and seed each time. Per round the voice is saved again (`PUT
/v1/voices/{id}`: a new version, so nothing prepared is left) and the request is timed
twice: unprepared (the first use: the stored MP3 decoded, trimmed, transcribed when there
is no saved transcript, prepared and stored) and prepared (the second: none of that). Once
with a saved transcript, once without (ASR; the tiny Whisper here is far cheaper than the
real one). Reported as medians, the saving per request in ms and as a ratio, end to end
and in the route's own timing of the voice work.
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
SAVED_REF_SECONDS = 10.0
SAVED_REF_TEXT = "Some call me nature, others call me mother. I have been here for a long while."
SHORT_TEXT = "Nice to meet you, and welcome."


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def measure(url: str, rounds: int, nfe_steps: int, storage: Path) -> dict[str, Any]:
    """Streamed and whole requests, interleaved, `rounds` each (after one warm-up of each);
    then a saved voice unprepared and prepared (`measure_prepared`, twice the rounds: its
    saving is small beside the synthesis). `storage`: the server's LOCAL_STORAGE_DIR."""
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
    result = {
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
    result["prepared"] = [
        measure_prepared(url, 2 * rounds, nfe_steps, SAVED_REF_TEXT, storage),
        measure_prepared(url, 2 * rounds, nfe_steps, None, storage),
    ]
    result["loadavg_end"] = load_average()
    return result


def measure_prepared(
    url: str, rounds: int, nfe_steps: int, transcript: str | None, storage: Path
) -> dict[str, Any]:
    """The same `/v1/r2/voice/generate` request with the saved voice unprepared (just saved
    again) and prepared (the next request), `rounds` each after one warm-up round. The
    route's own timings give the Gateway's time to have the voice ready (`reference_ms`),
    free of the synthesis's spread; the results (under `storage`) are compared byte for
    byte."""
    import httpx

    from bench.inputs import reference_wav

    ref = reference_wav(SAVED_REF_SECONDS)
    voice_id = "bench-asr" if transcript is None else "bench-transcript"
    body = {
        "user_id": voice_id,
        "text": SHORT_TEXT,
        "format": "wav",
        "nfe_steps": nfe_steps,
        "seed": 1,
    }
    total: dict[str, list[float]] = {"unprepared": [], "prepared": []}
    ready: dict[str, list[float]] = {"unprepared": [], "prepared": []}
    same_audio = []
    with httpx.Client(timeout=300) as client:
        for round_ in range(rounds + 1):
            data = {"transcript": transcript} if transcript else {}
            saved = client.put(
                f"{url}/v1/voices/{voice_id}", files={"audio": ("ref.wav", ref)}, data=data
            )
            saved.raise_for_status()
            results = []
            for kind in ("unprepared", "prepared"):  # the first use prepares, the next reuses
                start = time.perf_counter()
                answer = client.post(f"{url}/v1/r2/voice/generate", json=body)
                answer.raise_for_status()
                elapsed = time.perf_counter() - start
                result = answer.json()
                results.append((storage / result["key"]).read_bytes())
                if round_ > 0:  # round 0: warm-up
                    total[kind].append(elapsed)
                    timings = result["timings"]
                    ready[kind].append(timings["reference_ms"] + timings["transcribe_ms"])
            if round_ > 0:
                same_audio.append(results[0] == results[1])
    unprepared, prepared = (
        statistics.median(total["unprepared"]),
        statistics.median(total["prepared"]),
    )
    ready_unprepared = statistics.median(ready["unprepared"])
    ready_prepared = statistics.median(ready["prepared"])
    return {
        "transcript": "saved" if transcript else "none (ASR)",
        "ref_seconds": SAVED_REF_SECONDS,
        "text_bytes": len(SHORT_TEXT.encode()),
        "unprepared_s": unprepared,
        "prepared_s": prepared,
        "saving_ms": (unprepared - prepared) * 1000,
        "ratio_prepared_to_unprepared": prepared / unprepared,
        "ready_unprepared_ms": ready_unprepared,
        "ready_prepared_ms": ready_prepared,
        "ready_saving_ms": ready_unprepared - ready_prepared,
        "same_audio": all(same_audio),
    }


def markdown(r: dict[str, Any]) -> str:
    table = md_table(
        ["first audio byte (s)", "streamed, last byte (s)", "whole clip, not streamed (s)",
         "first / streamed full", "first / whole"],
        [[fmt(r["first_byte_s"], 2), fmt(r["stream_full_s"], 2), fmt(r["whole_clip_s"], 2),
          fmt(r["ratio_first_to_full"], 2), fmt(r["ratio_first_to_whole"], 2)]],
    )  # fmt: skip
    streamed = (
        f"{table}\n\nMedians of {r['rounds']} rounds, a {r['text_bytes']}-byte 4-sentence text, "
        f"{r['nfe_steps']} steps, tiny F5-TTS on the CPU, WAV over HTTP through Serve "
        f"(load average {r['loadavg']}). Target: the first audio within a third of the full "
        "time."
    )
    prepared = r.get("prepared") or []
    if not prepared:
        return streamed
    rows = [
        [p["transcript"], fmt(p["unprepared_s"] * 1000, 0), fmt(p["prepared_s"] * 1000, 0),
         fmt(p["saving_ms"], 0), fmt(p["ratio_prepared_to_unprepared"], 2),
         f"{fmt(p['ready_unprepared_ms'], 0)} / {fmt(p['ready_prepared_ms'], 0)}",
         fmt(p["ready_saving_ms"], 0), "yes" if p["same_audio"] else "**no**"]
        for p in prepared
    ]  # fmt: skip
    saving = md_table(
        ["saved transcript", "unprepared (ms)", "prepared (ms)", "saved per request (ms)",
         "prepared / unprepared", "voice ready, unprepared / prepared (ms)",
         "saved in voice work (ms)", "same audio"],
        rows,
    )  # fmt: skip
    first = prepared[0]
    return (
        f"{streamed}\n\n### Prepared voices\n\n{saving}\n\n"
        f"`POST /v1/r2/voice/generate` in a saved voice ({first['ref_seconds']:g} s "
        f"reference, a {first['text_bytes']}-byte sentence, {r['nfe_steps']} steps, WAV), "
        f"medians of {2 * r['rounds']} rounds: *unprepared* is the first request after the "
        "voice is saved (the stored MP3 read and decoded, trimmed, transcribed when there is "
        "no saved transcript, prepared on the VoiceCloner and written beside the voice), "
        "*prepared* the next one (the VoiceCloner holds the voice by key). The first "
        "columns are the whole request as the client sees it, where the synthesis's spread "
        "on this shared machine can hide the saving; *voice ready* is the route's own "
        "`reference_ms + transcribe_ms`, the Gateway's time from the voice's two HEADs "
        "(done by both, in neither figure) to a voice ready for synthesis. The first use "
        "also stores the prepared file, which an unprepared request before this change did "
        "not; it trimmed the reference in the model instead. The tiny models make trimming "
        "and ASR cheap here; with the real Whisper the ASR saving is seconds per request. "
        "Same seed: the same audio both times (checked byte for byte). Load average at "
        f"start / end: {r['loadavg']} / {r.get('loadavg_end', 'unknown')}."
    )


def run(ctx: Context, nfe_steps: int = 8) -> Section:
    from bench.app_settings import offline_settings

    started = time.perf_counter()
    url = ctx.serve.deploy(
        "speech", "/speech", offline_settings(ctx.models, ctx.subdir("speech"), VOICE_ENABLED=True)
    )
    try:
        result = measure(url, 2 if ctx.quick else 5, nfe_steps, ctx.subdir("speech") / "storage")
    finally:
        ctx.serve.delete("speech")
    return Section(
        "10. Streamed speech and prepared voices",
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
            result = measure(url, args.rounds, args.nfe_steps, work / "storage")
        finally:
            serve.shutdown()
    print(markdown(result))
    print(f"ratio (first audio byte / full streamed clip): {result['ratio_first_to_full']:.2f}")
    for prepared in result["prepared"]:
        print(
            f"prepared voice ({prepared['transcript']}): saves {prepared['saving_ms']:.0f} ms "
            f"per request (prepared / unprepared {prepared['ratio_prepared_to_unprepared']:.2f})"
        )


if __name__ == "__main__":
    main()
