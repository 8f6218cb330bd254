"""The voice cost estimator (core/voice_cost.py): f5-tts's chunking, the estimate, the checks.

That the estimate equals what the model does (chunks and samples) is checked against the tiny
model in tests/unit/test_voice_model.py; here the arithmetic, the limits and the messages.
"""

from __future__ import annotations

import pickle

import pytest
from f5_tts.infer.utils_infer import chunk_text as f5_chunk_text

from core.errors import BudgetExceeded, OverBudget, TranscriptMismatch, find_api_error
from core.voice_cost import (
    VoiceLimits,
    check_ref_text_rate,
    check_voice_cost,
    check_voice_request,
    chunk_size,
    chunk_text,
    estimate_voice_cost,
    normalize_ref_text,
)

ENGLISH = "The quick brown fox jumps over the lazy dog, and then it rests. "
KOREAN = "안녕하세요, 만나서 반갑습니다. 오늘은 날씨가 정말 좋네요! "
CHINESE = "你好，我很好。谢谢你！今天天气很好；我们去公园吧："


@pytest.mark.parametrize(
    "text",
    [
        ENGLISH * 12,
        KOREAN * 10,
        CHINESE * 10,
        "a。" * 40,
        "Hi. Ok. Yes, no! Fine; good: done?  Two  spaces.",
        "one sentence without any break at all " * 8,
        "Mixed 한국어 and English. 中文。 End!",
    ],
    ids=["english", "korean", "chinese", "one-letter-sentences", "short", "no-breaks", "mixed"],
)
@pytest.mark.parametrize("max_bytes", [1, 3, 10, 37, 135, 400])
def test_chunking_is_f5_tts_own(text: str, max_bytes: int) -> None:
    assert chunk_text(text.strip(), max_bytes) == f5_chunk_text(text.strip(), max_chars=max_bytes)


def test_chunk_size_follows_the_reference_speaking_rate() -> None:
    assert normalize_ref_text("hello") == "hello. "
    assert normalize_ref_text(" hello. ") == "hello. "
    assert normalize_ref_text("안녕。") == "안녕。"
    # 7 bytes over 2 s, 20 s left of the 22 s budget: 70 bytes per chunk
    assert chunk_size("hello", 2.0, 1.0) == 70
    assert chunk_size("hello", 2.0, 0.5) == 35  # slower speech: smaller chunks
    # the motivating request: "a" for 10 s gives 3 bytes per chunk, so every "a。" is one
    assert chunk_size("a", 10.0, 1.0) == 3
    assert chunk_size("a", 21.9, 1.0) == 1  # never below one byte


def test_the_motivating_request_is_hours_of_work() -> None:
    """10 s reference, ref_text "a", text "a。" x 40 (80 characters)."""
    cost = estimate_voice_cost(ref_seconds=10.0, ref_text="a", text="a。" * 40, nfe_steps=32)
    assert cost.chunks == 40  # every character pair is a chunk ...
    # ... stretched to 937 / 4 bytes * 4 bytes / 0.3 = 3123 frames (33 s) each
    assert cost.output_frames == 40 * 3123
    assert cost.output_seconds == pytest.approx((40 * 3123 * 256 - 39 * 3600) / 24_000)
    assert cost.output_seconds > 1300
    assert cost.model_steps == 40 * 32 * 2
    assert cost.frame_steps == 40 * (937 + 3123) * 32 * 2
    with pytest.raises(TranscriptMismatch, match="does not match the reference audio") as caught:
        check_voice_request(cost, "a", 10.0, VoiceLimits())
    assert caught.value.limit == "VOICE_REF_TEXT_MIN_BYTES_PER_SECOND"
    assert "0.10 bytes/s" in str(caught.value)
    # with the transcript check off, the budget still refuses it
    lenient = VoiceLimits(ref_text_min_bytes_per_second=0)
    with pytest.raises(BudgetExceeded, match="VOICE_MAX_OUTPUT_SECONDS=600") as budget:
        check_voice_request(cost, "a", 10.0, lenient)
    assert budget.value.estimated == pytest.approx(cost.output_seconds, abs=0.1)
    at_128 = estimate_voice_cost(ref_seconds=10.0, ref_text="a", text="a。" * 40, nfe_steps=128)
    with pytest.raises(BudgetExceeded, match="VOICE_MAX_MODEL_STEPS=8192"):
        check_voice_cost(at_128, lenient.model_copy(update={"max_output_seconds": 1e9}))


