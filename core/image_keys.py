"""Where an image-search original lives in the object store, and checking a row against it.

An uploaded original is stored at `{IMAGE_SEARCH_REMOTE_PREFIX}{project_id}/{image_id}.{ext}`,
`ext` given by its (decoded, accepted) image type. Every row of the catalog names its object
with exactly that key; nothing else is ever written. So a row can be checked on its own: its
`object_key` must be the key its project, id and content type give, and its content type one
of the accepted image types. A row that fails (a forged or damaged snapshot, a database
copied in by hand) must never have its key served or deleted, nor its content type answered.

Used where rows enter (the VectorIndex quarantines failing rows of a restored or existing
database at start) and where keys are used (serving a file, deleting an object).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

from core.errors import InvalidKey
from core.storage import join_key

__all__ = [
    "IMAGE_CONTENT_TYPES",
    "IMAGE_ID_RE",
    "PROJECT_ID_RE",
    "image_key_problem",
    "image_object_key",
    "media_type_for_key",
]

# content type -> file extension of every image type an upload may be stored as
# (serve_app.uploads.ACCEPTED_FORMATS decodes exactly these; a unit test keeps them equal).
IMAGE_CONTENT_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}
)
# The route patterns of serve_app.schemas (PROJECT_ID_PATTERN, IMAGE_ID_PATTERN), unanchored.
PROJECT_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
IMAGE_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHOWN = 120  # characters of a refused value kept in a reason


def image_object_key(prefix: str, project_id: str, image_id: str, extension: str) -> str:
    """The object key of an image's original: `{prefix}{project_id}/{image_id}.{extension}`."""
    return join_key(prefix, project_id, f"{image_id}.{extension}")


def image_key_problem(
    prefix: str,
    project_id: str,
    image_id: str,
    object_key: str,
    content_type: str,
    content_types: Iterable[str] = IMAGE_CONTENT_TYPES,
) -> str | None:
    """None when a row's `object_key` and `content_type` are exactly what an upload of image
    `image_id` to `project_id` stores under `prefix`; else why not (for logs and reports).

    `content_types` are the accepted types (a subset of `IMAGE_CONTENT_TYPES`).
    """
    if not isinstance(project_id, str) or not PROJECT_ID_RE.fullmatch(project_id):
        return f"project id {_shown(project_id)} is not a valid project id"
    if not isinstance(image_id, str) or not IMAGE_ID_RE.fullmatch(image_id):
        return f"image id {_shown(image_id)} is not a valid image id"
    accepted = set(content_types) & set(IMAGE_CONTENT_TYPES)
    if not isinstance(content_type, str) or content_type not in accepted:
        return f"content type {_shown(content_type)} is not an accepted image type"
    try:
        expected = image_object_key(prefix, project_id, image_id, IMAGE_CONTENT_TYPES[content_type])
    except InvalidKey:
        return f"no valid key for image {image_id!r} of project {project_id!r}"
    if object_key != expected:
        return f"object key {_shown(object_key)} is not its own ({expected!r})"
    return None


def media_type_for_key(object_key: str) -> str | None:
    """The accepted image type that `object_key`'s extension stands for, or None."""
    extension = object_key.rsplit("/", 1)[-1].rpartition(".")[2]
    for content_type, ext in IMAGE_CONTENT_TYPES.items():
        if ext == extension:
            return content_type
    return None


def _shown(value: object) -> str:
    """A printable, bounded rendering of a refused value."""
    text = ascii(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
