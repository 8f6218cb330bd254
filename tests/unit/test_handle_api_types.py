"""The handle API's types cross Ray by pickle: each round-trips, pydantic ones through
model_dump/model_validate too, and `deployments.api` is one light import point. No Ray."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from deployments import api
from deployments.api import (
    DuplicateGroup,
    DuplicatePage,
    GeneratedImage,
    ImagePage,
    ImageParams,
    ImageRecord,
    InvalidInput,
    NewImage,
    OptimizedPrompt,
    ProjectPage,
    ProjectSummary,
    SearchHit,
    SynthesizedSpeech,
    UnsupportedMediaType,
    VoiceParams,
    api_error,
)

ROOT = Path(__file__).resolve().parents[2]


def record(image_id: str = "img-1", **extra: Any) -> ImageRecord:
    return ImageRecord(
        id=image_id,
        project_id="proj",
        object_key=f"AI/SEARCH/proj/{image_id}.png",
        filename="poster.png",
        content_type="image/png",
        size_bytes=1234,
        width=48,
        height=40,
        sha256="ab" * 32,
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        label=7,
        **extra,
    )


PYDANTIC_VALUES: dict[str, BaseModel] = {
    "ImageParams": ImageParams(
        width=64, height=128, steps=3, guidance_scale=1.5, negative_prompt="blurry", seed=2**63 - 1
    ),
    "ImageParams-defaults": ImageParams(),
    "OptimizedPrompt": OptimizedPrompt(
        prompt="Poster art of a prince", source="openai", model="gpt-test", elapsed_ms=12.5
    ),
    "OptimizedPrompt-fallback": OptimizedPrompt(
        prompt="p", source="fallback", fallback_reason="timeout"
    ),
    "VoiceParams": VoiceParams(nfe_steps=4, cfg_strength=0.5, speed=1.25, seed=3),
    "ImageRecord": record(duplicate=True),
    "SearchHit": SearchHit(record=record(), score=0.875),
    "ImagePage": ImagePage(items=[record("a"), record("b")], total=5, next_cursor="c2"),
    "ImagePage-last": ImagePage(items=[], total=0),
    "ProjectPage": ProjectPage(
        items=[
            ProjectSummary(
                project_id="posters",
                images=3,
                created_at=datetime(2026, 1, 2, tzinfo=UTC),
                last_added_at=datetime(2026, 1, 3, 4, 5, 6, 7, tzinfo=UTC),
            ),
            ProjectSummary(
                project_id="empty", images=0, created_at=datetime(2026, 1, 2, tzinfo=UTC)
            ),
        ],
        next_cursor="posters",
    ),
    "DuplicatePage": DuplicatePage(
        groups=[
            DuplicateGroup(
                size=3,
                members=[
                    SearchHit(record=record("a"), score=1.0),
                    SearchHit(record=record("b"), score=0.97),
                ],
            )
        ],
        total=4,
        threshold=0.95,
        neighbours=16,
        scanned=120,
        generation=9,
        next_cursor="c3",
    ),
}


def roundtrip(value: Any) -> Any:
    return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


@pytest.mark.parametrize("name", sorted(PYDANTIC_VALUES))
def test_pydantic_types_pickle_and_dump_roundtrip(name: str) -> None:
    value = PYDANTIC_VALUES[name]
    back = roundtrip(value)
    assert type(back) is type(value) and back == value
    again = type(value).model_validate(value.model_dump())
    assert again == value
    assert type(value).model_validate_json(value.model_dump_json()) == value
    with pytest.raises(ValidationError):  # frozen: a value handed to a deployment can't change
        value.model_copy().__setattr__(next(iter(type(value).model_fields)), None)


def test_record_keeps_its_aware_utc_timestamp() -> None:
    back = roundtrip(record())
    assert back.created_at == datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert back.created_at.tzinfo is not None
    assert ImageRecord.model_validate_json(record().model_dump_json()).created_at == back.created_at


def test_new_image_with_its_vector_roundtrips() -> None:
    vector = np.random.default_rng(0).standard_normal(32).astype(np.float32)
    value = NewImage(
        id="i",
        project_id="p",
        object_key="AI/SEARCH/p/i.png",
        filename="a.png",
        content_type="image/png",
        size_bytes=10,
        width=4,
        height=4,
        sha256="00" * 32,
        vector=vector,
    )
    for back in (roundtrip(value), NewImage.model_validate(value.model_dump())):
        assert back.model_dump(exclude={"vector"}) == value.model_dump(exclude={"vector"})
        assert back.vector.dtype == np.float32 and np.array_equal(back.vector, vector)


def test_generated_image_roundtrips_and_encodes_the_same_png() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    value = GeneratedImage(pixels=pixels, seed=2**62 + 5, steps=2, elapsed_ms=3.5)
    back = roundtrip(value)
    assert (back.seed, back.steps, back.elapsed_ms, back.created_at) == (
        value.seed,
        value.steps,
        value.elapsed_ms,
        value.created_at,
    )
    assert back.pixels.dtype == np.uint8 and np.array_equal(back.pixels, pixels)
    assert (back.width, back.height) == (48, 40)
    assert back.to_png() == value.to_png()


def test_synthesized_speech_roundtrips() -> None:
    samples = np.random.default_rng(2).uniform(-1, 1, 24_000).astype(np.float32)
    value = SynthesizedSpeech(
        samples=samples, sample_rate=24_000, seed=9, duration_s=1.0, elapsed_ms=50.0, chunks=1
    )
    back = roundtrip(value)
    assert back.samples.dtype == np.float32 and np.array_equal(back.samples, samples)
    assert (back.sample_rate, back.seed, back.duration_s, back.elapsed_ms, back.chunks) == (
        24_000,
        9,
        1.0,
        50.0,
        1,
    )


def test_params_are_validated_on_the_caller_side() -> None:
    with pytest.raises(ValidationError, match="multiple of 8"):
        ImageParams(width=100)
    with pytest.raises(ValidationError):
        VoiceParams(speed=5)


def test_errors_keep_code_status_and_details_when_pickled() -> None:
    error = roundtrip(InvalidInput("prompt must not be empty", field="prompt"))
    assert type(error) is InvalidInput
    assert (error.status_code, error.code, error.message) == (
        422,
        "invalid_request",
        "prompt must not be empty",
    )
    assert error.details == {"field": "prompt"}


def test_api_error_finds_the_cause_behind_wrappers() -> None:
    class Wrapper(Exception):  # stands in for ray.exceptions.RayTaskError: `.cause`
        def __init__(self, cause: BaseException):
            super().__init__(str(cause))
            self.cause = cause

    cause = UnsupportedMediaType("image 0 is not an image")
    assert api_error(Wrapper(cause)) is cause
    assert api_error(Wrapper(Wrapper(cause))) is cause
    try:
        try:
            raise cause
        except UnsupportedMediaType as exc:
            raise RuntimeError("while embedding") from exc
    except RuntimeError as exc:
        assert api_error(exc) is cause
    assert api_error(ValueError("plain")) is None


def test_api_module_names_every_deployment_and_type() -> None:
    assert (
        api.PROMPT_OPTIMIZER,
        api.IMAGE_GENERATOR,
        api.CLIP_EMBEDDER,
        api.VECTOR_INDEX,
        api.VOICE_CLONER,
        api.GATEWAY,
    ) == (
        "PromptOptimizer",
        "ImageGenerator",
        "ClipEmbedder",
        "VectorIndex",
        "VoiceCloner",
        "Gateway",
    )
    from deployments.clip_embedder import ClipEmbedder
    from deployments.image_generator import ImageGenerator
    from deployments.prompt_optimizer import PromptOptimizer
    from deployments.vector_index import VectorIndex
    from deployments.voice_cloner import VoiceCloner
    from serve_app.gateway import Gateway

    for deployment in (
        PromptOptimizer,
        ImageGenerator,
        ClipEmbedder,
        VectorIndex,
        VoiceCloner,
        Gateway,
    ):
        assert deployment.name in {name for names in api.DEPLOYMENTS.values() for name in names} | {
            api.GATEWAY
        }
    assert set(api.__all__) <= set(dir(api))
    doc = api.__doc__ or ""
    for method in (
        "optimize(",
        "generate(",
        "embed_text(",
        "embed_images(",
        "search(",
        "synthesize(",
        "transcribe(",
    ):
        assert method in doc
