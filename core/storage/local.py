"""Object storage in a local directory: the default backend when R2/S3 is switched off.

Objects are plain files under `root`, one per key (`a/b.png` -> `root/a/b.png`). Writes are
atomic: data goes to a temp file in the target directory, is fsynced, and is renamed over the
target with `os.replace`, so readers and crashes only ever see the old or the new object.

Differences from S3 worth knowing:
- The content type is not stored: it is guessed from the key's extension (`mimetypes`,
  application/octet-stream otherwise); the `content_type` given to `put()` is ignored.
- `etag` is None, and `url()` is not signed, so `expires_s` is ignored.
- A key cannot be both an object and a "directory" (`a` and `a/b`): such a put raises
  `InvalidKey`. Deleting objects leaves their (possibly empty) directories in place.
- Temp files of interrupted writes start with `.tmp-objstore-`; they never show up in `list()`,
  and keys with a segment starting with that prefix are refused.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from core.durable import fsync_dir
from core.errors import InvalidKey, ObjectNotFound, StorageUnavailable
from core.storage.base import (
    ObjectInfo,
    guess_content_type,
    validate_key,
    validate_prefix,
)

TEMP_PREFIX = ".tmp-objstore-"
_MAX_NAME_BYTES = 255  # NAME_MAX on Linux and macOS file systems


class LocalObjectStore:
    """An `ObjectStore` on the local file system, rooted at `root` (created if missing)."""

    kind = "local"

    def __init__(
        self,
        root: Path,
        public_base_url: str | None = None,
        url_route: str = "/v1/storage/",
    ) -> None:
        try:
            Path(root).mkdir(parents=True, exist_ok=True)
            self.root = Path(root).resolve(strict=True)
        except OSError as exc:
            raise StorageUnavailable(f"local storage root is unusable: {_reason(exc)}") from exc
        self.public_base_url = _with_slash(public_base_url) if public_base_url else None
        self.url_route = _with_slash(url_route)

    # --- paths ------------------------------------------------------------------------------

    def path_for(self, key: str) -> Path:
        """The file that holds `key`, for streaming it; the file need not exist.

        Raises `InvalidKey` for an invalid key, or when the path resolves outside the root
        (through a symlink, say).
        """
        validate_key(key)
        for segment in key.split("/"):
            if len(segment.encode("utf-8")) > _MAX_NAME_BYTES:
                raise InvalidKey(
                    f"a key segment is longer than {_MAX_NAME_BYTES} bytes (local store limit)"
                )
            if segment.startswith(TEMP_PREFIX):
                raise InvalidKey(f"key segments must not start with {TEMP_PREFIX!r}")
        try:
            path = (self.root / key).resolve(strict=False)
        except (OSError, RuntimeError) as exc:  # symlink loops
            raise InvalidKey("object key does not resolve to a file in the store") from exc
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidKey("object key resolves outside the storage root")
        return path

    # --- ObjectStore ------------------------------------------------------------------------

    def put(self, key: str, data: bytes, content_type: str) -> ObjectInfo:
        """Atomically write `data` to `key`; `content_type` is not kept (see module doc)."""
        path = self.path_for(key)
        tmp: Path | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(TEMP_PREFIX + secrets.token_hex(8))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            tmp = None
            fsync_dir(path.parent)
            return self._info(key, path.stat())
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise InvalidKey(
                "object key collides with an existing object or directory on the local store"
            ) from exc
        except OSError as exc:
            raise StorageUnavailable(f"local storage write failed: {_reason(exc)}") from exc
        finally:
            if tmp is not None:
                _unlink_quietly(tmp)

    def get(self, key: str) -> bytes:
        """The object's bytes; `ObjectNotFound` when absent."""
        path = self.path_for(key)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound("object not found", key=key) from None
        except OSError as exc:
            raise StorageUnavailable(f"local storage read failed: {_reason(exc)}") from exc

    def head(self, key: str) -> ObjectInfo | None:
        """The object's metadata (content type guessed from the key), or None when absent."""
        path = self.path_for(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageUnavailable(f"local storage stat failed: {_reason(exc)}") from exc
        if not _is_regular(st.st_mode):
            return None
        return self._info(key, st)

    def delete(self, key: str) -> bool:
        """Delete the object; True if it existed, False if it did not."""
        path = self.path_for(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return False
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.EPERM) and path.is_dir():
                return False  # a "directory" key: there is no object there
            raise StorageUnavailable(f"local storage delete failed: {_reason(exc)}") from exc
        return True

    def url(self, key: str, expires_s: int | None = None) -> str:
        """`public_base_url + key` when configured, else the gateway route for the key.

        The key is percent-encoded (`/` kept). `expires_s` is ignored: local links are unsigned.
        """
        validate_key(key)
        quoted = urllib.parse.quote(key, safe="/")
        return (self.public_base_url or self.url_route) + quoted

    def check(self) -> None:
        """Raise `StorageUnavailable` unless the root is a writable directory."""
        if not self.root.is_dir():
            raise StorageUnavailable("local storage root is missing or not a directory")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable("local storage root is not writable")

    def list(
        self,
        prefix: str = "",
        limit: int | None = None,
        *,
        start_after: str | None = None,
        recursive: bool = True,
    ) -> list[ObjectInfo]:
        """Objects whose key starts with `prefix`, sorted by key, at most `limit` of them,
        after `start_after`; with `recursive=False` only the files of the prefix's folder.

        Only regular files with valid keys are listed: temp files, symlinks and other stray
        entries are skipped.
        """
        validate_prefix(prefix)
        if limit is not None and limit <= 0:
            return []
        # Only walk the deepest directory the prefix pins down; filter the rest by string.
        complete = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / complete if complete else self.root
        found: dict[str, os.stat_result] = {}
        try:
            for key, st in self._walk(start, complete, recursive):
                if key.startswith(prefix) and (start_after is None or key > start_after):
                    found[key] = st
        except OSError as exc:
            raise StorageUnavailable(f"local storage listing failed: {_reason(exc)}") from exc
        keys = sorted(found)
        if limit is not None:
            keys = keys[:limit]
        return [self._info(key, found[key]) for key in keys]

    # --- helpers ----------------------------------------------------------------------------

    def _walk(
        self, directory: Path, rel: str, recursive: bool = True
    ) -> Iterator[tuple[str, os.stat_result]]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX):
                continue
            key = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        yield from self._walk(Path(entry.path), key)
                elif entry.is_file(follow_symlinks=False):
                    validate_key(key)
                    yield key, entry.stat(follow_symlinks=False)
            except (InvalidKey, FileNotFoundError):
                continue  # a stray file name that is no valid key, or deleted meanwhile

    @staticmethod
    def _info(key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=st.st_size,
            content_type=guess_content_type(key),
            last_modified=datetime.fromtimestamp(st.st_mtime, tz=UTC),
            etag=None,
        )

    def __repr__(self) -> str:
        return f"LocalObjectStore(root={str(self.root)!r})"


def _with_slash(base: str) -> str:
    return base if base.endswith("/") else base + "/"


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _reason(exc: OSError) -> str:
    """A short reason without absolute paths: the error name and its strerror."""
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return f"{name}: {exc.strerror}" if exc.strerror else type(exc).__name__
