"""One contract suite for every `ObjectStore`: the local directory and S3 (moto over HTTP).

Backend-specific behaviour (S3 outages, local atomicity and symlink defence) follows the
shared suite. S3 failures are real ones on loopback: a closed port, a server that never
answers, moto stopped and started, and a small server answering S3 errors (500, 503, 403).
"""

from __future__ import annotations

import os
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.errors import InvalidKey, ObjectNotFound, StorageUnavailable
from core.storage import (
    LocalObjectStore,
    ObjectInfo,
    ObjectStore,
    StorageConfig,
    join_key,
    make_object_store,
    validate_key,
    validate_prefix,
)
from core.storage.local import TEMP_PREFIX
from core.storage.s3 import S3ObjectStore
from tests.storage_fixtures import (
    DUMMY_ACCESS_KEY_ID,
    DUMMY_SECRET_ACCESS_KEY,
    r2_style_client,
)
from tests.support.failing_http import FailingS3Server
from tests.support.s3 import RestartableS3

INVALID_KEYS = [
    "../x",
    "/abs",
    "a/../b",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "a\x00b",
    "a\nb",
    "a\x7fb",
    "",
    "k" * 2000,
]
NON_UTF8 = bytes(range(256)) + b"\xff\xfe\x80\xc3\x28"
# How long an unreachable or silent S3 may take to be reported: the stores below are set up to
# give up within about 5 s; the bound leaves room for a loaded machine and stays well below
# botocore's 60 s default timeouts.
UNAVAILABLE_BOUND_S = 30.0


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each backend in turn: `local_store` (tmp dir) or `s3_store` (fresh moto bucket)."""
    return request.getfixturevalue(f"{request.param}_store")


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


# --- the shared contract ----------------------------------------------------------------------


def test_is_an_object_store(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    assert store.kind in ("local", "s3")


def test_check_passes(store: ObjectStore) -> None:
    store.check()


@pytest.mark.parametrize("data", [NON_UTF8, b"", b"hello"], ids=["binary", "empty", "text"])
def test_put_get_round_trip(store: ObjectStore, data: bytes) -> None:
    info = store.put("blobs/item.bin", data, "application/octet-stream")
    assert isinstance(info, ObjectInfo)
    assert info.key == "blobs/item.bin"
    assert info.size == len(data)
    assert store.get("blobs/item.bin") == data


def test_head_reports_size_and_content_type(store: ObjectStore) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    store.put("img/a.png", png, "image/png")
    info = store.head("img/a.png")
    assert info is not None
    assert info.key == "img/a.png"
    assert info.size == len(png)
    assert info.content_type == "image/png"
    assert isinstance(info.last_modified, datetime)
    assert info.last_modified.tzinfo is not None


def test_head_missing_is_none(store: ObjectStore) -> None:
    assert store.head("nope/missing.png") is None


def test_get_missing_raises_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("nope/missing.png")


def test_delete_true_then_false(store: ObjectStore) -> None:
    store.put("d/x.txt", b"x", "text/plain")
    assert store.delete("d/x.txt") is True
    assert store.head("d/x.txt") is None
    assert store.delete("d/x.txt") is False
    assert store.delete("never/was.txt") is False


def test_list_by_prefix_is_sorted_and_scoped(store: ObjectStore) -> None:
    for key in ["p/c.txt", "p/a.txt", "p/sub/b.txt", "q/z.txt", "pz.txt", "p0.txt"]:
        store.put(key, key.encode(), "text/plain")
    listed = store.list("p/")
    assert [info.key for info in listed] == ["p/a.txt", "p/c.txt", "p/sub/b.txt"]
    assert [info.size for info in listed] == [len(b"p/a.txt"), len(b"p/c.txt"), len(b"p/sub/b.txt")]
    assert all(info.content_type == "text/plain" for info in listed)
    assert [i.key for i in store.list("p")] == [
        "p/a.txt",
        "p/c.txt",
        "p/sub/b.txt",
        "p0.txt",
        "pz.txt",
    ]
    assert [i.key for i in store.list("p/s")] == ["p/sub/b.txt"]
    assert [i.key for i in store.list("p/", limit=2)] == ["p/a.txt", "p/c.txt"]
    assert store.list("none/") == []
    assert len(store.list()) == 6


def test_list_one_folder_and_after_a_key(store: ObjectStore) -> None:
    for key in ["v/b.mp3", "v/a.mp3", "v/a.txt", "v/gen/a/1.mp3", "v/gen.mp3", "w/c.mp3"]:
        store.put(key, key.encode(), "application/octet-stream")
    top = [i.key for i in store.list("v/", recursive=False)]
    assert top == ["v/a.mp3", "v/a.txt", "v/b.mp3", "v/gen.mp3"]
    assert [i.key for i in store.list("v/", start_after="v/a.txt")] == [
        "v/b.mp3",
        "v/gen.mp3",
        "v/gen/a/1.mp3",
    ]
    paged = store.list("v/", limit=2, start_after="v/a.mp3", recursive=False)
    assert [i.key for i in paged] == ["v/a.txt", "v/b.mp3"]
    assert store.list("v/", start_after="v/zzz", recursive=False) == []
    assert [i.key for i in store.list("v/g", recursive=False)] == ["v/gen.mp3"]


def test_overwrite_replaces(store: ObjectStore) -> None:
    store.put("o/k.bin", b"first version, longer", "application/octet-stream")
    store.put("o/k.bin", b"second", "application/octet-stream")
    assert store.get("o/k.bin") == b"second"
    info = store.head("o/k.bin")
    assert info is not None and info.size == len(b"second")
    assert [i.key for i in store.list("o/")] == ["o/k.bin"]


@pytest.mark.parametrize("key", ["ünï/cödé ✓.png", "with space/a b.txt", "日本/画像 1.jpg"])
def test_unicode_and_space_keys_round_trip(store: ObjectStore, key: str) -> None:
    store.put(key, b"payload", "application/octet-stream")
    assert store.get(key) == b"payload"
    assert store.head(key) is not None
    assert [i.key for i in store.list()] == [key]
    assert store.delete(key) is True


@pytest.mark.parametrize("key", INVALID_KEYS, ids=lambda key: ascii(key)[:24])
def test_invalid_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"x", "text/plain")
    with pytest.raises(InvalidKey):
        store.get(key)
    with pytest.raises(InvalidKey):
        store.head(key)
    with pytest.raises(InvalidKey):
        store.delete(key)
    with pytest.raises(InvalidKey):
        store.url(key)
    assert store.list() == []


@pytest.mark.parametrize("prefix", ["/abs", "../", "a//", "a\\b", "a\x00"])
def test_invalid_list_prefixes_are_refused(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        store.list(prefix)


def test_url(store: ObjectStore) -> None:
    store.put("u/pic one.png", NON_UTF8, "image/png")
    url = store.url("u/pic one.png")
    if store.kind == "s3":
        assert _fetch(url) == NON_UTF8
        assert _fetch(store.url("u/pic one.png", expires_s=60)) == NON_UTF8
    else:
        assert url == "/v1/storage/u/pic%20one.png"


# --- key helpers ------------------------------------------------------------------------------


def test_validate_and_join_key() -> None:
    assert validate_key("AI/POSTER/a.png") == "AI/POSTER/a.png"
    assert join_key("AI/POSTER/", "2024", "a.png") == "AI/POSTER/2024/a.png"
    assert join_key("AI/POSTER", "a.png") == "AI/POSTER/a.png"
    assert join_key("", "a.png") == "a.png"
    assert validate_key("k" * 1024) == "k" * 1024
    for bad in [("AI/", "../x"), ("AI/", "/x"), ("AI/", ""), ("/AI", "x"), ("AI", "a\\b")]:
        with pytest.raises(InvalidKey):
            join_key(*bad)
    with pytest.raises(InvalidKey):
        validate_key("é" * 513)  # 1026 UTF-8 bytes
    with pytest.raises(InvalidKey):
        validate_key("a\udcffb")  # lone surrogate: not UTF-8
    assert validate_prefix("") == ""
    assert validate_prefix("AI/PO") == "AI/PO"


# --- S3 only ----------------------------------------------------------------------------------


@pytest.fixture
def dead_s3_store() -> S3ObjectStore:
    """An S3 store pointed at a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return S3ObjectStore(
        bucket="unreachable",
        endpoint_url=f"http://127.0.0.1:{port}",
        region="auto",
        access_key_id=DUMMY_ACCESS_KEY_ID,
        secret_access_key=DUMMY_SECRET_ACCESS_KEY,
        timeout_s=1.0,
    )


