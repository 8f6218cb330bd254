"""The HTTP bodies of streamed speech: OpenAI's SSE events, and a failure after the first
byte ending the stream (SSE: an error event) instead of changing a status already sent."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

from core.errors import ServiceUnavailable
from serve_app.voice_pipeline import SpeechStream, audio_body, sse_body


class FakeStream:
    def __init__(self, parts: list[bytes], fail: bool) -> None:
        self.parts, self.fail = parts, fail

    async def chunks(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part
        if self.fail:
            raise ServiceUnavailable("voice synthesis failed: the replica died")


def collect(body: AsyncIterator[bytes]) -> list[bytes]:
    async def main() -> list[bytes]:
        return [part async for part in body]

    return asyncio.run(main())


def events(parts: list[bytes]) -> list[dict]:
    text = b"".join(parts).decode()
    assert text.endswith("\n\n")
    return [json.loads(block.removeprefix("data: ")) for block in text.strip().split("\n\n")]


def stream(parts: list[bytes], fail: bool = False) -> SpeechStream:
    return FakeStream(parts, fail)  # type: ignore[return-value]


def test_sse_deltas_then_done() -> None:
    got = events(collect(sse_body(stream([b"ab", b"cd"]), input_tokens=3)))
    assert [e["type"] for e in got] == ["speech.audio.delta"] * 2 + ["speech.audio.done"]
    assert b"".join(base64.b64decode(e["audio"]) for e in got[:2]) == b"abcd"
    assert got[-1]["usage"] == {"input_tokens": 3, "output_tokens": 0, "total_tokens": 3}


def test_sse_failure_after_the_first_event_is_an_error_event() -> None:
    got = events(collect(sse_body(stream([b"ab"], fail=True), input_tokens=1)))
    assert [e["type"] for e in got] == ["speech.audio.delta", "error"]
    assert got[-1]["error"]["code"] == ServiceUnavailable.code
    assert "replica died" in got[-1]["error"]["message"]


def test_audio_failure_after_the_first_byte_ends_the_stream() -> None:
    assert collect(audio_body(stream([b"RIFF", b"data"], fail=True))) == [b"RIFF", b"data"]
