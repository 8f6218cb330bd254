"""Bodies of the OpenAI-compatible routes (`/v1/images/generations`, `/v1/embeddings`,
`/v1/audio/speech`) and the answers of `/v1/models`.

Unlike the seed's bodies these accept unknown fields and ignore them: the official `openai`
client sends OpenAI's own options (`quality`, `style`, `user`, ...) that mean nothing here.
The fields that do matter are range-checked like everywhere else (422 naming the field).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticKnownError

from core.errors import InvalidInput
from core.types import ImageParams
from serve_app.embedding_inputs import is_data_url

MAX_SEED = 2**63 - 1
MIN_SIDE, MAX_SIDE, SIDE_STEP = 64, 2048, 8
MAX_IMAGES = 4
MAX_EMBEDDING_INPUTS = 256
MAX_EMBEDDING_TEXT_CHARS = 1000

_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
_SIZE_RULE = (
    f"size must be 'WIDTHxHEIGHT' (e.g. '512x512') with each side a multiple of {SIDE_STEP} "
    f"in {MIN_SIDE}..{MAX_SIDE}, or 'auto'"
)


class _OpenAIBody(BaseModel):
    # OpenAI's other options are accepted and ignored, never refused.
    model_config = ConfigDict(extra="ignore")


def _no_control_characters(value: str | None) -> str | None:
    if value and any(ord(ch) < 32 and ch not in "\n\t" for ch in value):
        raise ValueError("must not contain control characters")
    return value


def parse_size(size: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (width, height); ValueError (with the rule) when malformed or out of
    range. The pixel budget (IMAGE_MAX_PIXELS) is the server's and is checked by the route."""
    match = _SIZE.fullmatch(size)
    if match is None:
        raise ValueError(_SIZE_RULE)
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE or side % SIDE_STEP:
            raise ValueError(f"{_SIZE_RULE}; got {size!r}")
    return width, height


# --- images -----------------------------------------------------------------------------------


class ImageGenerationRequest(_OpenAIBody):
    """OpenAI's image-generation body plus this server's generation parameters.

    The prompt goes to the image model as given (no prompt optimizer, unlike the seed routes).
    """

    prompt: str = Field(min_length=1, max_length=4000, examples=["a red fox, poster art"])
    model: str | None = Field(default=None, max_length=256, description="Accepted and ignored")
    n: int | None = Field(default=1, ge=1, le=MAX_IMAGES, description="Images to generate")
    size: str | None = Field(
        default=None,
        examples=["512x512"],
        description="WIDTHxHEIGHT, multiples of 8 in 64..2048 and within IMAGE_MAX_PIXELS; "
        "'auto' or absent: IMAGE_DEFAULT_WIDTH x IMAGE_DEFAULT_HEIGHT",
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        default="b64_json",
        description="b64_json: the PNG inline; url: stored under IMAGE_REMOTE_PREFIX, linked",
    )
    stream: bool | None = Field(default=None, description="Streaming is not supported")
    # This server's extensions (the openai client sends them through `extra_body`).
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Image i uses seed + i; absent: random"
    )
    steps: int | None = Field(default=None, ge=1, le=150)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=30.0)
    negative_prompt: str | None = Field(default=None, max_length=2000)

    @field_validator("prompt")
    @classmethod
    def _prompt_is_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return _no_control_characters(value)  # type: ignore[return-value]

    @field_validator("negative_prompt")
    @classmethod
    def _negative_prompt_is_text(cls, value: str | None) -> str | None:
        return _no_control_characters(value)

    @field_validator("size")
    @classmethod
    def _size_is_valid(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return None
        parse_size(value)
        return value

    @field_validator("stream")
    @classmethod
    def _no_streaming(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("streaming is not supported by this server")
        return value

    @field_validator("seed")
    @classmethod
    def _seeds_fit(cls, value: int | None, info: ValidationInfo) -> int | None:
        count = info.data.get("n") or 1
        if value is not None and value + count - 1 > MAX_SEED:
            raise ValueError(f"seed + n - 1 must be at most {MAX_SEED}")
        return value

    @property
    def count(self) -> int:
        return self.n or 1

    @property
    def format(self) -> Literal["b64_json", "url"]:
        return self.response_format or "b64_json"

    def image_params(self, defaults: ImageParams) -> ImageParams:
        """The parameters of the first image: unset ones from the server's defaults."""
        given: dict[str, Any] = self.model_dump(
            include={"steps", "guidance_scale", "negative_prompt", "seed"}, exclude_none=True
        )
        if self.size is not None:
            given["width"], given["height"] = parse_size(self.size)
        return defaults.model_copy(update=given)


class ImageData(BaseModel):
    b64_json: str | None = Field(default=None, description="The PNG, base64 (b64_json)")
    url: str | None = Field(default=None, description="Where to fetch the PNG (url)")
    revised_prompt: str = Field(description="The prompt the image was made from (as given)")
    seed: int = Field(description="Seed used (extension): the same seed reproduces the image")


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time, seconds")
    data: list[ImageData]


# --- embeddings -------------------------------------------------------------------------------


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


EmbeddingText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_EMBEDDING_TEXT_CHARS),
    AfterValidator(_not_blank),
]