def speech(seconds: float, per_second: str) -> str:
    """A transcript of `seconds` of speech at the rate `per_second` says in one second."""
    return (per_second * int(seconds + 1))[: int(len(per_second) * seconds)]


@pytest.mark.parametrize(
    ("ref_text", "text", "nfe"),
    [
        # 15 bytes/s of English over 12 s, the longest text (2000 characters) at 32 steps
        (speech(12, "hello world, it "), (ENGLISH * 40)[:2000], 32),
        # Korean at 5 syllables (15 bytes) a second, 2000 characters of Korean at 32 steps
        (speech(12, "안녕하세요"), (KOREAN * 80)[:2000], 32),
        # Chinese at 4 characters a second, 2000 characters at 32 steps
        (speech(12, "你好谢谢"), (CHINESE * 80)[:2000], 32),
        # a short request at the most steps
        (speech(12, "hello world, it "), ENGLISH * 4, 128),
    ],
    ids=["english", "korean", "chinese", "128-steps"],
)
def test_ordinary_requests_are_within_the_default_budget(
    ref_text: str, text: str, nfe: int
) -> None:
    cost = estimate_voice_cost(ref_seconds=12.05, ref_text=ref_text, text=text, nfe_steps=nfe)
    check_voice_request(cost, ref_text, 12.0, VoiceLimits())
    assert 0 < cost.output_seconds < 600 and cost.model_steps <= 8192


@pytest.mark.parametrize(
    ("ref_text", "seconds"),
    [
        ("hello", 2.06),  # the tests' references and transcripts
        ("안녕", 2.06),  # the seed's example (6 bytes over a two-second clip)
        ("안녕하세요, 만나서 반갑습니다.", 3.0),
        ("천천히 말합니다.", 6.0),  # slow Korean, 8 syllables in 6 s
        ("你好。", 2.0),
        ("warm up.", 1.05),
    ],
)
def test_real_transcripts_pass_the_rate_check(ref_text: str, seconds: float) -> None:
    check_ref_text_rate(ref_text, seconds, seconds, VoiceLimits())


def test_a_transcript_of_a_whole_upload_passes_although_the_model_hears_12_s() -> None:
    transcript = speech(40, "hello world, it ")  # 40 s of speech, 640 bytes
    check_ref_text_rate(transcript, 12.05, 40.0, VoiceLimits())
    with pytest.raises(TranscriptMismatch, match="VOICE_REF_TEXT_MAX_BYTES_PER_SECOND=60"):
        check_ref_text_rate(transcript * 5, 12.05, 40.0, VoiceLimits())


def test_without_guidance_a_step_is_one_pass() -> None:
    guided = estimate_voice_cost(ref_seconds=3, ref_text="hello there", text=ENGLISH, nfe_steps=8)
    plain = estimate_voice_cost(
        ref_seconds=3, ref_text="hello there", text=ENGLISH, nfe_steps=8, cfg_strength=0.0
    )
    assert guided.model_steps == 2 * plain.model_steps == 2 * 8 * guided.chunks
    assert guided.output_seconds == plain.output_seconds


def test_limits_reach_the_client_with_their_numbers() -> None:
    refusal = BudgetExceeded(
        "too much", limit="VOICE_MAX_MODEL_STEPS", allowed=8192, estimated=10240
    )
    error = refusal.to_api_error()
    assert isinstance(error, OverBudget) and error.status_code == 422
    assert error.to_body() == {
        "error": {
            "code": "over_budget",
            "message": "too much",
            "limit": "VOICE_MAX_MODEL_STEPS",
            "allowed": 8192,
            "estimated": 10240,
        }
    }
    mismatch = TranscriptMismatch(
        "no match", limit="VOICE_REF_TEXT_MIN_BYTES_PER_SECOND", allowed=1.0, estimated=0.1
    ).to_api_error()
    assert mismatch.status_code == 422 and mismatch.code == "invalid_request"
    assert mismatch.details["fields"][0]["field"] == "ref_text"
    # across Ray (pickled) both keep what they carry
    again = pickle.loads(pickle.dumps(refusal))
    assert (type(again), again.limit, again.estimated) == (BudgetExceeded, refusal.limit, 10240)
    assert find_api_error(pickle.loads(pickle.dumps(error))).to_body() == error.to_body()


def test_limits_refuse_an_empty_range() -> None:
    with pytest.raises(ValueError, match="must be below"):
        VoiceLimits(ref_text_min_bytes_per_second=5, ref_text_max_bytes_per_second=5)
