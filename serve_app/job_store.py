"""The jobs' durable records: one SQLite file (WAL, synchronous=FULL), one writer (the
JobRunner replica).

A job is committed here before its submission is answered, so an accepted job survives any
crash after it. States go queued -> running -> succeeded | failed | cancelled; a running
job whose attempt failed in a way worth retrying (or whose runner died) goes back to queued
with `run_after` set, until `max_attempts` starts were used. `(owner, idempotency_key)` is
unique: a resubmission finds the first job. Webhook deliveries are columns of the job row
(due time, attempts), so pending deliveries resume after a restart too. Finished jobs older
than the retention are purged, their idempotency keys with them.

Plain sqlite3 (the standard library): a handful of short statements, no ORM needed, and
nothing heavy loaded into the process. Every method is synchronous and holds the store's
lock; the JobRunner calls them from a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import Conflict, IdempotencyKeyReused, NotFound, Overloaded, TooManyRequests
from core.jobs import FINISHED_STATES, JobView, WebhookStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    inputs TEXT NOT NULL DEFAULT '[]',
    fingerprint TEXT NOT NULL,
    idempotency_key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    run_after REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    result_key TEXT,
    error TEXT,
    webhook_url TEXT,
    webhook_state TEXT,
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_due_at REAL,
    webhook_error TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, kind, run_after, seq);
CREATE INDEX IF NOT EXISTS jobs_webhooks ON jobs (webhook_state, webhook_due_at);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
"""


@dataclass(frozen=True)
class NewJob:
    """A validated submission, ready to be recorded."""

    id: str
    owner: str
    kind: str
    request: dict[str, Any]
    fingerprint: str
    idempotency_key: str | None = None
    webhook_url: str | None = None
    inputs: tuple[str, ...] = ()  # object keys of uploaded inputs, deleted once finished


