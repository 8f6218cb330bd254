"""The image-search module over real HTTP through Serve: tiny CLIP, S3 on loopback."""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import time
import uuid
import zlib

import httpx
import numpy as np
import pytest
import ray
from PIL import Image
from ray import serve

from tests.integration.conftest import SearchApp, wait_until_ready


def make_image(seed: int, fmt: str = "PNG", size: tuple[int, int] = (48, 40)) -> bytes:
    """A distinct noise image; the same seed gives the same bytes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims a huge canvas (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def project() -> str:
    return f"p-{uuid.uuid4().hex[:10]}"


def upload(app: SearchApp, project_id: str, data: bytes, name: str = "a.png") -> httpx.Response:
    return httpx.post(
        f"{app.url}/v1/projects/{project_id}/images", files={"file": (name, data)}, timeout=60
    )


def search_by_image(app: SearchApp, project_id: str, data: bytes, limit: int = 10) -> list[dict]:
    response = httpx.post(
        f"{app.url}/v1/projects/{project_id}/images/search/by-image",
        params={"limit": limit},
        files={"file": ("q.png", data)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["results"]


def listed_ids(app: SearchApp, project_id: str) -> list[str]:
    body = httpx.get(f"{app.url}/v1/projects/{project_id}/images", params={"limit": 200}).json()
    return [item["id"] for item in body["items"]]


def test_upload_stores_indexes_and_deduplicates(search_app: SearchApp) -> None:
    pid = project()
    data = make_image(1)
    first = upload(search_app, pid, data, "poster.png")
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["project_id"], body["filename"], body["content_type"]) == (
        pid,
        "poster.png",
        "image/png",
    )
    assert (body["width"], body["height"], body["size_bytes"]) == (48, 40, len(data))
    assert body["duplicate"] is False
    keys = search_app.object_keys(f"AI/SEARCH/{pid}/")
    assert keys == {f"AI/SEARCH/{pid}/{body['id']}.png"}
    stored = search_app.s3_client().get_object(Bucket=search_app.bucket, Key=keys.pop())
    assert stored["Body"].read() == data

    again = upload(search_app, pid, data, "copy.png")
    assert again.status_code == 200
    assert again.json()["id"] == body["id"] and again.json()["duplicate"] is True
    assert len(search_app.object_keys(f"AI/SEARCH/{pid}/")) == 1
    assert listed_ids(search_app, pid) == [body["id"]]


def test_each_image_is_its_own_top_hit(search_app: SearchApp) -> None:
    pid = project()
    images = {seed: make_image(seed, "JPEG" if seed % 2 else "PNG") for seed in range(10, 16)}
    ids = {seed: upload(search_app, pid, data).json()["id"] for seed, data in images.items()}
    for seed, data in images.items():
        results = search_by_image(search_app, pid, data, limit=3)
        assert results[0]["id"] == ids[seed]
        assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert len(results) == 3


def test_text_search_respects_limit_and_orders_by_score(search_app: SearchApp) -> None:
    pid = project()
    for seed in range(20, 25):
        assert upload(search_app, pid, make_image(seed)).status_code == 201
    for limit, expected in ((3, 3), (10, 5)):
        response = httpx.post(
            f"{search_app.url}/v1/projects/{pid}/images/search",
            json={"query": "고양이", "limit": limit},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == expected
        scores = [hit["score"] for hit in results]
        assert scores == sorted(scores, reverse=True)
        assert all(hit["file_url"].endswith(f"/images/{hit['id']}/file") for hit in results)


def test_list_is_newest_first_with_cursor_pagination(search_app: SearchApp) -> None:
    pid = project()
    uploaded = [upload(search_app, pid, make_image(seed)).json()["id"] for seed in range(30, 35)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{search_app.url}/v1/projects/{pid}/images", params=params).json()
        assert page["total"] == 5
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(uploaded))


def test_file_redirects_to_presigned_url(search_app: SearchApp) -> None:
    pid = project()
    data = make_image(40)
    image_id = upload(search_app, pid, data).json()["id"]
    response = httpx.get(f"{search_app.url}/v1/projects/{pid}/images/{image_id}/file")
    assert response.status_code == 307
    assert response.headers["location"].startswith(search_app.s3.endpoint)
    assert httpx.get(response.headers["location"]).content == data

    # Pages that cannot follow a redirect with the key ask for the link itself, and the
    # console's policy lets its images and audio load from that link's origin.
    link = httpx.get(
        f"{search_app.url}/v1/projects/{pid}/images/{image_id}/file", params={"redirect": "false"}
    )
    assert link.status_code == 200 and link.headers["content-type"] == "application/json"
    (url,) = link.json().values()
    assert url.startswith(search_app.s3.endpoint) and httpx.get(url).content == data
    policy = httpx.get(f"{search_app.url}/ui/").headers["content-security-policy"]
    assert f"img-src 'self' blob: data: {search_app.s3.endpoint}" in policy
    assert "connect-src 'self';" in policy


def test_delete_removes_object_row_and_vector(search_app: SearchApp) -> None:
    pid = project()
    keep = upload(search_app, pid, make_image(50)).json()["id"]
    gone_data = make_image(51)
    gone = upload(search_app, pid, gone_data).json()["id"]
    response = httpx.delete(f"{search_app.url}/v1/projects/{pid}/images/{gone}")
    assert response.status_code == 200
    assert response.json() == {"project_id": pid, "id": gone, "deleted": True}
    assert listed_ids(search_app, pid) == [keep]
    assert gone not in [hit["id"] for hit in search_by_image(search_app, pid, gone_data)]
    assert search_app.object_keys(f"AI/SEARCH/{pid}/") == {f"AI/SEARCH/{pid}/{keep}.png"}
    again = httpx.delete(f"{search_app.url}/v1/projects/{pid}/images/{gone}")
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{search_app.url}/v1/projects/{pid}/images/{gone}/file").status_code == 404


def test_batch_upload_embeds_together_and_reports_duplicates(search_app: SearchApp) -> None:
    pid = project()
    a, b = make_image(60), make_image(61)
    files = [("files", ("a.png", a)), ("files", ("b.png", b)), ("files", ("a-again.png", a))]
    response = httpx.post(
        f"{search_app.url}/v1/projects/{pid}/images/batch", files=files, timeout=60
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["created"], body["duplicates"]) == (2, 1)
    assert body["items"][2]["id"] == body["items"][0]["id"]
    assert len(search_app.object_keys(f"AI/SEARCH/{pid}/")) == 2


def test_batch_with_one_bad_file_stores_nothing(search_app: SearchApp) -> None:
    pid = project()
    files = [("files", ("ok.png", make_image(62))), ("files", ("bad.png", b"not an image"))]
    response = httpx.post(f"{search_app.url}/v1/projects/{pid}/images/batch", files=files)
    assert response.status_code == 415
    assert "bad.png" in response.json()["error"]["message"]
    assert search_app.object_keys(f"AI/SEARCH/{pid}/") == set()
    assert httpx.get(f"{search_app.url}/v1/projects/{pid}/images").status_code == 404


def test_full_project_answers_409_and_leaves_nothing_behind(search_app: SearchApp) -> None:
    pid = project()
    for seed in range(70, 78):  # IMAGE_SEARCH_MAX_ELEMENTS=8 in this app
        assert upload(search_app, pid, make_image(seed)).status_code == 201
    before = search_app.object_keys(f"AI/SEARCH/{pid}/")
    response = upload(search_app, pid, make_image(99))
    assert response.status_code == 409
    assert "IMAGE_SEARCH_MAX_ELEMENTS=8" in response.json()["error"]["message"]
    # The original was stored before indexing failed; it must have been removed again.
    assert search_app.object_keys(f"AI/SEARCH/{pid}/") == before
    assert len(listed_ids(search_app, pid)) == 8


def test_storage_outage_answers_503_and_leaves_no_row(search_app: SearchApp) -> None:
    pid = project()
    assert upload(search_app, pid, make_image(80)).status_code == 201
    search_app.s3.stop()
    try:
        response = upload(search_app, pid, make_image(81))
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "storage_unavailable"
        assert "testing-secret" not in response.text
    finally:
        search_app.s3.start()
    assert len(listed_ids(search_app, pid)) == 1
    assert upload(search_app, pid, make_image(81)).status_code == 201
    assert len(listed_ids(search_app, pid)) == 2
    assert len(search_app.object_keys(f"AI/SEARCH/{pid}/")) == 2


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/projects/nope-{uid}/images", 404),
        ("/v1/projects/..%2F..%2Fetc/images", (404, 422)),  # %2F splits the path: no route
        ("/v1/projects/%2e%2e/images", 422),
        ("/v1/projects/" + "x" * 65 + "/images", 422),
        ("/v1/projects/bad%00id/images", 422),
        ("/v1/projects/sp%20ace/images", 422),
    ],
)
def test_bad_or_unknown_project_ids(
    search_app: SearchApp, path: str, status: int | tuple[int, ...]
) -> None:
    response = httpx.get(search_app.url + path.format(uid=uuid.uuid4().hex[:8]))
    assert response.status_code in (status if isinstance(status, tuple) else (status,))
    assert response.json()["error"]["message"]


def test_unknown_project_search_is_404(search_app: SearchApp) -> None:
    response = httpx.post(
        f"{search_app.url}/v1/projects/{project()}/images/search", json={"query": "cat"}
    )
    assert response.status_code == 404
    assert "does not exist" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"just some text, not an image", 415, "unsupported_media_type"),
        (make_image(90)[:200], 415, "unsupported_media_type"),  # truncated PNG
        (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', 415, "unsupported_media_type"),
        (b"", 415, "unsupported_media_type"),
        (bomb_png(), 413, "payload_too_large"),
        (b"\x89PNG" + b"\x00" * (300 * 1024), 413, "payload_too_large"),  # over 256 KiB
    ],
)
def test_bad_uploads(search_app: SearchApp, data: bytes, status: int, code: str) -> None:
    pid = project()
    response = upload(search_app, pid, data)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert search_app.object_keys(f"AI/SEARCH/{pid}/") == set()


def test_huge_declared_content_length_is_refused_before_reading(search_app: SearchApp) -> None:
    """A client announcing 1 GB gets 413 after sending a few bytes, not after a gigabyte."""
    url = httpx.URL(search_app.url)
    head = (
        f"POST {url.path}/v1/projects/{project()}/images HTTP/1.1\r\n"
        f"Host: {url.host}:{url.port}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {1024**3}\r\n\r\n--x\r\n"
    ).encode()
    with socket.create_connection((url.host, url.port), timeout=20) as sock:
        sock.sendall(head)
        answer = ""
        while "}}" not in answer:  # the end of the JSON error body
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk.decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "payload_too_large" in answer


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": {"file": "not a file"}, "files": {"other": ("o.png", b"x")}}, 422),
        ({"files": {"other": ("o.png", b"x")}}, 422),  # no 'file' part
        ({"data": {"file": "urlencoded"}}, 415),
        ({"content": b"raw", "headers": {"content-type": "image/png"}}, 415),
        ({"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}, 400),
    ],
)
def test_malformed_multipart(search_app: SearchApp, kwargs: dict, status: int) -> None:
    response = httpx.post(f"{search_app.url}/v1/projects/{project()}/images", **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"query": ""},
        {"query": "x" * 1001},
        {"query": "cat", "limit": 0},
        {"query": "cat", "limit": 1000},
        {"limit": 3},
    ],
)
def test_bad_search_bodies(search_app: SearchApp, body: dict) -> None:
    pid = project()
    assert upload(search_app, pid, make_image(95)).status_code == 201
    response = httpx.post(f"{search_app.url}/v1/projects/{pid}/images/search", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["fields"]


def test_bad_image_id_is_422(search_app: SearchApp) -> None:
    pid = project()
    assert upload(search_app, pid, make_image(96)).status_code == 201
    response = httpx.delete(f"{search_app.url}/v1/projects/{pid}/images/bad.id")
    assert response.status_code == 422


def _replica_names(app_name: str, deployment: str) -> set[str]:
    prefix = f"SERVE_REPLICA::{app_name}#{deployment}#"
    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(prefix)
    }


def restart_vector_index(app: SearchApp, timeout_s: float = 120) -> None:
    """Kill the VectorIndex replica (ray.kill), then wait until Serve's replacement answers."""
    deployment = "VectorIndex"
    (old,) = _replica_names(app.app_name, deployment)
    ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _replica_names(app.app_name, deployment) - {old}:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no new {deployment} replica after {timeout_s}s")
    handle = serve.get_deployment_handle(deployment, app_name=app.app_name)
    while time.monotonic() < deadline:
        try:  # only the new replica can answer
            handle.stats.remote().result(timeout_s=10)
            break
        except Exception:  # noqa: BLE001 - still starting
            time.sleep(0.5)
    wait_until_ready(app.url)


