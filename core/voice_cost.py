"""What a voice synthesis will cost, worked out from the request before the model runs.

F5-TTS speaks a text in chunks sized from the reference's speaking rate, and gives each chunk
a length in mel frames from the same rate (f5-tts's `infer_process` / `infer_batch_process`,
which `deployments.voice_model` follows). Both come from the request alone: the reference's
seconds, its transcript and the text. So the Gateway can refuse a request before it reaches
the model, and the model wrapper checks the same numbers again (for handle callers), from one
implementation: this module. Pure Python, no torch and no f5-tts.

The cost of a request (`estimate_voice_cost`):

- chunk size (UTF-8 bytes) = bytes(ref_text') / ref_s * (22 - ref_s) * speed, at least 1,
  where ref_text' is the transcript ended with sentence punctuation (`normalize_ref_text`);
  the text is split at sentence punctuation and packed into chunks of at most that size
  (`chunk_text`, f5-tts's own);
- frames of a chunk = ref_frames * gen_bytes / ref_text_bytes / speed', where ref_frames is
  the reference's mel frames (24 kHz / 256), gen_bytes the chunk's UTF-8 bytes and speed' the
  request's speed, or 0.3 for a chunk under 10 bytes (f5-tts slows short chunks down);
- output = the chunks' frames * 256 samples, less 0.15 s of cross-fade between chunks;
- model steps = chunks * nfe_steps * 2 (classifier-free guidance runs the transformer on a
  conditioned and an unconditioned copy; 1 without guidance): one step is one transformer
  pass over the reference plus the chunk, so `frame_steps` (the frames of those passes
  together) is what the GPU actually spends.

A transcript far too short for its reference makes every character a chunk and stretches
each toward the model's frame ceiling, so the speaking rate of the transcript is checked too
(`check_voice_request`): speech is about 8 to 25 bytes of UTF-8 per second in every script
(a Hangul syllable or a CJK character is 3 bytes and takes about as long to say as 3 Latin
letters), so the default range, 1 to 60 bytes per second, only refuses transcripts that do
not describe the reference at all.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core import defaults
from core.errors import BudgetExceeded, TranscriptMismatch
from core.speech_chunks import split_for_streaming

SAMPLE_RATE = 24_000  # the vocos mel front end's rate
HOP_LENGTH = 256  # samples per mel frame
CHUNK_SECONDS = 22.0  # reference + chunk fit in about this many seconds (f5-tts)
SHORT_CHUNK_BYTES = 10  # chunks under this many bytes are spoken slowly ...
SHORT_CHUNK_SPEED = 0.3  # ... at this speed (f5-tts's infer_batch_process)
CROSS_FADE_SECONDS = 0.15
MAX_FRAMES = 65_536  # CFM.sample's max_duration
CFG_MIN_STRENGTH = 1e-5  # below it CFM.sample runs no unconditioned pass

# f5-tts's chunk_text: split after ;:,.!? followed by whitespace, or after full-width ；：，。！？
_SENTENCE_BREAK = re.compile(r"(?<=[;:,.!?])\s+|(?<=[；：，。！？])")


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def normalize_ref_text(ref_text: str) -> str:
    """The transcript ended with sentence punctuation, as f5-tts ends it."""
    ref_text = ref_text.strip()
    if ref_text.endswith("。"):
        return ref_text
    return ref_text + " " if ref_text.endswith(".") else ref_text + ". "


def chunk_size(ref_text: str, ref_seconds: float, speed: float) -> int:
    """The most UTF-8 bytes of text in one chunk (f5-tts's `infer_process`): the reference's
    bytes per second times the seconds left of the ~22 s budget, times the speed."""
    normalized = normalize_ref_text(ref_text)
    size = int(_nbytes(normalized) / ref_seconds * (CHUNK_SECONDS - ref_seconds) * speed)
    return max(size, 1)


def chunk_text(text: str, max_bytes: int) -> list[str]:
    """f5-tts's `chunk_text`: sentences packed into chunks of at most `max_bytes` UTF-8 bytes
    (a sentence longer than that is a chunk of its own)."""
    chunks: list[str] = []
    current = ""
    for sentence in _SENTENCE_BREAK.split(text):
        if not sentence:
            continue
        # f5-tts keeps a space after a sentence that ends in a one-byte character
        piece = sentence + " " if _nbytes(sentence[-1]) == 1 else sentence
        if _nbytes(current) + _nbytes(sentence) <= max_bytes:
            current += piece
        else:
            if current:
                chunks.append(current.strip())
            current = piece
    if current:
        chunks.append(current.strip())
    return chunks


def plan_chunks(
    ref_seconds: float, ref_text: str, text: str, speed: float, *, streaming: bool = False
) -> list[str]:
    """The chunks the model speaks `text` in; `streaming`: with a short first chunk and no
    chunk over the size (`core.speech_chunks`)."""
    size = chunk_size(ref_text, ref_seconds, speed)
    if streaming:
        return split_for_streaming(text, size)
    return chunk_text(text.strip(), size)


@dataclass(frozen=True)
class VoiceCost:
    """The work and output of one synthesis, before it runs."""

    chunks: int
    output_frames: int  # mel frames generated, all chunks together
    output_seconds: float  # audio returned (after the cross-fades)
    model_steps: int  # transformer passes: chunks x nfe_steps x (2 with guidance, else 1)
    frame_steps: int  # frames of those passes together (reference + chunk each time)
    ref_seconds: float
    ref_text_bytes: int


def estimate_voice_cost(
    *,
    ref_seconds: float,
    ref_text: str,
    text: str,
    nfe_steps: int,
    speed: float = 1.0,
    cfg_strength: float = defaults.VOICE_CFG_STRENGTH,
    chunks: list[str] | None = None,
) -> VoiceCost:
    """The cost of speaking `text` after a reference of `ref_seconds` (the seconds the model
    hears, after trimming) whose transcript is `ref_text`. `chunks`: the plan when the caller
    has it already (`plan_chunks`)."""
    if chunks is None:
        chunks = plan_chunks(ref_seconds, ref_text, text, speed)
    ref_frames = round(ref_seconds * SAMPLE_RATE) // HOP_LENGTH
    cond_frames = ref_frames + 1  # the mel of the reference (centred STFT)
    normalized = normalize_ref_text(ref_text)
    # infer_batch_process adds a space after a final one-byte character
    spoken_ref = normalized + " " if _nbytes(normalized[-1]) == 1 else normalized
    ref_bytes = _nbytes(spoken_ref)
    passes = 2 if cfg_strength >= CFG_MIN_STRENGTH else 1
    fade = int(CROSS_FADE_SECONDS * SAMPLE_RATE)
    output_frames = frame_steps = samples = 0
    for index, chunk in enumerate(chunks):
        gen_bytes = _nbytes(chunk)
        local_speed = SHORT_CHUNK_SPEED if gen_bytes < SHORT_CHUNK_BYTES else speed
        total = ref_frames + int(ref_frames / ref_bytes * gen_bytes / local_speed)
        # CFM.sample: at least the text's length and the reference plus one frame, at most
        # its ceiling (the text's length counts characters; pinyin may differ a little)
        total = min(max(total, len(spoken_ref) + len(chunk) + 1, cond_frames + 1), MAX_FRAMES)
        generated = max(total - ref_frames, 0)
        output_frames += generated
        frame_steps += total * nfe_steps * passes
        wave = generated * HOP_LENGTH
        samples += wave - (min(fade, samples, wave) if index else 0)
    return VoiceCost(
        chunks=len(chunks),
        output_frames=output_frames,
        output_seconds=samples / SAMPLE_RATE,
        model_steps=len(chunks) * nfe_steps * passes,
        frame_steps=frame_steps,
        ref_seconds=ref_seconds,
        ref_text_bytes=_nbytes(ref_text.strip()),
    )


class VoiceLimits(BaseModel):
    """How much one synthesis may cost, and the transcript's plausible speaking rates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_output_seconds: float = Field(
        default=defaults.VOICE_MAX_OUTPUT_SECONDS,
        gt=0,
        description="Longest estimated output (VOICE_MAX_OUTPUT_SECONDS)",
    )
    max_model_steps: int = Field(
        default=defaults.VOICE_MAX_MODEL_STEPS,
        ge=1,
        description="Most transformer passes, chunks x nfe_steps x 2 (VOICE_MAX_MODEL_STEPS)",
    )
    ref_text_min_bytes_per_second: float = Field(
        default=defaults.VOICE_REF_TEXT_MIN_BYTES_PER_SECOND,
        ge=0,
        description="Transcript bytes per second of the reference heard, at least "
        "(VOICE_REF_TEXT_MIN_BYTES_PER_SECOND)",
    )
    ref_text_max_bytes_per_second: float = Field(
        default=defaults.VOICE_REF_TEXT_MAX_BYTES_PER_SECOND,
        gt=0,
        description="Transcript bytes per second of the whole reference, at most "
        "(VOICE_REF_TEXT_MAX_BYTES_PER_SECOND)",
    )

    @model_validator(mode="after")
    def _range(self) -> VoiceLimits:
        if self.ref_text_min_bytes_per_second >= self.ref_text_max_bytes_per_second:
            raise ValueError(
                "VOICE_REF_TEXT_MIN_BYTES_PER_SECOND must be below "
                "VOICE_REF_TEXT_MAX_BYTES_PER_SECOND"
            )
        return self


