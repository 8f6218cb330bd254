"""Reading multipart uploads under a byte budget, and checking that an image is one.

The budget is enforced while the body is read (a declared Content-Length over it is refused
before reading anything), so an oversized upload never lands on disk whole. Images are
decoded for real, only in the formats we accept, with a pixel cap against decompression
bombs.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message, Receive

from core.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from serve_app.image_formats import trailing_bytes

MULTIPART_OVERHEAD_BYTES = 64 * 1024
ACCEPTED_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
    "GIF": ("image/gif", "gif"),
}


def accepted_image_types() -> tuple[str, ...]:
    """The content types an accepted upload is stored as (core.image_keys names the same)."""
    return tuple(content_type for content_type, _extension in ACCEPTED_FORMATS.values())


@dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart body, read into memory."""

    field: str
    filename: str
    data: bytes


@dataclass(frozen=True)
class CheckedImage:
    """An upload that decoded as an accepted image."""

    filename: str
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int
    sha256: str


@dataclass(frozen=True)
class MultipartBody:
    """The parts of a multipart body: files by field name, and the text fields."""

    files: dict[str, list[UploadedFile]]
    fields: dict[str, str]

    def files_named(self, field: str) -> list[UploadedFile]:
        """The files sent under `field`; 422 when there are none."""
        if field in self.fields:
            raise InvalidInput(f"'{field}' must be a file", fields=[{"field": field}])
        files = self.files.get(field, [])
        if not files:
            raise InvalidInput(
                f"the multipart body has no '{field}' file", fields=[{"field": field}]
            )
        return files


async def read_multipart(
    request: Request,
    *,
    max_file_bytes: int,
    max_files: int,
    what: str = "file",
    limit_setting: str = "IMAGE_SEARCH_MAX_BYTES",
) -> MultipartBody:
    """Parse a multipart body within a byte budget: 413 past it, 415/400 for a bad body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            f"expected a multipart/form-data body with a '{what}' file field",
            content_type=content_type[:100],
        )
    budget = max_file_bytes * max_files + MULTIPART_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    too_large = PayloadTooLarge(
        f"upload exceeds {max_file_bytes} bytes ({limit_setting})", limit=max_file_bytes
    )
    if declared is not None and declared.isdigit() and int(declared) > budget:
        raise too_large
    limited = Request(request.scope, _limited_receive(request.receive, budget, too_large))
    try:
        form = await limited.form(max_files=max_files, max_fields=32)
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from None
    except UnicodeDecodeError:
        raise BadRequest("a multipart text field is not valid UTF-8") from None
    try:
        files: dict[str, list[UploadedFile]] = {}
        fields: dict[str, str] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read(max_file_bytes + 1)
                if len(data) > max_file_bytes:
                    raise too_large
                files.setdefault(name, []).append(
                    UploadedFile(field=name, filename=_clean_filename(value.filename), data=data)
                )
            else:
                fields[name] = value
    finally:
        await form.close()
    return MultipartBody(files=files, fields=fields)


async def read_multipart_files(
    request: Request, *, field: str, max_file_bytes: int, max_files: int
) -> list[UploadedFile]:
    """The files sent under `field` (see `read_multipart`)."""
    body = await read_multipart(
        request, max_file_bytes=max_file_bytes, max_files=max_files, what=field
    )
    return body.files_named(field)


def check_image(upload: UploadedFile, *, max_pixels: int) -> CheckedImage:
    """Decode the whole image; 415 when it is not an accepted image, 413 past `max_pixels`."""
    if not upload.data:
        raise UnsupportedMediaType(f"'{upload.filename}' is empty")
    try:
        # The header is read first: the pixel cap applies before any pixel is decoded.
        with Image.open(io.BytesIO(upload.data), formats=list(ACCEPTED_FORMATS)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise PayloadTooLarge(
                    f"'{upload.filename}' is {width}x{height} pixels; the limit is "
                    f"{max_pixels} pixels (IMAGE_SEARCH_MAX_PIXELS)",
                )
            image_format = image.format or ""
            image.load()
    except Image.DecompressionBombError:
        raise PayloadTooLarge(
            f"'{upload.filename}' declares more pixels than the decoder allows (decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            f"'{upload.filename}' is not an image in an accepted format "
            f"({', '.join(ACCEPTED_FORMATS)})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise UnsupportedMediaType(f"'{upload.filename}' is a corrupt or truncated image") from None
    extra = trailing_bytes(upload.data, image_format)
    if extra:
        raise UnsupportedMediaType(
            f"'{upload.filename}' has {extra} bytes after the end of its {image_format} image "
            "(a polyglot or corrupt file)"
        )
    content_type, extension = ACCEPTED_FORMATS[image_format]
    return CheckedImage(
        filename=upload.filename,
        data=upload.data,
        content_type=content_type,
        extension=extension,
        width=width,
        height=height,
        sha256=hashlib.sha256(upload.data).hexdigest(),
    )


def _clean_filename(name: str | None) -> str:
    """Keep the client's name for display only: last path part, printable, bounded."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(ch for ch in base if ch.isprintable())
    return printable[:255] or "upload"


def _limited_receive(receive: Receive, budget: int, too_large: PayloadTooLarge) -> Receive:
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > budget:
                raise too_large
        return message

    return limited