def _error_text(exc: BaseException) -> str:
    parts = []
    while exc is not None:
        parts += [str(exc), repr(exc), repr(getattr(exc, "details", ""))]
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return "\n".join(parts)


@pytest.mark.parametrize(
    "operation",
    [
        lambda s: s.put("a.txt", b"x", "text/plain"),
        lambda s: s.get("a.txt"),
        lambda s: s.head("a.txt"),
        lambda s: s.delete("a.txt"),
        lambda s: s.list("a/"),
        lambda s: s.check(),
    ],
    ids=["put", "get", "head", "delete", "list", "check"],
)
def test_s3_unreachable_raises_storage_unavailable(
    dead_s3_store: S3ObjectStore, operation: Callable[[S3ObjectStore], object]
) -> None:
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        operation(dead_s3_store)
    # A refused connection fails at once; three attempts and two backoffs (under 1 s and 2 s)
    # take a few seconds at most. The bound only catches a hang, with room for a loaded machine.
    assert time.monotonic() - started < UNAVAILABLE_BOUND_S
    assert type(caught.value) is StorageUnavailable
    text = _error_text(caught.value) + str(caught.value.to_body())
    assert DUMMY_SECRET_ACCESS_KEY not in text
    assert caught.value.message.startswith("S3 ")


def test_s3_read_timeout_raises_storage_unavailable() -> None:
    """A server that accepts connections but never answers: the read timeout applies."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # never accept(): the kernel completes handshakes, nobody replies
        store = S3ObjectStore(
            bucket="silent",
            endpoint_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
            region="auto",
            access_key_id=DUMMY_ACCESS_KEY_ID,
            secret_access_key=DUMMY_SECRET_ACCESS_KEY,
            timeout_s=0.5,
        )
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="timed out"):
            store.get("a.txt")
        # Three 0.5 s read timeouts and two backoffs: under 5 s. botocore's default read timeout
        # is 60 s, so staying under half of that shows the configured one applied.
        assert time.monotonic() - started < UNAVAILABLE_BOUND_S


@pytest.mark.parametrize(
    ("code", "status", "attempts"),
    [("InternalError", 500, 3), ("SlowDown", 503, 3), ("AccessDenied", 403, 1)],
)
def test_s3_server_errors_raise_storage_unavailable(code: str, status: int, attempts: int) -> None:
    """A server that answers every request with an S3 error, over real HTTP: 5xx are retried
    (the store's max_attempts=2 counts retries: three requests in all), a 403 is not, and each
    ends as `StorageUnavailable`."""
    with FailingS3Server(status, code) as server:
        store = S3ObjectStore(
            bucket="failing",
            endpoint_url=server.endpoint,
            region="auto",
            access_key_id=DUMMY_ACCESS_KEY_ID,
            secret_access_key=DUMMY_SECRET_ACCESS_KEY,
            timeout_s=5.0,
        )
        with pytest.raises(
            StorageUnavailable, match=rf"^S3 GetObject failed: {code} \(HTTP {status}\)$"
        ):
            store.get("a.txt")
        # A HEAD answer has no body, so only its status tells what went wrong.
        with pytest.raises(
            StorageUnavailable, match=rf"^S3 HeadObject failed: .*\(HTTP {status}\)$"
        ):
            store.head("a.txt")
    assert dict(server.requests) == {"GET": attempts, "HEAD": attempts}


def test_s3_outage_and_recovery_against_moto() -> None:
    """moto's server stopped and started again under a store: unavailable, then working."""
    bucket = f"outage-{uuid.uuid4().hex[:12]}"
    server = RestartableS3()
    server.start()
    try:
        r2_style_client(server.endpoint).create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "auto"}
        )
        store = S3ObjectStore(
            bucket=bucket,
            endpoint_url=server.endpoint,
            region="auto",
            access_key_id=DUMMY_ACCESS_KEY_ID,
            secret_access_key=DUMMY_SECRET_ACCESS_KEY,
            timeout_s=2.0,
        )
        store.put("k/a.txt", b"before", "text/plain")
        server.stop()
        with pytest.raises(StorageUnavailable, match="could not connect"):
            store.get("k/a.txt")
        with pytest.raises(StorageUnavailable):
            store.check()
        server.start()
        store.check()
        assert store.get("k/a.txt") == b"before"  # moto keeps its state across a restart
    finally:
        server.stop()