def test_restart_of_vector_index_loses_nothing(search_app: SearchApp) -> None:
    pid = project()
    images = [make_image(seed) for seed in range(100, 104)]
    ids = [upload(search_app, pid, data).json()["id"] for data in images]
    restart_vector_index(search_app)
    assert sorted(listed_ids(search_app, pid)) == sorted(ids)
    for image_id, data in zip(ids, images, strict=True):
        assert search_by_image(search_app, pid, data, limit=1)[0]["id"] == image_id


def test_snapshot_restored_on_an_empty_disk_gives_back_every_upload(search_app: SearchApp) -> None:
    pid = project()
    images = [make_image(seed) for seed in range(110, 114)]
    ids = [upload(search_app, pid, data).json()["id"] for data in images]
    index = serve.get_deployment_handle("VectorIndex", app_name=search_app.app_name)
    key = index.backup_now.remote().result(timeout_s=60)
    assert key.startswith("backups/image_search/")
    assert key in search_app.object_keys("backups/")
    everything_before = {
        project_id: count for project_id, count in index.stats.remote().result(timeout_s=30).items()
    }
    for suffix in ("", "-wal", "-shm"):
        search_app.db_path.with_name(search_app.db_path.name + suffix).unlink(missing_ok=True)
    restart_vector_index(search_app)
    assert search_app.db_path.exists()
    assert index.stats.remote().result(timeout_s=30) == everything_before
    for image_id, data in zip(ids, images, strict=True):
        assert search_by_image(search_app, pid, data, limit=1)[0]["id"] == image_id


