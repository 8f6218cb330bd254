"""Drill: the VectorIndex comes back on a blank disk, once with good snapshots, once with the
newest snapshot corrupted in the bucket.

The local SQLite database (and its -wal/-shm) is deleted and the replica SIGKILLed. Serve's
replacement restores the newest snapshot from storage; `/readyz` says which one. With the
newest snapshot's bytes damaged it falls back to the one before, and says so in its log and
in `/readyz` (`modules.image_search.detail.vector_index.skipped_snapshots`). Either way every
image is back: listed, its own top hit, its object in the bucket.
"""

from __future__ import annotations

import uuid

import httpx

from tests.integration.conftest import SearchApp
from tests.integration.test_image_search import make_image
from tests.support.drills import (
    DrillReport,
    Timer,
    drill_report,  # noqa: F401 - fixture
    index_handle,
    lost_uploads,
    reconcile,
    sigkill_replica,
    wait_for_log,
    wait_ready,
    wait_replaced,
)


def upload_all(app: SearchApp, project_id: str, seeds: range) -> dict[str, tuple[str, bytes]]:
    uploaded = {}
    for seed in seeds:
        data = make_image(seed)
        response = httpx.post(
            f"{app.url}/v1/projects/{project_id}/images",
            files={"file": ("b.png", data)},
            timeout=60,
        )
        assert response.status_code == 201, response.text
        uploaded[response.json()["id"]] = (project_id, data)
    return uploaded


def blank_disk_restart(app: SearchApp) -> float:
    """Delete the database files, SIGKILL the VectorIndex; seconds until /readyz is 200."""
    for suffix in ("", "-wal", "-shm"):
        app.db_path.with_name(app.db_path.name + suffix).unlink(missing_ok=True)
    timer = Timer()
    dead = sigkill_replica(app.app_name, "VectorIndex")
    wait_replaced(app.app_name, "VectorIndex", dead)
    wait_ready(app.url)
    return timer()


def index_detail(app: SearchApp) -> dict:
    ready = httpx.get(f"{app.url}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    return ready.json()["modules"]["image_search"]["detail"]["vector_index"]


def test_blank_disk_restores_newest_good_snapshot(
    search_app: SearchApp,
    drill_report: DrillReport,  # noqa: F811
) -> None:
    index = index_handle(search_app)
    project_id = f"blank-{uuid.uuid4().hex[:8]}"
    images = upload_all(search_app, project_id, range(40_000, 40_003))
    older = index.backup_now.remote().result(timeout_s=60)
    images |= upload_all(search_app, project_id, range(40_003, 40_006))
    newest = index.backup_now.remote().result(timeout_s=60)
    assert newest > older
    before = index.stats.remote().result(timeout_s=30)

    # 1. Good snapshots: the newest comes back.
    recovery_s = blank_disk_restart(search_app)
    detail = index_detail(search_app)
    lost = lost_uploads(search_app, images)
    after = index.stats.remote().result(timeout_s=30)
    books = reconcile(search_app, [project_id])
    drill_report.add(
        drill="Blank node",
        injected="local database and -wal/-shm deleted, VectorIndex SIGKILLed",
        sent=len(images),
        acknowledged=len(images),
        lost=len(lost) + sum(max(0, n - after.get(p, 0)) for p, n in before.items()),
        orphans=books.orphans,
        recovery_s=recovery_s,
        notes=f"restored {detail['restored_from'].rsplit('/', 1)[-1]} (the newest)",
    )
    assert detail["database"] == "restored"
    assert detail["restored_from"] == newest
    assert detail["skipped_snapshots"] == []
    assert after == before
    assert lost == []
    assert books.orphans == 0, books

    # 2. The newest snapshot is damaged in the bucket: the one before it is used, and said so.
    damaged = index.backup_now.remote().result(timeout_s=60)
    client = search_app.s3_client()
    good = client.get_object(Bucket=search_app.bucket, Key=damaged)["Body"].read()
    rotten = bytearray(good)
    rotten[100:20_000] = b"\xa5" * (min(len(rotten), 20_000) - 100)  # header + schema pages
    client.put_object(Bucket=search_app.bucket, Key=damaged, Body=bytes(rotten))
    try:
        recovery_s = blank_disk_restart(search_app)
        detail = index_detail(search_app)
        log_line = wait_for_log(
            search_app.app_name, "VectorIndex", f"skipped database snapshot {damaged}"
        )
        lost = lost_uploads(search_app, images)
        after = index.stats.remote().result(timeout_s=30)
        books = reconcile(search_app, [project_id])
    finally:  # leave no damaged snapshot behind for later restarts
        client.delete_object(Bucket=search_app.bucket, Key=damaged)
    skipped = detail["skipped_snapshots"]
    drill_report.add(
        drill="Blank node, newest snapshot corrupt",
        injected="as above, with the newest snapshot's bytes overwritten in the bucket",
        sent=len(images),
        acknowledged=len(images),
        lost=len(lost) + sum(max(0, n - after.get(p, 0)) for p, n in before.items()),
        orphans=books.orphans,
        recovery_s=recovery_s,
        notes=f"restored {str(detail['restored_from']).rsplit('/', 1)[-1]}; skipped "
        + "; ".join(f"{s['key'].rsplit('/', 1)[-1]} ({s['reason']})" for s in skipped),
    )
    assert detail["database"] == "restored"
    assert detail["restored_from"] == newest
    assert [entry["key"] for entry in skipped] == [damaged]
    assert skipped[0]["reason"]
    assert "WARNING" in log_line
    assert after == before
    assert lost == []
    assert books.orphans == 0, books