def test_s3_list_skips_keys_other_tools_wrote(
    s3_store: S3ObjectStore, s3_admin_client: Any, s3_bucket: str
) -> None:
    s3_admin_client.put_object(Bucket=s3_bucket, Key="x//odd", Body=b"x")
    s3_admin_client.put_object(Bucket=s3_bucket, Key="x/ok", Body=b"x")
    assert [i.key for i in s3_store.list("x/")] == ["x/ok"]


def test_s3_missing_bucket_fails_check(moto_server: str) -> None:
    store = S3ObjectStore(
        bucket="no-such-bucket-here",
        endpoint_url=moto_server,
        region="auto",
        access_key_id=DUMMY_ACCESS_KEY_ID,
        secret_access_key=DUMMY_SECRET_ACCESS_KEY,
    )
    with pytest.raises(StorageUnavailable, match="bucket"):
        store.check()
    with pytest.raises(StorageUnavailable):
        store.put("a.txt", b"x", "text/plain")


def test_s3_keeps_put_content_type_and_public_url(
    s3_store: S3ObjectStore, moto_server: str, s3_bucket: str
) -> None:
    s3_store.put("data/blob", b"{}", "application/json")
    info = s3_store.head("data/blob")
    assert info is not None and info.content_type == "application/json" and info.etag
    public = S3ObjectStore(
        bucket=s3_bucket,
        endpoint_url=moto_server,
        region="auto",
        access_key_id=DUMMY_ACCESS_KEY_ID,
        secret_access_key=DUMMY_SECRET_ACCESS_KEY,
        public_base_url="https://cdn.example.com",
    )
    assert public.url("AI/a b.png") == "https://cdn.example.com/AI/a%20b.png"
    assert DUMMY_SECRET_ACCESS_KEY not in repr(public)


