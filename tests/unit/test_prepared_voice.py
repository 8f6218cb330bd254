"""Prepared voices: the same speech as the unprepared reference, the reference work done once,
the file format refusing what it did not write, and the replica's bounded map of them."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest

from core.errors import PreparedForAnotherModel, VoiceNotPrepared
from core.prepared_voice import BadPreparedVoice, PreparedVoice
from deployments.voice_cloner import PreparedVoices
from deployments.voice_model import VoiceModel
from tests.unit.test_voice_model import NFE, REF_TEXT, SR, reference, voice_model

__all__ = ["voice_model"]  # the module-scoped fixture, shared

TEXT = "Nice to meet you. The weather is lovely today, is it not?"


def counts(model: VoiceModel) -> tuple[int, int]:
    """(references trimmed, transcriptions) so far, as the model reports them."""
    info = model.describe()
    return int(info["references_prepared"]), int(info["transcriptions"])


def test_a_prepared_voice_speaks_as_its_unprepared_reference(voice_model: VoiceModel) -> None:
    clip, rate = reference(3.0, 48_000), 48_000  # resampled, then trimmed, when prepared
    prepared = voice_model.prepare_voice(clip, rate, REF_TEXT, key="narrator@1")
    assert prepared.sample_rate == SR and prepared.samples.dtype == np.float32
    assert prepared.ref_text == REF_TEXT and prepared.ref_text_source == "given"
    assert prepared.source_seconds == pytest.approx(3.0)
    assert prepared.model == voice_model.fingerprint and prepared.key == "narrator@1"
    np.testing.assert_array_equal(prepared.samples, voice_model.prepare_reference(clip, rate))

    plain = voice_model.synthesize(clip, rate, REF_TEXT, TEXT, nfe_steps=NFE, seed=3)
    fast = voice_model.synthesize_voice(prepared, TEXT, nfe_steps=NFE, seed=3)
    assert (fast.seed, fast.chunks) == (plain.seed, plain.chunks)
    np.testing.assert_array_equal(fast.samples, plain.samples)

    streamed = list(
        voice_model.synthesize_stream(clip, rate, REF_TEXT, TEXT, nfe_steps=NFE, seed=4)
    )
    prepared_stream = list(
        voice_model.synthesize_voice_stream(prepared, TEXT, nfe_steps=NFE, seed=4)
    )
    assert len(streamed) == len(prepared_stream) >= 2
    for a, b in zip(streamed, prepared_stream, strict=True):
        assert (a.index, a.text) == (b.index, b.text)
        np.testing.assert_array_equal(a.samples, b.samples)

    # the stored form gives the same speech again
    loaded = PreparedVoice.from_bytes(prepared.to_bytes())
    assert loaded.meta() == prepared.meta()
    again = voice_model.synthesize_voice(loaded, TEXT, nfe_steps=NFE, seed=3)
    np.testing.assert_array_equal(again.samples, plain.samples)


def test_the_reference_work_is_done_once(voice_model: VoiceModel) -> None:
    clip = reference(3.0)
    trims, asr = counts(voice_model)
    prepared = voice_model.prepare_voice(clip, SR)  # no transcript: the recogniser makes one
    assert counts(voice_model) == (trims + 1, asr + 1)
    assert prepared.ref_text_source == "asr" and prepared.ref_text.strip()

    for seed in (1, 2):
        voice_model.synthesize_voice(prepared, "Hello there.", nfe_steps=NFE, seed=seed)
    list(voice_model.synthesize_voice_stream(prepared, "Hello there.", nfe_steps=NFE, seed=3))
    assert counts(voice_model) == (trims + 1, asr + 1)  # neither trimmed nor transcribed again

    voice_model.synthesize(clip, SR, prepared.ref_text, "Hello there.", nfe_steps=NFE, seed=1)
    voice_model.synthesize(clip, SR, prepared.ref_text, "Hello there.", nfe_steps=NFE, seed=2)
    assert counts(voice_model) == (trims + 3, asr + 1)  # the unprepared path trims every time


def test_a_voice_another_model_prepared_is_refused(voice_model: VoiceModel) -> None:
    prepared = voice_model.prepare_voice(reference(2.0), SR, REF_TEXT)
    foreign = dataclasses.replace(prepared, model="another-model")
    with pytest.raises(PreparedForAnotherModel) as caught:
        voice_model.synthesize_voice(foreign, "Hello.", nfe_steps=NFE, seed=1)
    error = caught.value.to_api_error()
    assert isinstance(error, VoiceNotPrepared) and error.status_code == 409
    with pytest.raises(PreparedForAnotherModel):
        voice_model.synthesize_voice_stream(foreign, "Hello.", nfe_steps=NFE)


def a_voice(seconds: float = 1.0, key: str = "v@1", model: str = "m") -> PreparedVoice:
    samples = np.linspace(-0.5, 0.5, int(seconds * SR), dtype=np.float32)
    return PreparedVoice(samples, SR, REF_TEXT, "stored", seconds + 0.5, model, key)


def npz(**arrays: object) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_the_file_round_trips() -> None:
    voice = a_voice()
    loaded = PreparedVoice.from_bytes(voice.to_bytes())
    np.testing.assert_array_equal(loaded.samples, voice.samples)
    assert loaded.meta() == voice.meta() and loaded.seconds == pytest.approx(1.0)


def meta_with(**changes: object) -> np.ndarray:
    return np.array(json.dumps({**a_voice().meta(), **changes}))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not a zip file at all", id="garbage"),
        pytest.param(a_voice().to_bytes()[:-40], id="truncated"),
        pytest.param(npz(samples=a_voice().samples), id="no-meta"),
        pytest.param(npz(samples=a_voice().samples, meta=meta_with(version=99)), id="version"),
        pytest.param(npz(samples=a_voice().samples, meta=meta_with(format="x")), id="foreign"),
        pytest.param(npz(samples=a_voice().samples, meta=meta_with(ref_text=" ")), id="no-text"),
        pytest.param(
            npz(samples=a_voice().samples.astype(np.float64), meta=meta_with()), id="float64"
        ),
        pytest.param(
            npz(samples=np.full(10, np.nan, dtype=np.float32), meta=meta_with()), id="nan"
        ),
        pytest.param(
            npz(samples=a_voice().samples, meta=meta_with(), extra=np.zeros(3)), id="extra"
        ),
        pytest.param(
            npz(samples=a_voice().samples, meta=np.array([{"format": 1}], dtype=object)),
            id="pickled",
        ),
    ],
)
def test_what_the_format_did_not_write_is_refused(data: bytes) -> None:
    with pytest.raises(BadPreparedVoice):
        PreparedVoice.from_bytes(data)


def test_the_replica_keeps_the_most_recently_used_voices() -> None:
    voices = PreparedVoices(capacity=2)
    for key in ("a@1", "b@1"):
        voices.put(key, a_voice(key=key))
    assert voices.resolve("a@1", "m").key == "a@1"  # a is now the most recent
    voices.resolve(a_voice(key="c@1"), "m")  # a voice passed itself is kept: b goes
    assert voices.resolve("c@1", "m").key == "c@1"
    with pytest.raises(VoiceNotPrepared):
        voices.resolve("b@1", "m")
    assert voices.describe() == {
        "prepared_voices": "2",
        "prepared_voice_hits": "2",
        "prepared_voice_misses": "1",
    }
    with pytest.raises(VoiceNotPrepared, match="another voice model"):
        voices.resolve(a_voice(key="d@1", model="other"), "m")
    with pytest.raises(VoiceNotPrepared):
        voices.resolve("d@1", "m")  # a foreign voice is not kept
    assert PreparedVoices(capacity=0).resolve(a_voice(), "m").key == "v@1"  # used, not kept
