"""The object-store contract shared by the local and the S3 backends, and key validation.

Keys are S3-style: `/`-separated, relative, UTF-8. `validate_key` applies one rule set to both
backends so that a key accepted by the local store is accepted by S3 and vice versa, and so that
no key can climb out of its prefix (or out of the local root) on either.
"""

from __future__ import annotations

import mimetypes
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Protocol, runtime_checkable

from core.errors import InvalidKey

MAX_KEY_BYTES = 1024
DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """Metadata of a stored object.

    `etag` is the backend's entity tag without surrounding quotes (S3), or None where the backend
    has none (local). `last_modified` is timezone-aware (UTC).
    """

    key: str
    size: int
    content_type: str
    last_modified: datetime
    etag: str | None = None


@runtime_checkable
class ObjectStore(Protocol):
    """Synchronous object storage for generated images, uploads and DB backups.

    Every method validates its key with `validate_key` and raises `InvalidKey` first. Backend
    failures surface as `StorageUnavailable`; nothing backend-specific (OSError, botocore) leaks.
    """

    kind: str  # "s3" or "local"

    def put(self, key: str, data: bytes, content_type: str) -> ObjectInfo:
        """Store `data` under `key`, replacing any existing object."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; `ObjectNotFound` when there is none."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """The object's metadata, or None when there is none."""
        ...

    def delete(self, key: str) -> bool:
        """Delete the object; True if one was deleted, False (never an error) if it was absent."""
        ...

    def url(self, key: str, expires_s: int | None = None) -> str:
        """A link a client can fetch the object from (the object need not exist yet)."""
        ...

    def check(self) -> None:
        """Cheap health ping; raise `StorageUnavailable` with a reason when unhealthy."""
        ...

    def list(
        self,
        prefix: str = "",
        limit: int | None = None,
        *,
        start_after: str | None = None,
        recursive: bool = True,
    ) -> list[ObjectInfo]:
        """Objects whose key starts with `prefix`, sorted by key, at most `limit` of them;
        only keys after `start_after` (to page on); with `recursive=False`, only keys with no
        `/` past the prefix (S3's delimiter '/': one folder's own files)."""
        ...


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a safe object key, else raise `InvalidKey`.

    Refused: empty keys, keys over 1024 UTF-8 bytes or not encodable as UTF-8, a leading `/`,
    backslashes, NUL and other control characters, `.`/`..` segments and empty segments
    (`a//b`, and a trailing `/`).
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("object key must be a non-empty string", key=_shown(key))
    _check_chars(key, what="object key")
    if key.startswith("/"):
        raise InvalidKey("object key must not start with '/'", key=_shown(key))
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKey("object key must not contain empty segments", key=_shown(key))
        if segment in (".", ".."):
            raise InvalidKey("object key must not contain '.' or '..' segments", key=_shown(key))
    return key


def validate_prefix(prefix: str) -> str:
    """Return `prefix` unchanged if it is a safe listing prefix, else raise `InvalidKey`.

    The empty prefix is allowed. A prefix may end in `/` or in a partial segment (`img/ab`), but
    its complete segments follow the `validate_key` rules.
    """
    if not isinstance(prefix, str):
        raise InvalidKey("prefix must be a string", prefix=_shown(prefix))
    if prefix == "":
        return prefix
    _check_chars(prefix, what="prefix")
    if prefix.startswith("/"):
        raise InvalidKey("prefix must not start with '/'", prefix=_shown(prefix))
    for segment in prefix.split("/")[:-1]:
        if segment in ("", ".", ".."):
            raise InvalidKey(
                "prefix must not contain empty, '.' or '..' segments", prefix=_shown(prefix)
            )
    return prefix


def join_key(prefix: str, *parts: str) -> str:
    """Join `prefix` (with or without a trailing `/`) and `parts` with `/`, then validate.

    `join_key("AI/POSTER/", "2024", "a.png") == "AI/POSTER/2024/a.png"`. Parts are not
    stripped: a part with a leading or trailing `/` yields an empty segment and `InvalidKey`.
    """
    pieces = [prefix.removesuffix("/")] if prefix else []
    pieces.extend(parts)
    return validate_key("/".join(pieces))


def guess_content_type(key: str) -> str:
    """The MIME type for the key's extension (`mimetypes`), else application/octet-stream."""
    suffix = PurePosixPath(key).suffix.lower()
    guessed, _encoding = mimetypes.guess_type("object" + suffix) if suffix else (None, None)
    return guessed or DEFAULT_CONTENT_TYPE


def _check_chars(value: str, *, what: str) -> None:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey(f"{what} is not valid UTF-8", key=_shown(value)) from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"{what} is longer than {MAX_KEY_BYTES} UTF-8 bytes", size=size)
    if "\\" in value:
        raise InvalidKey(f"{what} must not contain backslashes", key=_shown(value))
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidKey(f"{what} must not contain control characters", key=_shown(value))


def _shown(value: object, limit: int = 80) -> str:
    """A short, printable rendering of a rejected key for the error details."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
