"""The jobs' SQLite store on a real file: states, idempotency, retries, restart recovery,
webhook schedule and retention; webhook signing and URL checks; request fingerprints."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from pathlib import Path

import pytest

from core.errors import (
    Conflict,
    IdempotencyKeyReused,
    InvalidInput,
    NotFound,
    Overloaded,
    TooManyRequests,
)
from core.jobs import webhook_backoff_s, webhook_signature
from serve_app.job_store import JobStore, NewJob
from serve_app.job_tasks import fingerprint
from serve_app.webhooks import WebhookRefused, parse_webhook_url, resolve_checked


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs" / "jobs.db"


@pytest.fixture
def store(db_path: Path, clock: Clock) -> JobStore:
    return JobStore(db_path, max_attempts=2, clock=clock)


def new_job(n: int, *, owner: str = "k1", kind: str = "image", **extra: object) -> NewJob:
    return NewJob(
        id=f"job_{n:032x}",
        owner=owner,
        kind=kind,
        request={"title": f"t{n}"},
        fingerprint=f"fp{n}",
        **extra,  # type: ignore[arg-type]
    )


def test_a_job_goes_queued_running_succeeded(store: JobStore, clock: Clock) -> None:
    row = store.insert(new_job(1), max_active=10)
    assert (row.state, row.attempts) == ("queued", 0)
    assert store.claim("voice") is None  # another kind's lane
    clock.now += 5
    running = store.claim("image")
    assert running is not None and (running.state, running.attempts) == ("running", 1)
    assert store.claim("image") is None  # nothing else queued
    clock.now += 7
    done = store.succeed(row.id, {"key": "AI/POSTER/x.png"}, "AI/POSTER/x.png")
    assert done is not None and done.state == "succeeded"
    view = done.view(result_url="/v1/storage/AI/POSTER/x.png")
    assert view.result == {"key": "AI/POSTER/x.png"} and view.result_key == "AI/POSTER/x.png"
    assert view.created_at < view.started_at < view.finished_at  # type: ignore[operator]
    assert view.finished and view.queue_position is None


def test_jobs_start_in_submission_order_per_kind(store: JobStore) -> None:
    for n in range(3):
        store.insert(new_job(n), max_active=10)
    assert store.queue_position(store.get(new_job(2).id)) == 2
    claimed = [store.claim("image") for _ in range(3)]
    assert [row.id for row in claimed if row] == [new_job(n).id for n in range(3)]


def test_another_owner_sees_nothing(store: JobStore) -> None:
    row = store.insert(new_job(1), max_active=10)
    assert store.get(row.id, "k1").id == row.id
    with pytest.raises(NotFound):
        store.get(row.id, "k2")
    with pytest.raises(NotFound):
        store.cancel(row.id, "k2")
    assert store.page("k2", state=None, limit=10, cursor=None) == ([], None)


def test_pages_newest_first(store: JobStore) -> None:
    for n in range(5):
        store.insert(new_job(n), max_active=10)
    first, cursor = store.page("k1", state=None, limit=3, cursor=None)
    rest, end = store.page("k1", state="queued", limit=3, cursor=cursor)
    assert [r.id for r in first + rest] == [new_job(n).id for n in reversed(range(5))]
    assert end is None


def test_idempotency_key_finds_the_first_job_or_refuses_another_body(store: JobStore) -> None:
    first = store.insert(new_job(1, idempotency_key="abc"), max_active=10)
    again = store.find_idempotent("k1", "abc", "fp1")
    assert again is not None and again.id == first.id
    with pytest.raises(IdempotencyKeyReused) as refused:
        store.find_idempotent("k1", "abc", "another body")
    assert refused.value.status_code == 409 and refused.value.details["job_id"] == first.id
    assert store.find_idempotent("k2", "abc", "fp1") is None  # keys are per owner
    with pytest.raises(sqlite3.IntegrityError):  # a race on the same key loses
        store.insert(new_job(2, idempotency_key="abc"), max_active=10)
    store.insert(new_job(3, owner="k2", idempotency_key="abc"), max_active=10)


def test_the_queue_is_bounded(store: JobStore) -> None:
    store.insert(new_job(1), max_active=2)
    store.insert(new_job(2), max_active=2)
    with pytest.raises(Overloaded) as full:
        store.insert(new_job(3), max_active=2)
    assert full.value.status_code == 503 and full.value.headers["Retry-After"]
    store.claim("image")
    assert store.succeed(new_job(1).id, {}, None) is not None
    store.insert(new_job(3), max_active=2)  # a finished job frees its place


def test_one_key_holds_at_most_its_share_of_the_queue(store: JobStore) -> None:
    share = {"max_active": 5, "max_active_per_owner": 2}
    store.insert(new_job(1, owner="k1"), **share)
    store.insert(new_job(2, owner="k1", kind="voice"), **share)
    with pytest.raises(TooManyRequests) as over:
        store.insert(new_job(3, owner="k1"), **share)
    assert over.value.status_code == 429 and over.value.headers["Retry-After"]
    assert over.value.details["limit"] == "JOBS_MAX_QUEUED_PER_KEY"
    store.insert(new_job(4, owner="k2"), **share)  # another key still gets its place
    store.insert(new_job(5, owner="k2"), **share)
    store.claim("voice")  # a running job still counts
    with pytest.raises(TooManyRequests):
        store.insert(new_job(6, owner="k1"), **share)
    store.cancel(new_job(1).id, "k1")  # a finished one does not
    store.insert(new_job(6, owner="k1"), **share)
    store.insert(new_job(7, owner="k3"), **share)
    with pytest.raises(Overloaded):  # the whole queue: 5 queued or running
        store.insert(new_job(8, owner="k3"), **share)


def test_cancel_queued_running_and_finished(store: JobStore) -> None:
    queued = store.insert(new_job(1), max_active=10)
    running = store.insert(new_job(2, kind="voice"), max_active=10)
    store.claim("voice")
    row, was_running = store.cancel(queued.id, "k1")
    assert (row.state, was_running) == ("cancelled", False)
    row, was_running = store.cancel(running.id, "k1")
    assert (row.state, was_running) == ("cancelled", True)
    assert store.succeed(running.id, {"late": True}, None) is None  # a late result is dropped
    assert store.get(running.id).state == "cancelled"
    with pytest.raises(Conflict):
        store.cancel(queued.id, "k1")


def test_a_retry_waits_and_the_last_attempt_fails(store: JobStore, clock: Clock) -> None:
    row = store.insert(new_job(1), max_active=10)
    store.claim("image")
    error = {"code": "service_unavailable", "message": "image generation failed: replica died"}
    again = store.retry_later(row.id, error, delay_s=5)
    assert again is not None and (again.state, again.error) == ("queued", error)
    assert store.claim("image") is None  # not before the delay
    clock.now += 5
    second = store.claim("image")
    assert second is not None and second.attempts == 2
    failed = store.retry_later(row.id, error, delay_s=5)
    assert failed is not None and failed.state == "failed"  # max_attempts=2
    assert failed.error is not None and "gave up after 2 attempts" in failed.error["message"]


def test_an_attempt_refused_before_any_model_is_not_counted(store: JobStore) -> None:
    row = store.insert(new_job(1), max_active=10)
    for _ in range(3):  # more than max_attempts: the module was not ready each time
        assert store.claim("image") is not None
        error = {"code": "model_not_ready", "message": "the image module is loading"}
        again = store.retry_later(row.id, error, delay_s=0, counted=False)
        assert again is not None and (again.state, again.attempts) == ("queued", 0)
    claimed = store.claim("image")
    assert claimed is not None and claimed.attempts == 1


def test_a_restart_queues_interrupted_jobs_again(db_path: Path, clock: Clock) -> None:
    store = JobStore(db_path, max_attempts=2, clock=clock)
    first = store.insert(new_job(1), max_active=10)
    last_try = store.insert(new_job(2, kind="voice"), max_active=10)
    store.claim("image")
    store.claim("voice")
    store.retry_later(last_try.id, {"code": "x", "message": "died"}, delay_s=0)
    store.claim("voice")  # its second and last attempt
    store.close()  # the runner dies here; a new replica opens the same file

    reopened = JobStore(db_path, max_attempts=2, clock=clock)
    failed = reopened.recover()
    assert [row.id for row in failed] == [last_try.id]
    assert reopened.get(first.id).state == "queued"
    resumed = reopened.claim("image")
    assert resumed is not None and resumed.id == first.id and resumed.attempts == 2
    gave_up = reopened.get(last_try.id)
    assert gave_up.state == "failed" and gave_up.error is not None
    assert gave_up.error["code"] == "job_interrupted"


def test_webhook_deliveries_are_scheduled_and_survive(store: JobStore, clock: Clock) -> None:
    row = store.insert(new_job(1, webhook_url="https://example.com/hook"), max_active=10)
    assert store.due_webhooks(10) == []  # not before the job has finished
    store.claim("image")
    store.succeed(row.id, {}, None)
    (due,) = store.due_webhooks(10)
    assert due.id == row.id and due.view().webhook is not None
    store.webhook_failed(row.id, "the receiver answered HTTP 500", retry_in_s=4)
    assert store.due_webhooks(10) == []
    clock.now += 4
    (due,) = store.due_webhooks(10)
    assert due.webhook_attempts == 1 and due.webhook_error == "the receiver answered HTTP 500"
    store.webhook_delivered(row.id)
    view = store.get(row.id).view()
    assert view.webhook is not None and (view.webhook.state, view.webhook.attempts) == (
        "delivered",
        2,
    )
    other = store.insert(new_job(2, webhook_url="https://example.com/hook"), max_active=10)
    store.cancel(other.id)
    store.webhook_failed(other.id, "refused", retry_in_s=None)  # given up
    assert store.get(other.id).webhook_state == "failed" and store.due_webhooks(10) == []


def test_purge_keeps_recent_jobs_and_pending_webhooks(store: JobStore, clock: Clock) -> None:
    old = store.insert(new_job(1, idempotency_key="k"), max_active=10)
    pending = store.insert(new_job(2, webhook_url="https://example.com/h"), max_active=10)
    store.cancel(old.id)
    store.cancel(pending.id)
    clock.now += 100
    fresh = store.insert(new_job(3), max_active=10)
    store.cancel(fresh.id)
    assert [row.id for row in store.purge(retention_s=50)] == [old.id]
    assert store.find_idempotent("k1", "k", "fp1") is None  # the key went with its job
    store.get(pending.id)
    store.get(fresh.id)


def test_webhook_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    body = b'{"id":"job_1","state":"succeeded"}'
    header = webhook_signature("s3cret", 1_700_000_000, body)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert webhook_signature("other", 1_700_000_000, body) != header


def test_webhook_backoff_doubles_up_to_a_cap() -> None:
    assert [webhook_backoff_s(n, 2, 20) for n in range(1, 6)] == [2, 4, 8, 16, 20]


def test_fingerprints_name_the_request() -> None:
    same = fingerprint("image", {"title": "a", "seed": 1}, None, [])
    assert same == fingerprint("image", {"seed": 1, "title": "a"}, None, [])
    assert same != fingerprint("image", {"title": "a", "seed": 2}, None, [])
    assert same != fingerprint("voice", {"title": "a", "seed": 1}, None, [])
    assert same != fingerprint("image", {"title": "a", "seed": 1}, "https://x.org/h", [])
    assert fingerprint("batch_upload", {}, None, ["a"]) != fingerprint(
        "batch_upload", {}, None, ["b"]
    )


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "http:///nohost", "https://user:pw@example.com/", "x" * 3000]
)
def test_malformed_webhook_urls_are_422(url: str) -> None:
    with pytest.raises(InvalidInput):
        parse_webhook_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://[::ffff:192.168.0.1]/",
    ],
)
def test_private_webhook_targets_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(WebhookRefused):
        resolve_checked(url, allow_private=False)
    resolve_checked(url, allow_private=True)