def test_objects_and_rows_match(search_app: SearchApp) -> None:
    """After uploads, a duplicate, a delete, a batch, a refused batch and a full project, every
    object of these projects has its row and every row its object."""
    kept, full, refused = project(), project(), project()
    ids = [upload(search_app, kept, make_image(seed)).json()["id"] for seed in range(120, 124)]
    assert upload(search_app, kept, make_image(120)).json()["duplicate"] is True
    assert httpx.delete(f"{search_app.url}/v1/projects/{kept}/images/{ids[0]}").status_code == 200
    batch = [("files", ("a.png", make_image(124))), ("files", ("b.png", make_image(125)))]
    response = httpx.post(
        f"{search_app.url}/v1/projects/{kept}/images/batch", files=batch, timeout=60
    )
    assert response.status_code == 201, response.text
    bad_batch = [("files", ("ok.png", make_image(126))), ("files", ("bad.png", b"not an image"))]
    response = httpx.post(
        f"{search_app.url}/v1/projects/{refused}/images/batch", files=bad_batch, timeout=60
    )
    assert response.status_code == 415, response.text
    for seed in range(130, 138):  # IMAGE_SEARCH_MAX_ELEMENTS=8 in this app
        assert upload(search_app, full, make_image(seed)).status_code == 201
    assert upload(search_app, full, make_image(138)).status_code == 409

    index = serve.get_deployment_handle("VectorIndex", app_name=search_app.app_name)
    mine = {kept, full, refused}
    rows: set[str] = set()
    for project_id in set(index.stats.remote().result(timeout_s=30)) & mine:
        cursor = None
        while True:
            page = index.list.remote(project_id, 200, cursor).result(timeout_s=30)
            rows |= {record.object_key for record in page.items}
            cursor = page.next_cursor
            if not cursor:
                break
    objects = set().union(*(search_app.object_keys(f"AI/SEARCH/{pid}/") for pid in mine))
    assert len(rows) == 5 + 8, sorted(rows)  # 4 + 2 - 1 kept, a full project, none refused
    assert rows == objects


