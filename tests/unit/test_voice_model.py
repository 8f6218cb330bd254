"""VoiceModel over the tiny F5-TTS, Vocos and Whisper models: loading, seeding, chunking, ASR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelInputError
from core.types import SynthesizedSpeech
from deployments.configs import VoiceClonerConfig
from deployments.model_loading import resolve_model_files, split_hf_path
from deployments.voice_model import VoiceModel

SR = 24_000
NFE = 4  # tiny model, few steps: the tests check plumbing, not quality
REF_TEXT = "Some call me nature, others call me mother."  # ~15 bytes/s over 3 s, like speech


def reference(seconds: float = 3.0, sr: int = SR) -> np.ndarray:
    """A voiced-sounding test signal: a 220 Hz tone with a 3 Hz amplitude wobble."""
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )


def tiny_config(root: Path) -> VoiceClonerConfig:
    return VoiceClonerConfig(
        model_config_name=str(root / "f5tts" / "model.yaml"),
        checkpoint=str(root / "f5tts" / "model.safetensors"),
        vocab=str(root / "f5tts" / "vocab.txt"),
        vocoder=str(root / "vocos"),
        asr_model=str(root / "whisper"),
        device="cpu",
        torch_threads=2,
    )


@pytest.fixture(scope="module")
def voice_model(tiny_models_dir: Path) -> VoiceModel:
    return VoiceModel(tiny_config(tiny_models_dir))


def synth(
    model: VoiceModel, text: str = "Nice to meet you.", **kwargs: object
) -> SynthesizedSpeech:
    kwargs.setdefault("nfe_steps", NFE)
    return model.synthesize(reference(), SR, REF_TEXT, text, **kwargs)  # type: ignore[arg-type]


def test_loads_from_local_paths(voice_model: VoiceModel) -> None:
    info = voice_model.describe()
    assert info["checkpoint_source"] == "local"
    assert info["vocoder_source"] == "local"
    assert info["asr_source"] == "local"
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert voice_model.sample_rate == SR


def test_synthesize_returns_float32_mono_24k(voice_model: VoiceModel) -> None:
    speech = synth(voice_model, seed=1)
    assert speech.samples.dtype == np.float32 and speech.samples.ndim == 1
    assert speech.sample_rate == SR
    assert speech.duration_s > 0
    assert speech.duration_s == pytest.approx(speech.samples.size / SR)
    assert speech.seed == 1 and speech.chunks == 1 and speech.elapsed_ms > 0
    assert np.isfinite(speech.samples).all()


def test_same_seed_same_samples_other_seed_differs(voice_model: VoiceModel) -> None:
    first = synth(voice_model, seed=7)
    again = synth(voice_model, seed=7)
    other = synth(voice_model, seed=8)
    np.testing.assert_array_equal(first.samples, again.samples)
    assert first.samples.shape == other.samples.shape
    assert not np.array_equal(first.samples, other.samples)


def test_random_seed_is_reported(voice_model: VoiceModel) -> None:
    speech = synth(voice_model)
    assert 0 <= speech.seed < 2**63


def test_long_text_is_chunked(voice_model: VoiceModel) -> None:
    sentence = "The quick brown fox jumps over the lazy dog, and then it rests. "
    text = (sentence * 10)[:600]
    speech = synth(voice_model, text=text, seed=3)
    assert speech.chunks > 1
    assert speech.duration_s > 10  # about 15 bytes/s of reference speech rate


def test_korean_text(voice_model: VoiceModel) -> None:
    assert all(char in voice_model.model.vocab_char_map for char in "반가워안녕")
    speech = voice_model.synthesize(
        reference(), SR, "안녕하세요, 만나서 반갑습니다.", "반가워! 안녕.", nfe_steps=NFE, seed=5
    )
    assert speech.duration_s > 0
    assert np.isfinite(speech.samples).all()


def test_reference_is_resampled_and_trimmed(voice_model: VoiceModel) -> None:
    prepared = voice_model.prepare_reference(reference(20.0, sr=16_000), 16_000)
    assert prepared.dtype == np.float32
    assert prepared.size / SR <= voice_model.config.max_ref_seconds_used + 0.06


def test_transcribe_returns_text_offline(voice_model: VoiceModel) -> None:
    text = voice_model.transcribe(reference(2.0), SR)
    assert isinstance(text, str)
    assert text == text.strip()
    assert voice_model.describe()["asr_loaded"] == "true"


@pytest.mark.parametrize(
    ("ref_text", "text", "message"),
    [
        (REF_TEXT, "", "text must not be empty"),
        (REF_TEXT, "   ", "text must not be empty"),
        ("", "Hello.", "ref_text must not be empty"),
        (" ", "Hello.", "ref_text must not be empty"),
    ],
)
def test_empty_text_is_refused(
    voice_model: VoiceModel, ref_text: str, text: str, message: str
) -> None:
    with pytest.raises(ModelInputError, match=f"^{message}"):
        voice_model.synthesize(reference(), SR, ref_text, text, nfe_steps=NFE)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"nfe_steps": 0}, "nfe_steps must be >= 1, got 0"),
        ({"speed": 0.0}, "speed must be > 0, got 0.0"),
        ({"speed": float("nan")}, "speed must be > 0, got nan"),
        ({"cfg_strength": -1.0}, "cfg_strength must be >= 0, got -1.0"),
        ({"seed": -1}, r"seed must be in \[0, 2\*\*63\), got -1"),
        ({"seed": 2**63}, r"seed must be in \[0, 2\*\*63\)"),
    ],
)
def test_bad_parameters_are_refused(
    voice_model: VoiceModel, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ModelInputError, match=f"^{message}"):
        synth(voice_model, **options)


@pytest.mark.parametrize(
    ("ref_audio", "ref_sr", "message"),
    [
        (np.zeros(3 * SR, np.float32), SR, "reference audio is silent"),
        (reference(0.2), SR, r"reference audio is shorter than 0.5 s"),
        (np.zeros(0, np.float32), SR, "ref_audio is empty"),
        (np.full(SR, np.nan, np.float32), SR, "ref_audio contains NaN or infinite samples"),
        (np.zeros((2, 3, SR), np.float32), SR, r"ref_audio must be mono samples of shape \(n,\)"),
        (reference(), 0, "ref_sr must be positive, got 0"),
    ],
    ids=["silent", "too-short", "empty", "nan", "not-mono", "bad-rate"],
)
def test_unusable_reference_is_refused(
    voice_model: VoiceModel, ref_audio: np.ndarray, ref_sr: int, message: str
) -> None:
    with pytest.raises(ModelInputError, match=f"^{message}"):
        voice_model.synthesize(ref_audio, ref_sr, REF_TEXT, "Hello.", nfe_steps=NFE)


def test_stereo_reference_is_averaged(voice_model: VoiceModel) -> None:
    mono = reference()
    prepared = voice_model.prepare_reference(np.stack([mono, mono], axis=1), SR)
    np.testing.assert_array_equal(prepared, voice_model.prepare_reference(mono, SR))


def test_transcribe_refuses_bad_audio(voice_model: VoiceModel) -> None:
    with pytest.raises(ModelInputError, match="^audio is empty"):
        voice_model.transcribe(np.zeros(0, np.float32), SR)
    with pytest.raises(ModelInputError, match="^sample rate must be positive, got -1"):
        voice_model.transcribe(reference(1.0), -1)


def test_hf_paths_split_into_repo_and_file() -> None:
    assert split_hf_path("hf://SWivid/F5-TTS/F5TTS_v1_Base/model_1250000.safetensors") == (
        "SWivid/F5-TTS",
        "F5TTS_v1_Base/model_1250000.safetensors",
    )
    for bad in ("hf://SWivid/F5-TTS", "hf://owner//file", "hf://"):
        with pytest.raises(ValueError, match="is not an hf://<owner>/<repo>/<file> path"):
            split_hf_path(bad)


def test_vocoder_directory_must_hold_its_files(tiny_models_dir: Path, tmp_path: Path) -> None:
    vocos = tiny_models_dir / "vocos"
    names = ("config.yaml", "pytorch_model.bin")
    assert resolve_model_files(str(vocos), names, "vocoder") == (str(vocos.absolute()), "local")
    with pytest.raises(FileNotFoundError, match=r"vocoder directory .* lacks \['config.yaml'"):
        resolve_model_files(str(tmp_path), names, "vocoder")


def test_missing_local_checkpoint_fails_at_load(tiny_models_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_models_dir).model_copy(update={"checkpoint": str(tmp_path / "x.pt")})
    with pytest.raises(FileNotFoundError):
        VoiceModel(config)


def test_builders_are_idempotent(tiny_models_dir: Path) -> None:
    from serve_app.tiny import BUILDERS

    for name in ("f5tts", "vocos", "whisper"):
        before = {p.name: p.stat().st_mtime_ns for p in (tiny_models_dir / name).iterdir()}
        assert BUILDERS[name](tiny_models_dir / name, 0) == tiny_models_dir / name
        after = {p.name: p.stat().st_mtime_ns for p in (tiny_models_dir / name).iterdir()}
        assert before == after


# --- cost: the estimate is what the model does, and requests past the limits are refused ---


@pytest.mark.parametrize(
    ("ref_seconds", "ref_text", "text", "speed", "lenient"),
    [
        (3.0, REF_TEXT, "Nice to meet you.", 1.0, False),
        (3.0, REF_TEXT, ("The quick brown fox jumps over the lazy dog. " * 12)[:500], 1.0, False),
        (3.0, "안녕하세요, 만나서 반갑습니다.", "반가워! 안녕. 또 만나요.", 1.3, False),
        (20.0, REF_TEXT * 6, "你好。我很好。谢谢！", 0.7, False),
        # a short transcript (lenient limits): chunks of one sentence, slowed to speed 0.3
        (6.0, "so", "Hi. Ok. Yes.", 1.0, True),
    ],
    ids=["one-chunk", "chunked", "korean", "trimmed-reference", "short-chunks"],
)
def test_the_cost_estimate_is_what_the_model_does(
    voice_model: VoiceModel,
    ref_seconds: float,
    ref_text: str,
    text: str,
    speed: float,
    lenient: bool,
) -> None:
    from core.voice_cost import VoiceLimits, estimate_voice_cost

    model = voice_model
    if lenient:
        limits = VoiceLimits(ref_text_min_bytes_per_second=0)
        model.config = model.config.model_copy(update={"limits": limits})
    try:
        ref = reference(ref_seconds)
        speech = model.synthesize(ref, SR, ref_text, text, nfe_steps=2, speed=speed, seed=1)
    finally:
        model.config = model.config.model_copy(update={"limits": VoiceLimits()})
    heard = model.prepare_reference(ref, SR).size / SR
    cost = estimate_voice_cost(
        ref_seconds=heard, ref_text=ref_text, text=text, nfe_steps=2, speed=speed
    )
    assert cost.chunks == speech.chunks
    assert round(cost.output_seconds * SR) == speech.samples.size


def test_a_transcript_that_cannot_match_the_reference_is_refused(voice_model: VoiceModel) -> None:
    """The motivating request: 10 s of reference, ref_text "a", text "a。" x 40."""
    from core.errors import TranscriptMismatch

    with pytest.raises(TranscriptMismatch, match="does not match the reference audio") as caught:
        voice_model.synthesize(reference(10.0), SR, "a", "a。" * 40, nfe_steps=NFE)
    assert caught.value.to_api_error().status_code == 422
    assert "VOICE_REF_TEXT_MIN_BYTES_PER_SECOND" in str(caught.value)


def test_a_request_past_the_budget_is_refused_before_any_work(voice_model: VoiceModel) -> None:
    from core.errors import BudgetExceeded
    from core.voice_cost import VoiceLimits

    tight = VoiceLimits(max_output_seconds=5.0, max_model_steps=16)
    voice_model.config = voice_model.config.model_copy(update={"limits": tight})
    try:
        with pytest.raises(BudgetExceeded, match="VOICE_MAX_OUTPUT_SECONDS=5") as output:
            synth(voice_model, text="The quick brown fox jumps over the lazy dog. " * 3)
        assert output.value.to_api_error().to_body()["error"]["code"] == "over_budget"
        with pytest.raises(BudgetExceeded, match="VOICE_MAX_MODEL_STEPS=16"):
            synth(voice_model, text="Hi there.", nfe_steps=9)  # 1 chunk x 9 steps x 2
        assert synth(voice_model, text="Hi there.", nfe_steps=8).chunks == 1  # 16: allowed
    finally:
        voice_model.config = voice_model.config.model_copy(update={"limits": VoiceLimits()})


# --- cancellation: a synthesis whose caller went away stops, and the queue goes on ---------


def test_a_cancelled_synthesis_stops_within_a_chunk_and_the_next_call_runs(
    voice_model: VoiceModel,
) -> None:
    import asyncio
    import threading
    import time

    from deployments.model_queue import CallCancelled, ModelQueue, current_request_id

    current_request_id()  # imports Ray's request context now, as a replica has, not mid-test
    nfe = 8
    sentence = "The quick brown fox jumps over the lazy dog, and then it rests. "
    one_chunk = sentence * 4  # 260 bytes: one chunk (about 279 bytes a chunk here)
    start = time.perf_counter()
    assert synth(voice_model, text=one_chunk, nfe_steps=nfe, seed=1).chunks == 1
    chunk_s = time.perf_counter() - start  # the baseline: one chunk on this machine, now

    queue = ModelQueue("voice-test")
    outcome: dict[str, object] = {}
    running = threading.Event()

    def long_synthesis() -> None:
        running.set()
        try:
            synth(voice_model, text=sentence * 40, nfe_steps=nfe, seed=2)  # 10 chunks
            outcome["result"] = "finished"
        except CallCancelled as exc:
            outcome["result"] = str(exc)
            raise
        finally:
            outcome["returned_at"] = time.perf_counter()

    async def main() -> tuple[float, float]:
        task = asyncio.create_task(queue.run("voice synthesis", long_synthesis))
        await asyncio.to_thread(running.wait, 10)
        await asyncio.sleep(chunk_s * 1.5)  # inside the second chunk
        cancelled_at = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ran_at: float = await queue.run("next", time.perf_counter)
        returned_at = outcome["returned_at"]
        assert isinstance(returned_at, float)
        return returned_at - cancelled_at, ran_at - cancelled_at

    stopped_after, next_after = asyncio.run(main())
    queue.shutdown()
    assert str(outcome.get("result", "")).startswith("voice synthesis stopped"), outcome
    # within one chunk (in fact within one model step), with slack for a loaded machine;
    # the whole synthesis would have taken about ten chunks
    assert stopped_after < chunk_s + 2.0, (stopped_after, chunk_s)
    assert next_after < chunk_s + 3.0, (next_after, chunk_s)
    # the model is usable afterwards, and gives what it gave before
    again = synth(voice_model, text=one_chunk, nfe_steps=nfe, seed=1)
    assert again.chunks == 1