@dataclass(frozen=True)
class JobRow:
    """A job as stored (the runner's view: request, inputs and owner included)."""

    id: str
    owner: str
    kind: str
    state: str
    request: dict[str, Any]
    inputs: tuple[str, ...]
    fingerprint: str
    idempotency_key: str | None
    attempts: int
    max_attempts: int
    created_at: float
    run_after: float
    started_at: float | None
    finished_at: float | None
    result: dict[str, Any] | None
    result_key: str | None
    error: dict[str, Any] | None
    webhook_url: str | None
    webhook_state: str | None
    webhook_attempts: int
    webhook_due_at: float | None
    webhook_error: str | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    def view(self, result_url: str | None = None, queue_position: int | None = None) -> JobView:
        """The caller's view of the job (`result_url` is made fresh by the caller: a
        presigned URL expires)."""
        webhook = None
        if self.webhook_url is not None:
            webhook = WebhookStatus(
                url=self.webhook_url,
                state=self.webhook_state or "pending",  # type: ignore[arg-type]
                attempts=self.webhook_attempts,
                last_error=self.webhook_error,
            )
        return JobView(
            id=self.id,
            kind=self.kind,  # type: ignore[arg-type]
            state=self.state,  # type: ignore[arg-type]
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            created_at=_iso(self.created_at) or "",
            started_at=_iso(self.started_at),
            finished_at=_iso(self.finished_at),
            queue_position=queue_position if self.state == "queued" else None,
            result=self.result,
            result_key=self.result_key,
            result_url=result_url,
            error=self.error,
            idempotency_key=self.idempotency_key,
            webhook=webhook,
        )


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _row(row: sqlite3.Row) -> JobRow:
    return JobRow(
        id=row["id"],
        owner=row["owner"],
        kind=row["kind"],
        state=row["state"],
        request=json.loads(row["request"]),
        inputs=tuple(json.loads(row["inputs"])),
        fingerprint=row["fingerprint"],
        idempotency_key=row["idempotency_key"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        created_at=row["created_at"],
        run_after=row["run_after"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        result=_loads(row["result"]),
        result_key=row["result_key"],
        error=_loads(row["error"]),
        webhook_url=row["webhook_url"],
        webhook_state=row["webhook_state"],
        webhook_attempts=row["webhook_attempts"],
        webhook_due_at=row["webhook_due_at"],
        webhook_error=row["webhook_error"],
    )


def job_not_found(job_id: str) -> NotFound:
    """The one answer for a job that does not exist or is another key's (no oracle)."""
    return NotFound(f"no job '{job_id}'", job_id=job_id)


class JobStore:
    """The jobs table of one SQLite file (see the module docstring)."""

    def __init__(self, path: Path, *, max_attempts: int, clock: Any = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged job survives power loss
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self.max_attempts = max_attempts
        self._clock = clock

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, *args: Any) -> JobRow | None:
        found = self._db.execute(sql, args).fetchone()
        return None if found is None else _row(found)

    # --- submission -----------------------------------------------------------------------

    def find_idempotent(self, owner: str, key: str, fingerprint: str) -> JobRow | None:
        """The job an earlier submission with this key made (None: the key is new); 409 when
        that submission's body differed."""
        with self._lock:
            row = self._one("SELECT * FROM jobs WHERE owner=? AND idempotency_key=?", owner, key)
        if row is not None and row.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                f"Idempotency-Key '{key}' was used with a different request (job {row.id}); "
                "use a new key for a new request",
                job_id=row.id,
            )
        return row

    def insert(
        self, job: NewJob, *, max_active: int, max_active_per_owner: int | None = None
    ) -> JobRow:
        """Record a queued job; 429 when its owner has `max_active_per_owner` jobs queued or
        running already, 503 when everyone together has `max_active`.

        Raises sqlite3.IntegrityError when the idempotency key was taken meanwhile.
        """
        now = self._clock()
        with self._write() as db:
            if max_active_per_owner is not None:
                (owned,) = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE owner=? AND state IN ('queued', 'running')",
                    (job.owner,),
                ).fetchone()
                if owned >= max_active_per_owner:
                    raise TooManyRequests(
                        f"this API key has {owned} jobs waiting or running, its limit "
                        f"(JOBS_MAX_QUEUED_PER_KEY={max_active_per_owner}); retry when one "
                        "has finished",
                        headers={"Retry-After": "30"},
                        limit="JOBS_MAX_QUEUED_PER_KEY",
                    )
            (active,) = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')"
            ).fetchone()
            if active >= max_active:
                raise Overloaded(
                    f"the job queue is full ({active} jobs waiting or running, JOBS_MAX_QUEUED="
                    f"{max_active}); retry later",
                    headers={"Retry-After": "30"},
                    limit="JOBS_MAX_QUEUED",
                )
            db.execute(
                "INSERT INTO jobs (id, owner, kind, state, request, inputs, fingerprint, "
                "idempotency_key, max_attempts, created_at, run_after, webhook_url, "
                "webhook_state) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.owner,
                    job.kind,
                    _dumps(job.request),
                    _dumps(list(job.inputs)),
                    job.fingerprint,
                    job.idempotency_key,
                    self.max_attempts,
                    now,
                    now,
                    job.webhook_url,
                    None if job.webhook_url is None else "pending",
                ),
            )
            row = self._one("SELECT * FROM jobs WHERE id=?", job.id)
        assert row is not None
        return row

    # --- reading --------------------------------------------------------------------------

    def get(self, job_id: str, owner: str | None = None) -> JobRow:
        """The job; 404 when there is none or (with `owner`) it is another owner's."""
        with self._lock:
            row = self._one("SELECT * FROM jobs WHERE id=?", job_id)
        if row is None or (owner is not None and row.owner != owner):
            raise job_not_found(job_id)
        return row

    def queue_position(self, row: JobRow) -> int:
        """Queued jobs of the same kind ahead of `row`."""
        with self._lock:
            (ahead,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state='queued' AND kind=? AND seq < "
                "(SELECT seq FROM jobs WHERE id=?)",
                (row.kind, row.id),
            ).fetchone()
        return int(ahead)

    def page(
        self, owner: str, *, state: str | None, limit: int, cursor: int | None
    ) -> tuple[list[JobRow], int | None]:
        """The owner's jobs newest first (optionally in one state); the next page's cursor."""
        sql = "SELECT * FROM jobs WHERE owner=?"
        args: list[Any] = [owner]
        if state is not None:
            sql += " AND state=?"
            args.append(state)
        if cursor is not None:
            sql += " AND seq < ?"
            args.append(cursor)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit + 1)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [_row(r) for r in rows], (rows[-1]["seq"] if more else None)

    def counts(self) -> dict[str, int]:
        """Jobs by state (for metrics)."""
        with self._lock:
            found = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: count for state, count in found}

    # --- running --------------------------------------------------------------------------

    def claim(self, kind: str) -> JobRow | None:
        """Start the oldest due queued job of `kind` (attempts + 1); None when there is none."""
        now = self._clock()
        with self._write() as db:
            found = db.execute(
                "SELECT id FROM jobs WHERE state='queued' AND kind=? AND run_after<=? "
                "ORDER BY seq LIMIT 1",
                (kind, now),
            ).fetchone()
            if found is None:
                return None
            db.execute(
                "UPDATE jobs SET state='running', attempts=attempts+1, started_at=? WHERE id=?",
                (now, found["id"]),
            )
            return self._one("SELECT * FROM jobs WHERE id=?", found["id"])

    def succeed(self, job_id: str, result: dict[str, Any], result_key: str | None) -> JobRow | None:
        """A running job succeeded; None when it is not running any more (cancelled)."""
        return self._finish(job_id, "succeeded", result=result, result_key=result_key)

    def fail(self, job_id: str, error: dict[str, Any]) -> JobRow | None:
        """A running job failed for good (`error`: the project's error body)."""
        return self._finish(job_id, "failed", error=error)

    def _finish(
        self,
        job_id: str,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        result_key: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> JobRow | None:
        now = self._clock()
        with self._write() as db:
            changed = db.execute(
                "UPDATE jobs SET state=?, finished_at=?, result=?, result_key=?, error=?, "
                "webhook_due_at=CASE WHEN webhook_url IS NULL THEN NULL ELSE ? END "
                "WHERE id=? AND state='running'",
                (
                    state,
                    now,
                    None if result is None else _dumps(result),
                    result_key,
                    None if error is None else _dumps(error),
                    now,
                    job_id,
                ),
            ).rowcount
            return self._one("SELECT * FROM jobs WHERE id=?", job_id) if changed else None

    def retry_later(
        self, job_id: str, error: dict[str, Any], delay_s: float, *, counted: bool = True
    ) -> JobRow | None:
        """A running job's attempt failed in a way worth retrying: queued again after
        `delay_s`, or failed with `error` when its attempts are used up. `counted=False`:
        the attempt never reached a model (its module was not ready), so it does not count."""
        now = self._clock()
        with self._write() as db:
            row = self._one("SELECT * FROM jobs WHERE id=? AND state='running'", job_id)
            if row is None:
                return None
            if not counted:
                db.execute(
                    "UPDATE jobs SET state='queued', run_after=?, attempts=attempts-1 WHERE id=?",
                    (now + delay_s, job_id),
                )
            elif row.attempts >= row.max_attempts:
                db.execute(
                    "UPDATE jobs SET state='failed', finished_at=?, error=?, "
                    "webhook_due_at=CASE WHEN webhook_url IS NULL THEN NULL ELSE ? END "
                    "WHERE id=?",
                    (now, _dumps(_gave_up(error, row.attempts)), now, job_id),
                )
            else:
                db.execute(
                    "UPDATE jobs SET state='queued', run_after=?, error=? WHERE id=?",
                    (now + delay_s, _dumps(error), job_id),
                )
            return self._one("SELECT * FROM jobs WHERE id=?", job_id)

    def cancel(self, job_id: str, owner: str | None = None) -> tuple[JobRow, bool]:
        """Cancel a queued or running job; (the job, whether it was running). 404 as `get`;
        409 when it has finished already."""
        now = self._clock()
        with self._write() as db:
            row = self._one("SELECT * FROM jobs WHERE id=?", job_id)
            if row is None or (owner is not None and row.owner != owner):
                raise job_not_found(job_id)
            if row.finished:
                raise Conflict(
                    f"job '{job_id}' has already {row.state}; only a queued or running job "
                    "can be cancelled",
                    job_id=job_id,
                    state=row.state,
                )
            db.execute(
                "UPDATE jobs SET state='cancelled', finished_at=?, "
                "webhook_due_at=CASE WHEN webhook_url IS NULL THEN NULL ELSE ? END WHERE id=?",
                (now, now, job_id),
            )
            updated = self._one("SELECT * FROM jobs WHERE id=?", job_id)
        assert updated is not None
        return updated, row.state == "running"

    def recover(self) -> list[JobRow]:
        """At start: jobs left running by a runner that died are queued again (or failed,
        when that was their last attempt). Answers the jobs that failed so."""
        now = self._clock()
        with self._write() as db:
            rows = [
                _row(r) for r in db.execute("SELECT * FROM jobs WHERE state='running'").fetchall()
            ]
            failed = []
            for row in rows:
                if row.attempts >= row.max_attempts:
                    error = _gave_up(
                        {
                            "code": "job_interrupted",
                            "message": "the job runner stopped during the attempt",
                        },
                        row.attempts,
                    )
                    db.execute(
                        "UPDATE jobs SET state='failed', finished_at=?, error=?, "
                        "webhook_due_at=CASE WHEN webhook_url IS NULL THEN NULL ELSE ? END "
                        "WHERE id=?",
                        (now, _dumps(error), now, row.id),
                    )
                    failed.append(row)
                else:
                    db.execute(
                        "UPDATE jobs SET state='queued', run_after=? WHERE id=?", (now, row.id)
                    )
        return failed

    # --- webhooks -------------------------------------------------------------------------

    def due_webhooks(self, limit: int) -> list[JobRow]:
        """Finished jobs whose webhook delivery is due now."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE webhook_state='pending' AND webhook_due_at<=? "
                "ORDER BY webhook_due_at LIMIT ?",
                (self._clock(), limit),
            ).fetchall()
        return [_row(r) for r in rows]

    def webhook_delivered(self, job_id: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET webhook_state='delivered', webhook_attempts=webhook_attempts+1, "
                "webhook_due_at=NULL, webhook_error=NULL WHERE id=?",
                (job_id,),
            )

    def webhook_failed(self, job_id: str, error: str, retry_in_s: float | None) -> None:
        """One delivery attempt failed: try again in `retry_in_s`, or give up (None)."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET webhook_attempts=webhook_attempts+1, webhook_error=?, "
                "webhook_state=?, webhook_due_at=? WHERE id=?",
                (
                    error[:500],
                    "failed" if retry_in_s is None else "pending",
                    None if retry_in_s is None else self._clock() + retry_in_s,
                    job_id,
                ),
            )

    # --- retention ------------------------------------------------------------------------

    def purge(self, retention_s: float) -> list[JobRow]:
        """Delete finished jobs older than `retention_s` whose webhook is not pending (their
        idempotency keys go with them); answers what was deleted."""
        cutoff = self._clock() - retention_s
        with self._write() as db:
            rows = [
                _row(r)
                for r in db.execute(
                    "SELECT * FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') "
                    "AND finished_at < ? AND (webhook_state IS NULL OR webhook_state != 'pending')",
                    (cutoff,),
                ).fetchall()
            ]
            db.executemany("DELETE FROM jobs WHERE id=?", [(row.id,) for row in rows])
        return rows


def _gave_up(error: dict[str, Any], attempts: int) -> dict[str, Any]:
    message = error.get("message", "the job failed")
    return {**error, "message": f"{message} (gave up after {attempts} attempts)"}
