"""Streamed synthesis over the tiny F5-TTS: the cross-fade seams, chunks as they are made,
the same speech as a whole synthesis, and a consumer that leaves stopping the model."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from core.errors import ModelInputError
from core.voice_cost import CROSS_FADE_SECONDS, plan_chunks
from deployments.model_queue import CallCancelled, ModelQueue, current_request_id
from deployments.voice_model import CrossFader, VoiceModel, _cross_fade
from tests.unit.test_voice_model import NFE, REF_TEXT, SR, reference, synth, voice_model

__all__ = ["voice_model"]  # the module-scoped fixture, shared

FOUR_SENTENCES = (
    "The weather is lovely today. We could walk along the river for an hour or two, "
    "then stop for lunch. The cafe by the bridge opens at noon! Would you like to come along?"
)


@pytest.mark.parametrize(
    "lengths", [[5000], [5000, 4000, 6000], [100, 5000, 50, 3000], [3600, 3600], [10, 20, 30]]
)
def test_cross_fader_pieces_equal_the_whole_cross_fade(lengths: list[int]) -> None:
    rng = np.random.default_rng(0)
    waves = [rng.uniform(-1, 1, n).astype(np.float32) for n in lengths]
    fade = int(CROSS_FADE_SECONDS * SR)
    fader = CrossFader(fade)
    pieces = [fader.add(wave) for wave in waves] + [fader.flush()]
    np.testing.assert_array_equal(np.concatenate(pieces), _cross_fade(waves, fade))
    # each piece but the first two holds back at most the fade: the audio goes out early
    assert sum(map(len, pieces[:-1])) >= sum(lengths) - fade * len(lengths)


def test_cross_fade_is_a_fade_at_the_seam() -> None:
    fader = CrossFader(4)
    first = fader.add(np.ones(10, dtype=np.float32))
    second = fader.add(np.zeros(10, dtype=np.float32))
    rest = fader.flush()
    assert first.tolist() == [1.0] * 6  # the last 4 held back
    np.testing.assert_allclose(second[:4], [1.0, 2 / 3, 1 / 3, 0.0], atol=1e-6)
    assert len(first) + len(second) + len(rest) == 16  # 10 + 10 - 4 overlapped


def test_stream_gives_each_chunk_as_it_is_made(voice_model: VoiceModel) -> None:
    chunks = plan_chunks(3.0, REF_TEXT, FOUR_SENTENCES, 1.0, streaming=True)
    assert len(chunks) >= 2 and chunks[0] == "The weather is lovely today."
    stream = voice_model.synthesize_stream(
        reference(), SR, REF_TEXT, FOUR_SENTENCES, nfe_steps=NFE, seed=3
    )
    pieces, arrived = [], []
    for piece in stream:
        pieces.append(piece)
        arrived.append(time.perf_counter())
    assert [p.index for p in pieces] == list(range(len(pieces)))
    assert all(p.count == len(pieces) and p.seed == 3 and p.sample_rate == SR for p in pieces)
    assert pieces[-1].last and not pieces[0].last
    assert [p.text for p in pieces] == plan_chunks(
        voice_model.prepare_reference(reference(), SR).shape[0] / SR,
        REF_TEXT,
        FOUR_SENTENCES,
        1.0,
        streaming=True,
    )
    assert all(p.samples.dtype == np.float32 and p.samples.size > 0 for p in pieces)
    assert pieces[0].elapsed_ms < pieces[-1].elapsed_ms
    # the same seed gives the same stream
    again = voice_model.synthesize_stream(
        reference(), SR, REF_TEXT, FOUR_SENTENCES, nfe_steps=NFE, seed=3
    )
    np.testing.assert_array_equal(
        np.concatenate([p.samples for p in again]), np.concatenate([p.samples for p in pieces])
    )


def test_a_one_chunk_stream_is_the_whole_synthesis(voice_model: VoiceModel) -> None:
    text = "Nice to meet you."
    whole = synth(voice_model, text=text, seed=5)
    pieces = list(
        voice_model.synthesize_stream(reference(), SR, REF_TEXT, text, nfe_steps=NFE, seed=5)
    )
    assert len(pieces) == 1
    np.testing.assert_array_equal(pieces[0].samples, whole.samples)


def test_bad_input_is_refused_when_the_stream_is_asked_for(voice_model: VoiceModel) -> None:
    with pytest.raises(ModelInputError, match="text must not be empty"):
        voice_model.synthesize_stream(reference(), SR, REF_TEXT, "  ", nfe_steps=NFE)


def test_a_stream_whose_caller_left_stops_within_a_chunk(voice_model: VoiceModel) -> None:
    current_request_id()  # imports Ray's request context now, as a replica has
    text = " ".join(f"Sentence number {i} is spoken here, slowly and clearly." for i in range(12))
    queue = ModelQueue("voice-stream-test")
    made: list[int] = []
    first = threading.Event()
    outcome: dict[str, object] = {}

    def consume() -> None:  # what the deployment's model turn does
        try:
            for piece in voice_model.synthesize_stream(
                reference(), SR, REF_TEXT, text, nfe_steps=16, seed=1
            ):
                made.append(piece.index)
                outcome["count"] = piece.count
                first.set()
        except CallCancelled as exc:
            outcome["stopped"] = str(exc)
            raise

    async def main() -> None:
        task = asyncio.create_task(queue.run("voice synthesis", consume))
        assert await asyncio.to_thread(first.wait, 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await queue.run("next", lambda: None)  # the model's turn is over

    asyncio.run(main())
    queue.shutdown()
    assert str(outcome.get("stopped", "")).startswith("voice synthesis stopped"), outcome
    count = outcome["count"]
    assert isinstance(count, int) and count >= 4
    assert len(made) <= 2, (made, count)  # the chunk in flight may finish, no more
    # the model is free and usable afterwards
    assert synth(voice_model, seed=1).chunks == 1
