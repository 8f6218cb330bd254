"""Where an accepted image file ends, to refuse bytes hidden after it (polyglot files).

Pillow decodes a PNG with a ZIP appended, or a GIF followed by JavaScript, without a word:
the decoder stops at the image's end marker. Such a file is an image and something else at
once, and we would store and serve it as an image. These walkers follow each format's own
structure (PNG chunks up to IEND, GIF blocks up to the trailer, JPEG segments and scans up
to EOI, the RIFF size of a WEBP) to find the offset where the image ends; `trailing_bytes`
counts what lies beyond it. NUL padding, which some encoders write, is not counted.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["image_end", "trailing_bytes"]


def trailing_bytes(data: bytes, image_format: str) -> int:
    """Bytes after the end of the image (NUL padding excepted); 0 when the end is unknown."""
    end = image_end(data, image_format)
    if end is None or end >= len(data):
        return 0
    rest = data[end:]
    return 0 if not rest.strip(b"\x00") else len(rest)


def image_end(data: bytes, image_format: str) -> int | None:
    """The offset just past the image in `data` (a Pillow format name: PNG, GIF, JPEG, WEBP),
    or None when the structure cannot be followed (the decoder has the last word then)."""
    walker = _WALKERS.get(image_format.upper())
    if walker is None:
        return None
    try:
        return walker(data)
    except (IndexError, ValueError):  # ran off the end: a truncated structure
        return None


def _png_end(data: bytes) -> int | None:
    pos = 8  # signature
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        pos += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return pos
    return None


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    """Past a GIF sequence of data sub-blocks (size byte, data) and its 0 terminator."""
    while True:
        size = data[pos]
        pos += 1
        if size == 0:
            return pos
        pos += size


def _color_table_size(flags: int) -> int:
    return 3 * (2 << (flags & 0x07)) if flags & 0x80 else 0


def _gif_end(data: bytes) -> int | None:
    pos = 13 + _color_table_size(data[10])  # header (6) + logical screen descriptor (7)
    while pos < len(data):
        block = data[pos]
        if block == 0x3B:  # trailer
            return pos + 1
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor (10), local color table, LZW code size
            pos = _skip_sub_blocks(data, pos + 10 + _color_table_size(data[pos + 9]) + 1)
        else:
            return None
    return None


def _jpeg_end(data: bytes) -> int | None:
    if data[:2] != b"\xff\xd8":
        return None
    pos, size = 2, len(data)
    while pos < size:
        if data[pos] != 0xFF:
            return None
        while data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            return pos
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        pos += int.from_bytes(data[pos : pos + 2], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            while True:
                pos = data.index(b"\xff", pos)
                following = data[pos + 1]
                if following == 0xFF:
                    pos += 1
                elif following == 0x00 or 0xD0 <= following <= 0xD7:  # stuffing, restarts
                    pos += 2
                else:
                    break
    return None


def _webp_end(data: bytes) -> int | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    return 8 + int.from_bytes(data[4:8], "little")


_WALKERS: dict[str, Callable[[bytes], int | None]] = {
    "PNG": _png_end,
    "GIF": _gif_end,
    "JPEG": _jpeg_end,
    "WEBP": _webp_end,
}