def test_thirty_two_concurrent_searches_are_all_answered_as_if_alone(search_app: SearchApp) -> None:
    """32 clients at once against the default queue bound (CLIP_MAX_QUEUED_REQUESTS=16): the
    Gateway gathers their embeddings and index searches, so none is refused, and each gets
    what the same search alone gets."""
    pid = project()
    for seed in range(700, 704):
        assert upload(search_app, pid, make_image(seed)).status_code == 201
    queries = [f"query number {i} about a {'cat' if i % 2 else 'dog'}" for i in range(32)]
    url = f"{search_app.url}/v1/projects/{pid}/images/search"

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(client.post(url, json={"query": q, "limit": 3}) for q in queries)
            )

    together = asyncio.run(burst())
    assert [r.status_code for r in together] == [200] * 32, [r.text for r in together[:3]]
    for query, response in zip(queries, together, strict=True):
        alone = httpx.post(url, json={"query": query, "limit": 3}, timeout=60)
        assert alone.status_code == 200
        got, want = response.json()["results"], alone.json()["results"]
        assert [hit["id"] for hit in got] == [hit["id"] for hit in want]
        assert [hit["score"] for hit in got] == pytest.approx(
            [hit["score"] for hit in want], abs=1e-5
        )
    unknown = httpx.post(
        f"{search_app.url}/v1/projects/{project()}/images/search", json={"query": "x"}, timeout=60
    )
    assert unknown.status_code == 404 and "does not exist" in unknown.json()["error"]["message"]


