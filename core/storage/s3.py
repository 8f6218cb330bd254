"""Object storage on S3 or any S3-compatible server (Cloudflare R2, MinIO, moto) via boto3.

Errors are translated at this boundary: a missing object is `ObjectNotFound` (get) or None
(head); everything else botocore can raise (connection refused, timeouts, 5xx, access denied,
missing bucket, missing credentials) becomes `StorageUnavailable` with a short reason that names
the operation and the error code, never the credentials.

Notes:
- `delete()` costs a HEAD plus a DELETE: S3 answers 204 for absent keys too, so the HEAD is what
  tells True from False (two concurrent deletes may both answer True).
- `list()` uses ListObjectsV2, which does not return content types: listed entries carry the type
  guessed from the key's extension. `head()` returns the stored one.
- `put()` returns the size, the given content type and the ETag, with `last_modified` taken from
  the local clock (no extra HEAD round trip).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from core.errors import InvalidKey, ObjectNotFound, StorageUnavailable
from core.storage.base import (
    DEFAULT_CONTENT_TYPE,
    ObjectInfo,
    guess_content_type,
    validate_key,
    validate_prefix,
)

T = TypeVar("T")

MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600  # the SigV4 limit
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_BOTO_ERRORS = (BotoCoreError, ClientError)


class S3ObjectStore:
    """An `ObjectStore` on one S3 bucket, with path-style addressing and SigV4."""

    kind = "s3"

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        public_base_url: str | None = None,
        presign_expires_s: int = 3600,
        timeout_s: float = 10.0,
    ) -> None:
        if not bucket:
            raise ValueError("bucket must be non-empty")
        if not 1 <= presign_expires_s <= MAX_PRESIGN_EXPIRES_S:
            raise ValueError(f"presign_expires_s must be in 1..{MAX_PRESIGN_EXPIRES_S}")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.public_base_url = _with_slash(public_base_url) if public_base_url else None
        self.presign_expires_s = presign_expires_s
        config = Config(
            signature_version="s3v4",
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path"},
        )
        try:
            # A private session: the global default session is not thread-safe to create.
            session = boto3.session.Session()
            self._client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=config,
            )
        except _BOTO_ERRORS as exc:
            raise _unavailable("client setup", exc) from exc

    # --- ObjectStore ------------------------------------------------------------------------

    def put(self, key: str, data: bytes, content_type: str) -> ObjectInfo:
        """Store `data` under `key` with `content_type`, replacing any existing object."""
        validate_key(key)
        content_type = content_type or DEFAULT_CONTENT_TYPE
        response = self._call(
            "PutObject",
            lambda: self._client.put_object(
                Bucket=self.bucket, Key=key, Body=bytes(data), ContentType=content_type
            ),
        )
        return ObjectInfo(
            key=key,
            size=len(data),
            content_type=content_type,
            last_modified=datetime.now(UTC),
            etag=_etag(response.get("ETag")),
        )

    def get(self, key: str) -> bytes:
        """The object's bytes; `ObjectNotFound` when absent."""
        validate_key(key)

        def fetch() -> bytes:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                data: bytes = body.read()
                return data
            finally:
                body.close()

        try:
            return self._call("GetObject", fetch, not_found=True)
        except _NotFound:
            raise ObjectNotFound("object not found", key=key) from None

    def head(self, key: str) -> ObjectInfo | None:
        """The object's metadata, or None when absent."""
        validate_key(key)
        try:
            response = self._call(
                "HeadObject",
                lambda: self._client.head_object(Bucket=self.bucket, Key=key),
                not_found=True,
            )
        except _NotFound:
            return None
        return ObjectInfo(
            key=key,
            size=int(response.get("ContentLength", 0)),
            content_type=response.get("ContentType") or DEFAULT_CONTENT_TYPE,
            last_modified=_utc(response.get("LastModified")),
            etag=_etag(response.get("ETag")),
        )

    def delete(self, key: str) -> bool:
        """Delete the object; True if it existed, False if it did not."""
        if self.head(key) is None:
            return False
        self._call("DeleteObject", lambda: self._client.delete_object(Bucket=self.bucket, Key=key))
        return True

    def url(self, key: str, expires_s: int | None = None) -> str:
        """`public_base_url + key` (percent-encoded) when configured, else a presigned GET URL.

        `expires_s` (default `presign_expires_s`, at most 7 days) only applies to presigned URLs.
        """
        validate_key(key)
        if self.public_base_url:
            return self.public_base_url + urllib.parse.quote(key, safe="/")
        expires = self.presign_expires_s if expires_s is None else expires_s
        if not 1 <= expires <= MAX_PRESIGN_EXPIRES_S:
            raise ValueError(f"expires_s must be in 1..{MAX_PRESIGN_EXPIRES_S}")
        url: str = self._call(
            "PresignGetObject",
            lambda: self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
            ),
        )
        return url

    def check(self) -> None:
        """HEAD the bucket; raise `StorageUnavailable` when it is unreachable or inaccessible."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = _status(exc)
            if status == 404:
                raise StorageUnavailable("S3 bucket not found") from exc
            if status == 403:
                raise StorageUnavailable("S3 access to the bucket denied") from exc
            raise _unavailable("HeadBucket", exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("HeadBucket", exc) from exc

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

        Pages through ListObjectsV2 (`StartAfter`; `Delimiter='/'` when not recursive). Keys
        that `validate_key` refuses (written by other tools) are skipped,
        so every listed key can be passed back to get/head/delete.
        """
        validate_prefix(prefix)
        if limit is not None and limit <= 0:
            return []

        def collect() -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            paginator = self._client.get_paginator("list_objects_v2")
            page_size = min(limit, 1000) if limit is not None else 1000
            options: dict[str, str] = {}
            if start_after is not None:
                options["StartAfter"] = start_after
            if not recursive:
                options["Delimiter"] = "/"  # deeper keys come back as CommonPrefixes: skipped
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=prefix,
                PaginationConfig={"PageSize": page_size},
                **options,
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"]
                    try:
                        validate_key(key)
                    except InvalidKey:
                        continue
                    found.append(
                        ObjectInfo(
                            key=key,
                            size=int(item.get("Size", 0)),
                            content_type=guess_content_type(key),
                            last_modified=_utc(item.get("LastModified")),
                            etag=_etag(item.get("ETag")),
                        )
                    )
                    if limit is not None and len(found) >= limit:
                        return found  # S3 lists in key order, so these are the first ones
            return found

        found = self._call("ListObjectsV2", collect)
        found.sort(key=lambda info: info.key)
        return found

    # --- helpers ----------------------------------------------------------------------------

    def _call(self, op: str, fn: Callable[[], T], *, not_found: bool = False) -> T:
        """Run one S3 call, translating botocore errors (404s to `_NotFound` if asked)."""
        try:
            return fn()
        except ClientError as exc:
            if not_found and _is_not_found(exc):
                raise _NotFound from None
            raise _unavailable(op, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable(op, exc) from exc

    def __repr__(self) -> str:
        return f"S3ObjectStore(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"


class _NotFound(Exception):
    """Internal: the S3 call answered 404 for the object."""


def _is_not_found(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code == "NoSuchBucket":
        return False
    return code in _NOT_FOUND_CODES or (_status(exc) == 404 and not code)


def _status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _unavailable(op: str, exc: Exception) -> StorageUnavailable:
    """A `StorageUnavailable` with a short reason: operation and error kind, no secrets."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code") or "error")[:64]
        status = _status(exc)
        reason = f"{code} (HTTP {status})" if status else code
    elif isinstance(exc, (ConnectTimeoutError, ReadTimeoutError)):
        reason = "timed out"
    elif isinstance(exc, EndpointConnectionError):
        reason = "could not connect to the endpoint"
    elif isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        reason = "no usable credentials"
    else:
        reason = type(exc).__name__
    return StorageUnavailable(f"S3 {op} failed: {reason}")


def _etag(value: Any) -> str | None:
    return str(value).strip('"') if value else None


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.now(UTC)


def _with_slash(base: str) -> str:
    return base if base.endswith("/") else base + "/"