class ImageInput(BaseModel):
    """An image among the inputs: a data URL, or bare base64 (the object form only)."""

    url: str


_TEXT_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_EMBEDDING_TEXT_CHARS}
_IMAGE_PART_SCHEMA = {
    "type": "object",
    "required": ["type", "image_url"],
    "properties": {
        "type": {"const": "image_url"},
        "image_url": {
            "anyOf": [
                {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}},
                {"type": "string"},
            ],
            "description": "A data URL (data:image/png;base64,...) or bare base64; remote "
            "URLs are not fetched",
        },
    },
}
_TEXT_PART_SCHEMA = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": _TEXT_SCHEMA},
}
_ITEM_SCHEMA = {
    "anyOf": [
        _TEXT_SCHEMA,
        {"type": "string", "pattern": "^data:image/", "description": "An image as a data URL"},
        _IMAGE_PART_SCHEMA,
        _TEXT_PART_SCHEMA,
    ]
}
_INPUT_SCHEMA = {
    "anyOf": [
        _ITEM_SCHEMA,
        {"type": "array", "items": _ITEM_SCHEMA, "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS},
    ],
    "title": "Input",
    "description": "A text or an image, or a list of them, embedded in one space. A string "
    "that is a data URL (data:image/png;base64,...) is an image, any other string a text; "
    'objects: {"type": "image_url", "image_url": {"url": "data:..."}} and {"type": "text", '
    '"text": "..."}. Token-id arrays are refused with 422',
}
TOKEN_IDS_MESSAGE = (
    "input: token-id arrays are not supported by this server; send the text itself "
    "(a string or a list of strings)"
)
ITEM_RULE = (
    "must be a text, an image as a data URL (data:image/png;base64,...), or an object "
    '{"type": "image_url", "image_url": {"url": ...}} or {"type": "text", "text": ...}'
)


def _is_token_ids(value: Any) -> bool:
    def is_int(item: Any) -> bool:
        return isinstance(item, int) and not isinstance(item, bool)

    if is_int(value):
        return True
    return isinstance(value, list) and any(is_int(item) or isinstance(item, list) for item in value)


def _text(value: str) -> str:
    """A text input, checked as EmbeddingText is (with pydantic's own messages)."""
    if not value:
        raise PydanticKnownError("string_too_short", {"min_length": 1})
    if len(value) > MAX_EMBEDDING_TEXT_CHARS:
        raise PydanticKnownError("string_too_long", {"max_length": MAX_EMBEDDING_TEXT_CHARS})
    return _not_blank(value)


def embedding_item(value: Any) -> str | ImageInput:
    """One input: a text (str) or an image (ImageInput); ValueError (422 naming input.N)
    for anything else. Which strings are images: `serve_app/embedding_inputs.py`."""
    if isinstance(value, ImageInput):
        return value
    if isinstance(value, str):
        return ImageInput(url=value) if is_data_url(value) else _text(value)
    if isinstance(value, dict):
        kind = value.get("type")
        if kind == "text":
            if not isinstance(value.get("text"), str):
                raise ValueError('a {"type": "text"} input needs a string "text"')
            return _text(value["text"])
        if kind == "image_url":
            image_url = value.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str) or not url.strip():
                raise ValueError('a {"type": "image_url"} input needs "image_url": {"url": ...}')
            return ImageInput(url=url.strip())
    raise ValueError(ITEM_RULE)


