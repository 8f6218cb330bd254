"""Images among the inputs of `POST /v1/embeddings`: which inputs are images, and their bytes,
checked as uploads are.

An input is an image when it is

- a string that is a data URL (RFC 2397) with a media type or `;base64`:
  `data:image/png;base64,iVBOR...`; every other string is a text, even one that happens to be
  valid base64;
- an object in OpenAI's content-part shape, `{"type": "image_url", "image_url": {"url": ...}}`
  (or `"image_url": "<url>"`), whose url is a data URL or bare base64. `{"type": "text",
  "text": ...}` is a text.

Remote URLs are never fetched (422: the server does not download on a client's behalf). The
bytes are held to the upload rules (`serve_app/uploads.py`): at most IMAGE_SEARCH_MAX_BYTES
(413, counted from the base64's length before anything is decoded), a JPEG, PNG, WEBP or GIF
decoded in full (415 otherwise, the format read from the bytes, not from the media type),
within IMAGE_SEARCH_MAX_PIXELS (413: the header is read before any pixel is decoded), and
nothing hidden after the image's end (415).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from core.errors import ApiError, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from serve_app.uploads import CheckedImage, UploadedFile, check_image

_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_DATA_URL = re.compile(
    rf"data:(?P<media>{_TOKEN}/{_TOKEN})?(?P<params>(?:;{_TOKEN}(?:=[^;,]*)?)*),",
    re.IGNORECASE,
)
_REMOTE = ("http://", "https://", "ftp://", "file:")


@dataclass(frozen=True)
class DataUrl:
    """A parsed data URL: its media type (lower case, may be empty), whether the payload is
    base64, and the payload as sent."""

    media_type: str
    base64: bool
    payload: str


def parse_data_url(value: str) -> DataUrl | None:
    """The parts of a data URL that names a media type or base64; None for anything else."""
    if value[:5].lower() != "data:":
        return None
    match = _DATA_URL.match(value)
    if match is None:
        return None
    media_type = (match["media"] or "").lower()
    params = [part.split("=", 1)[0].strip().lower() for part in match["params"].split(";")]
    is_base64 = "base64" in params
    if not media_type and not is_base64:
        return None
    return DataUrl(media_type=media_type, base64=is_base64, payload=value[match.end() :])


def is_data_url(value: str) -> bool:
    """Whether an input string is an image to embed rather than a text."""
    return parse_data_url(value) is not None


def _field(index: int) -> list[dict[str, str]]:
    return [{"field": f"input.{index}", "message": "not an acceptable image"}]


def _too_large(index: int, size: int, max_bytes: int, *, at_least: bool = False) -> PayloadTooLarge:
    bound = "at least " if at_least else ""
    return PayloadTooLarge(
        f"'input.{index}' is {bound}{size} bytes; the limit is {max_bytes} bytes "
        "(IMAGE_SEARCH_MAX_BYTES)",
        limit=max_bytes,
        fields=_field(index),
    )


def _decode_base64(payload: str, index: int, max_bytes: int) -> bytes:
    compact = "".join(payload.split())  # line-wrapped base64 (MIME) is fine
    size = len(compact) * 3 // 4 - 2  # the fewest bytes it can hold, padding counted
    if size > max_bytes:
        raise _too_large(index, size, max_bytes, at_least=True)
    if "-" in compact or "_" in compact:  # the URL-safe alphabet
        compact = compact.replace("-", "+").replace("_", "/")
    if len(compact) % 4:
        compact += "=" * (-len(compact) % 4)  # unpadded base64
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"'input.{index}' is not valid base64",
            fields=[{"field": f"input.{index}", "message": "malformed base64"}],
        ) from None


def decode_image(url: str, *, index: int, max_bytes: int) -> bytes:
    """The bytes of input `index`'s image: a data URL, or bare base64 (the object form).
    422 for a remote or malformed URL, 415 for a data URL of something else than an image,
    413 past `max_bytes`."""
    parsed = parse_data_url(url)
    if parsed is None:
        lowered = url[:16].lower()
        if lowered.startswith(_REMOTE):
            raise InvalidInput(
                f"'input.{index}': remote image URLs are not fetched; send the image inline "
                "as a data URL (data:image/png;base64,...)",
                fields=[{"field": f"input.{index}", "message": "remote URL"}],
            )
        if lowered.startswith("data:"):
            raise InvalidInput(
                f"'input.{index}' is not a valid data URL: expected "
                "data:image/<type>;base64,<data>",
                fields=[{"field": f"input.{index}", "message": "malformed data URL"}],
            )
        parsed = DataUrl(media_type="", base64=True, payload=url)
    if parsed.media_type and not parsed.media_type.startswith("image/"):
        raise UnsupportedMediaType(
            f"'input.{index}' is a data URL of {parsed.media_type[:100]}, not an image",
            fields=_field(index),
        )
    if parsed.base64:
        data = _decode_base64(parsed.payload, index, max_bytes)
    else:  # percent-encoded bytes
        if len(parsed.payload) > 3 * max_bytes:
            raise _too_large(index, len(parsed.payload) // 3, max_bytes, at_least=True)
        data = unquote_to_bytes(parsed.payload)
    if len(data) > max_bytes:
        raise _too_large(index, len(data), max_bytes)
    return data


def check_image_input(data: bytes, *, index: int, max_pixels: int) -> CheckedImage:
    """`uploads.check_image` on input `index`'s bytes; its refusal names the field."""
    try:
        return check_image(
            UploadedFile(field="input", filename=f"input.{index}", data=data),
            max_pixels=max_pixels,
        )
    except ApiError as exc:
        details = {**exc.details, "fields": _field(index)}
        raise type(exc)(exc.message, headers=exc.headers or None, **details) from None