# --- local only -------------------------------------------------------------------------------


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_local_symlink_escape_is_refused(local_store: LocalObjectStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"top secret")
    (local_store.root / "link").symlink_to(outside, target_is_directory=True)
    (local_store.root / "file-link").symlink_to(outside / "secret.txt")
    for key in ["link/secret.txt", "link/new.txt", "file-link"]:
        with pytest.raises(InvalidKey):
            local_store.get(key)
        with pytest.raises(InvalidKey):
            local_store.put(key, b"overwrite", "text/plain")
        with pytest.raises(InvalidKey):
            local_store.path_for(key)
    assert (outside / "secret.txt").read_bytes() == b"top secret"
    assert not (outside / "new.txt").exists()
    assert local_store.list() == []  # symlinks are not followed when listing


def test_local_put_leaves_no_temp_files(local_store: LocalObjectStore) -> None:
    for i in range(5):
        local_store.put(f"t/{i}.bin", os.urandom(1000), "application/octet-stream")
    assert _temp_files(local_store.root) == []
    assert len(local_store.list("t/")) == 5


def test_local_failed_put_leaves_nothing(
    local_store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_store.put("f/old.bin", b"old", "application/octet-stream")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageUnavailable):
        local_store.put("f/new.bin", b"new data", "application/octet-stream")
    with pytest.raises(StorageUnavailable):
        local_store.put("f/old.bin", b"replacement", "application/octet-stream")
    monkeypatch.undo()
    assert local_store.head("f/new.bin") is None
    assert local_store.get("f/old.bin") == b"old"
    assert _temp_files(local_store.root) == []
    assert [i.key for i in local_store.list()] == ["f/old.bin"]