def test_similar_images_of_a_stored_image(search_app: SearchApp) -> None:
    pid = project()
    ids = [upload(search_app, pid, make_image(seed)).json()["id"] for seed in range(720, 724)]
    first = ids[0]
    url = f"{search_app.url}/v1/projects/{pid}/images/{first}/similar"
    response = httpx.get(url, params={"limit": 10}, timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(hit["id"] for hit in results) == sorted(ids[1:])  # all others, not itself
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True)
    # The same order as searching by the image's own bytes, minus the image itself.
    by_image = search_by_image(search_app, pid, make_image(720), limit=4)
    assert by_image[0]["id"] == first
    assert [hit["id"] for hit in results] == [hit["id"] for hit in by_image[1:]]
    assert len(httpx.get(url, params={"limit": 2}, timeout=60).json()["results"]) == 2
    missing = httpx.get(f"{search_app.url}/v1/projects/{pid}/images/nope/similar", timeout=60)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    unknown = httpx.get(f"{search_app.url}/v1/projects/{project()}/images/{first}/similar")
    assert unknown.status_code == 404
    assert httpx.get(url, params={"limit": 0}, timeout=60).status_code == 422


def test_relevance_cuts_say_what_they_dropped(search_app: SearchApp) -> None:
    pid = project()
    for seed in range(740, 745):
        assert upload(search_app, pid, make_image(seed)).status_code == 201
    url = f"{search_app.url}/v1/projects/{pid}/images/search"

    def search(**body: object) -> dict:
        response = httpx.post(url, json={"query": "a red square", **body}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    plain = search(limit=5)
    assert len(plain["results"]) == 5
    assert plain["cut"] == {
        "min_score": None,
        "cutoff": "none",
        "threshold": None,
        "candidates": 5,
        "dropped": 0,
    }
    scores = [hit["score"] for hit in plain["results"]]
    floor = search(limit=5, min_score=scores[1])
    assert [hit["id"] for hit in floor["results"]] == [hit["id"] for hit in plain["results"][:2]]
    assert floor["cut"]["dropped"] == 3 and floor["cut"]["threshold"] == scores[1]
    gap = search(limit=5, cutoff="gap")
    kept = len(gap["results"])
    assert 1 <= kept <= 5 and gap["cut"]["cutoff"] == "gap"
    assert gap["cut"]["candidates"] == 5 and gap["cut"]["dropped"] == 5 - kept
    assert all(hit["score"] >= gap["cut"]["threshold"] for hit in gap["results"])
    none_left = search(limit=5, min_score=1.0)
    assert none_left["results"] == [] and none_left["cut"]["dropped"] == 5
    bad = httpx.post(url, json={"query": "x", "cutoff": "median"}, timeout=60)
    assert bad.status_code == 422


def test_search_pages_follow_the_ranking(search_app: SearchApp) -> None:
    pid = project()
    for seed in range(760, 767):
        assert upload(search_app, pid, make_image(seed)).status_code == 201
    url = f"{search_app.url}/v1/projects/{pid}/images/search"
    whole = httpx.post(url, json={"query": "a blue circle", "limit": 7}, timeout=60).json()
    assert whole["next_cursor"] is None
    pages: list[str] = []
    body: dict[str, object] = {"query": "a blue circle", "limit": 3}
    for _ in range(5):
        page = httpx.post(url, json=body, timeout=60)
        assert page.status_code == 200, page.text
        pages += [hit["id"] for hit in page.json()["results"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
        body = {**body, "cursor": cursor}
    assert pages == [hit["id"] for hit in whole["results"]]  # 3 + 3 + 1, in order
    other = httpx.post(
        url, json={"query": "something else", "limit": 3, "cursor": cursor or body["cursor"]}
    )
    assert other.status_code in (400, 422) and "another search" in other.text
    bad = httpx.post(url, json={"query": "a blue circle", "limit": 3, "cursor": "%%%"})
    assert bad.status_code in (400, 422) and "malformed cursor" in bad.text


def smooth_image(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A colour gradient: re-encoding, resizing or cropping it keeps its CLIP vector almost
    unchanged (cosine ~0.9999 with the tiny model), unlike noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32) / size[0]
    a, b, c = rng.random(3)
    base = np.stack([xx * a, yy * b, (xx + yy) * c / 2], axis=-1) * 255
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_duplicate_groups_of_re_encoded_resized_and_cropped_images(search_app: SearchApp) -> None:
    pid = project()
    a, b = smooth_image(801), smooth_image(802)
    files = {  # upload order: the oldest first
        "a.png": encoded(a),
        "single-1.png": encoded(smooth_image(803)),
        "a.jpg": encoded(a, "JPEG", quality=90),
        "b.png": encoded(b),
        "a-small.png": encoded(a.resize((72, 60))),
        "single-2.png": encoded(smooth_image(804)),
        "b-crop.jpg": encoded(b.crop((3, 3, 93, 77)), "JPEG", quality=92),
    }
    ids = {}
    for name, data in files.items():
        response = upload(search_app, pid, data, name)
        assert response.status_code == 201, response.text
        ids[name] = response.json()["id"]
    url = f"{search_app.url}/v1/projects/{pid}/images/duplicates"

    def duplicates(**params: object) -> httpx.Response:
        return httpx.get(url, params=params, timeout=120)

    response = duplicates(threshold=0.999)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["project_id"], body["threshold"], body["total_groups"], body["scanned"]) == (
        pid,
        0.999,
        2,
        7,
    )
    assert body["next_cursor"] is None and body["neighbours"] >= 1
    groups = [[image["filename"] for image in group["images"]] for group in body["groups"]]
    # Largest first; in a group the oldest upload first, then by score.
    assert groups[0][0] == "a.png" and sorted(groups[0]) == ["a-small.png", "a.jpg", "a.png"]
    assert groups[1] == ["b.png", "b-crop.jpg"]
    assert [group["size"] for group in body["groups"]] == [3, 2]
    first = body["groups"][0]["images"][0]
    assert first["id"] == ids["a.png"] and first["score"] == pytest.approx(1.0, abs=1e-5)
    assert first["file_url"].endswith(f"/images/{ids['a.png']}/file")
    assert {"sha256", "created_at", "width", "height", "content_type"} <= set(first)
    scores = [image["score"] for group in body["groups"] for image in group["images"]]
    assert min(scores) >= 0.999

    # A low threshold joins what the tiny model finds alike: the same components as the
    # pairwise scores of the similar route give.
    pair = {}
    for image_id in ids.values():
        similar = httpx.get(
            f"{search_app.url}/v1/projects/{pid}/images/{image_id}/similar",
            params={"limit": 10},
            timeout=60,
        ).json()["results"]
        for hit in similar:
            pair[(image_id, hit["id"])] = hit["score"]
    component = {image_id: {image_id} for image_id in ids.values()}
    for (x, y), score in pair.items():
        if score >= 0.9 and component[x] is not component[y]:
            merged = component[x] | component[y]
            for member in merged:
                component[member] = merged
    expected = {frozenset(c) for c in component.values() if len(c) > 1}
    low = duplicates(threshold=0.9, limit=50).json()
    assert {frozenset(i["id"] for i in g["images"]) for g in low["groups"]} == expected
    assert low["total_groups"] == len(expected)

    # One group a page; the cursor carries the threshold's scan.
    page_1 = duplicates(threshold=0.999, limit=1).json()
    assert [i["filename"] for i in page_1["groups"][0]["images"]] == groups[0]
    assert page_1["total_groups"] == 2 and page_1["next_cursor"]
    cursor = page_1["next_cursor"]
    page_2 = duplicates(threshold=0.999, limit=1, cursor=cursor).json()
    assert [i["filename"] for i in page_2["groups"][0]["images"]] == groups[1]
    assert page_2["next_cursor"] is None

    # Errors: the JSON error shape, the cursor tied to its listing, unknown projects.
    for bad in ({"threshold": 0.5}, {"threshold": 1.5}, {"limit": 0}, {"limit": 51}):
        assert duplicates(**bad).status_code == 422, bad
    malformed = duplicates(threshold=0.999, cursor="not-a-cursor")
    assert malformed.status_code == 422
    assert malformed.json()["error"]["message"] == "malformed cursor"
    foreign = duplicates(threshold=0.99, cursor=cursor)
    assert foreign.status_code == 422 and "another" in foreign.json()["error"]["message"]
    unknown = httpx.get(f"{search_app.url}/v1/projects/{project()}/images/duplicates")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"

    # A delete: the old cursor's page leaves the image out (its pair is gone), a new first
    # page scans the project as it is now.
    deleted = httpx.delete(f"{search_app.url}/v1/projects/{pid}/images/{ids['b-crop.jpg']}")
    assert deleted.status_code == 200
    after = duplicates(threshold=0.999, limit=1, cursor=cursor).json()
    assert after["groups"] == [] and after["total_groups"] == 2
    fresh = duplicates(threshold=0.999).json()
    assert fresh["total_groups"] == 1 and fresh["scanned"] == 6
    assert [i["filename"] for i in fresh["groups"][0]["images"]] == groups[0]


def test_projects_are_listed_with_their_image_counts(search_app: SearchApp) -> None:
    pid = project()
    for n in (61, 62, 63):
        upload(search_app, pid, make_image(n))
    seen: dict[str, dict] = {}
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{search_app.url}/v1/projects", params=params, timeout=30)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= 2
        seen.update((item["project_id"], item) for item in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert list(seen) == sorted(seen)  # by id, across pages, each once
    mine = seen[pid]
    assert mine["images"] == 3
    assert mine["created_at"] <= mine["last_added_at"]
    bad = httpx.get(f"{search_app.url}/v1/projects", params={"cursor": "../x"}, timeout=30)
    assert bad.status_code == 422 and "cursor" in bad.text