def check_ref_text_rate(
    ref_text: str, heard_seconds: float, full_seconds: float, limits: VoiceLimits
) -> None:
    """Raise TranscriptMismatch when the transcript cannot be what the reference says: too
    few bytes for the seconds the model hears, or too many for the whole reference (a
    transcript may describe all of an upload that the model hears only part of)."""
    size = _nbytes(ref_text.strip())
    low = size / heard_seconds if heard_seconds > 0 else math.inf
    high = size / full_seconds if full_seconds > 0 else math.inf
    lowest, highest = limits.ref_text_min_bytes_per_second, limits.ref_text_max_bytes_per_second
    advice = (
        "send the words spoken in the reference as ref_text, or leave it out to have the "
        "reference transcribed"
    )
    if low < lowest:
        raise TranscriptMismatch(
            f"the reference transcript does not match the reference audio: {size} bytes of "
            f"text for {heard_seconds:.1f} s of speech is {low:.2f} bytes/s, and speech is "
            f"about 8-25 bytes/s (UTF-8; a Hangul or CJK character is 3 bytes); the lowest "
            f"accepted is VOICE_REF_TEXT_MIN_BYTES_PER_SECOND={lowest:g}. {advice}",
            limit="VOICE_REF_TEXT_MIN_BYTES_PER_SECOND",
            allowed=lowest,
            estimated=round(low, 3),
        )
    if high > highest:
        raise TranscriptMismatch(
            f"the reference transcript does not match the reference audio: {size} bytes of "
            f"text for {full_seconds:.1f} s of audio is {high:.1f} bytes/s, and speech is "
            f"about 8-25 bytes/s; the highest accepted is "
            f"VOICE_REF_TEXT_MAX_BYTES_PER_SECOND={highest:g}. {advice}",
            limit="VOICE_REF_TEXT_MAX_BYTES_PER_SECOND",
            allowed=highest,
            estimated=round(high, 3),
        )