EmbeddingItem = Annotated[str | ImageInput, PlainValidator(embedding_item)]


class EmbeddingsRequest(_OpenAIBody):
    """OpenAI's embeddings body; texts go through the CLIP text tower, images through its
    image tower, into the same space."""

    input: Annotated[
        list[EmbeddingItem],
        Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS),
        WithJsonSchema(_INPUT_SCHEMA),
    ]
    model: str | None = Field(default=None, max_length=256, description="Echoed in the answer")
    encoding_format: Literal["float", "base64"] | None = Field(
        default="float", description="base64: little-endian float32 bytes, as OpenAI does"
    )
    dimensions: int | None = Field(
        default=None, ge=1, description="Must equal the model's embedding size when given"
    )

    @field_validator("input", mode="before")
    @classmethod
    def _texts_only(cls, value: Any) -> Any:
        if _is_token_ids(value):
            # Raised as the API error itself (not a ValueError) so that the message the
            # client shows says what is wrong, not only which field.
            raise InvalidInput(
                TOKEN_IDS_MESSAGE, fields=[{"field": "input", "message": "token ids"}]
            )
        return [value] if isinstance(value, str | dict) else value

    @property
    def texts(self) -> list[tuple[int, str]]:
        """The text inputs with their positions."""
        return [(i, item) for i, item in enumerate(self.input) if isinstance(item, str)]

    @property
    def images(self) -> list[tuple[int, str]]:
        """The image inputs (data URL or bare base64) with their positions."""
        return [(i, item.url) for i, item in enumerate(self.input) if isinstance(item, ImageInput)]


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of float32 (LE)")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(description="Whitespace-separated words (an approximation)")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class SpeechRequest(_OpenAIBody):
    """`POST /v1/audio/speech`: `voice` names a saved reference voice (PUT /v1/voices/{id})."""

    input: str = Field(min_length=1, max_length=100_000, description="Text to speak")
    voice: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*$",
        description="A saved voice id",
    )
    model: str | None = Field(default=None, max_length=256, description="Accepted and ignored")
    response_format: Literal["mp3", "wav", "flac", "opus", "pcm"] | None = Field(
        default="mp3", description="pcm: raw 16-bit little-endian mono at 24 kHz, no header"
    )
    stream_format: Literal["audio", "sse"] | None = Field(
        default=None,
        description="Stream the speech as it is made: `audio` (chunked mp3, wav or pcm) or "
        "`sse` (speech.audio.delta events with base64 audio, then speech.audio.done). "
        "Unset: the whole clip in one response",
    )
    speed: float | None = Field(default=None, ge=0.3, le=3.0)
    instructions: str | None = Field(default=None, max_length=4000, description="Ignored")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Extension")
    nfe_steps: int | None = Field(default=None, ge=1, le=128, description="Extension")


# --- models -----------------------------------------------------------------------------------


class ModelObject(BaseModel):
    """One served model, in OpenAI's shape plus which module serves it and where."""

    id: str = Field(description="The model as configured (a hub id, or a local model's name)")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time, seconds: when this server first saw it")
    owned_by: str = Field(description="A hub id's organisation, else common-ai-server")
    module: str = Field(description="Extension: the module serving it (image, image_search, voice)")
    endpoints: list[str] = Field(description="Extension: the OpenAI routes that use it")
    dimensions: int | None = Field(
        default=None, description="Extension: the embedding size (embedding models only)"
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
