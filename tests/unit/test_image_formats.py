"""Finding where an image file ends, so that bytes hidden after it (polyglots) are refused."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from core.errors import UnsupportedMediaType
from serve_app.image_formats import image_end, trailing_bytes
from serve_app.uploads import UploadedFile, check_image


def encode(fmt: str, size: tuple[int, int] = (40, 30), **options: object) -> bytes:
    pixels = np.random.default_rng(7).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), color) for color in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], comment=b"hello", loop=0
    )
    return buffer.getvalue()


def a_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("evil.js", "alert(1)")
    return buffer.getvalue()


CLEAN = {
    "png": ("PNG", encode("PNG")),
    "apng": ("PNG", encode("PNG", save_all=True)),
    "jpeg": ("JPEG", encode("JPEG", quality=80)),
    "progressive jpeg": ("JPEG", encode("JPEG", progressive=True, optimize=True)),
    "jpeg with restarts": ("JPEG", encode("JPEG", restart_marker_blocks=1)),
    "jpeg with exif": ("JPEG", encode("JPEG", exif=Image.Exif().tobytes())),
    "gif": ("GIF", encode("GIF")),
    "animated gif": ("GIF", animated_gif()),
    "webp lossy": ("WEBP", encode("WEBP", quality=50)),
    "webp lossless": ("WEBP", encode("WEBP", lossless=True)),
}


@pytest.mark.parametrize("name", list(CLEAN))
def test_clean_images_end_at_their_last_byte(name: str) -> None:
    fmt, data = CLEAN[name]
    assert image_end(data, fmt) == len(data)
    assert trailing_bytes(data, fmt) == 0


@pytest.mark.parametrize("name", list(CLEAN))
@pytest.mark.parametrize("payload", [a_zip(), b"*/=alert(1)//", b"\x00\x00junk"])
def test_appended_bytes_are_counted(name: str, payload: bytes) -> None:
    fmt, data = CLEAN[name]
    assert trailing_bytes(data + payload, fmt) == len(payload)


def test_nul_padding_is_not_counted() -> None:
    fmt, data = CLEAN["jpeg"]
    assert trailing_bytes(data + b"\x00" * 64, fmt) == 0


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_truncated_or_unknown_structures_give_no_verdict(data: bytes, fmt: str) -> None:
    assert trailing_bytes(data, fmt) == 0


def test_check_image_refuses_a_png_with_a_zip_appended() -> None:
    data = CLEAN["png"][1] + a_zip()
    with pytest.raises(UnsupportedMediaType, match="after the end of its PNG image"):
        check_image(UploadedFile(field="file", filename="x.png", data=data), max_pixels=10**6)
    clean = check_image(
        UploadedFile(field="file", filename="x.png", data=CLEAN["png"][1]), max_pixels=10**6
    )
    assert clean.content_type == "image/png"