def check_voice_cost(cost: VoiceCost, limits: VoiceLimits) -> None:
    """Raise BudgetExceeded (422 `over_budget`) naming the first limit the cost is past."""
    rate = cost.ref_text_bytes / cost.ref_seconds if cost.ref_seconds > 0 else 0.0
    shape = (
        f"{cost.chunks} chunks, {cost.output_seconds:.0f} s of audio, {cost.model_steps} model "
        f"steps (chunks x nfe_steps x 2), from a transcript of {rate:.1f} bytes per second of "
        "reference"
    )
    advice = "send a shorter text, fewer nfe_steps or a higher speed"
    if cost.output_seconds > limits.max_output_seconds:
        raise BudgetExceeded(
            f"this request would produce about {cost.output_seconds:.0f} s of speech; the "
            f"limit is VOICE_MAX_OUTPUT_SECONDS={limits.max_output_seconds:g} ({shape}); "
            f"{advice}",
            limit="VOICE_MAX_OUTPUT_SECONDS",
            allowed=limits.max_output_seconds,
            estimated=round(cost.output_seconds, 1),
        )
    if cost.model_steps > limits.max_model_steps:
        raise BudgetExceeded(
            f"this request would take {cost.model_steps} model steps; the limit is "
            f"VOICE_MAX_MODEL_STEPS={limits.max_model_steps} ({shape}); {advice}",
            limit="VOICE_MAX_MODEL_STEPS",
            allowed=limits.max_model_steps,
            estimated=cost.model_steps,
        )


def check_voice_request(
    cost: VoiceCost, ref_text: str, full_seconds: float, limits: VoiceLimits
) -> None:
    """The transcript's rate first (the clearer reason), then the budget."""
    check_ref_text_rate(ref_text, cost.ref_seconds, full_seconds, limits)
    check_voice_cost(cost, limits)