def test_local_stray_temp_files_are_not_listed(local_store: LocalObjectStore) -> None:
    local_store.put("s/a.txt", b"a", "text/plain")
    (local_store.root / "s" / f"{TEMP_PREFIX}deadbeef").write_bytes(b"half")
    assert [i.key for i in local_store.list()] == ["s/a.txt"]
    with pytest.raises(InvalidKey):
        local_store.put(f"s/{TEMP_PREFIX}x", b"x", "text/plain")


def test_local_content_type_comes_from_the_key(local_store: LocalObjectStore) -> None:
    info = local_store.put("c/noext", b"x", "image/png")
    assert info.content_type == "application/octet-stream"
    assert local_store.head("c/photo.JPG") is None
    assert local_store.put("c/photo.JPG", b"x", "text/plain").content_type == "image/jpeg"


def test_local_object_and_directory_keys_collide(local_store: LocalObjectStore) -> None:
    local_store.put("a", b"file", "text/plain")
    with pytest.raises(InvalidKey):
        local_store.put("a/b", b"x", "text/plain")
    local_store.put("d/e", b"x", "text/plain")
    with pytest.raises(InvalidKey):
        local_store.put("d", b"x", "text/plain")
    assert local_store.head("d") is None
    assert local_store.delete("d") is False
    with pytest.raises(ObjectNotFound):
        local_store.get("d")


def test_local_url_and_path_for(tmp_path: Path) -> None:
    public = LocalObjectStore(tmp_path / "pub", public_base_url="https://files.example.com/s")
    assert public.url("AI/x y.png") == "https://files.example.com/s/AI/x%20y.png"
    routed = LocalObjectStore(tmp_path / "routed", url_route="/files")
    assert routed.url("a.png", expires_s=5) == "/files/a.png"
    routed.put("k/v.txt", b"v", "text/plain")
    assert routed.path_for("k/v.txt").read_bytes() == b"v"
    assert routed.path_for("k/v.txt").is_relative_to(routed.root)


def test_local_check_fails_when_root_is_gone(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    with pytest.raises(StorageUnavailable):
        store.check()


# --- config and factory -----------------------------------------------------------------------


def test_factory_builds_each_kind(tmp_path: Path, moto_server: str, s3_bucket: str) -> None:
    local = make_object_store(StorageConfig(kind="local", local_dir=tmp_path / "f"))
    assert isinstance(local, LocalObjectStore) and local.kind == "local"
    config = StorageConfig(
        kind="s3",
        bucket=s3_bucket,
        endpoint_url=moto_server,
        access_key_id=DUMMY_ACCESS_KEY_ID,
        secret_access_key=DUMMY_SECRET_ACCESS_KEY,
    )
    assert DUMMY_SECRET_ACCESS_KEY not in repr(config)
    s3 = make_object_store(config)
    assert isinstance(s3, S3ObjectStore) and s3.kind == "s3"
    s3.check()
    s3.put("x.txt", b"x", "text/plain")
    assert s3.get("x.txt") == b"x"
    with pytest.raises(ValueError):
        StorageConfig(kind="s3")
