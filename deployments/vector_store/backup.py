"""Consistent SQLite snapshots to object storage, and restoring the newest good one.

Snapshots use SQLite's online backup API (`sqlite3.Connection.backup`), never a file copy: with
the database in WAL mode the backup reads one consistent snapshot while the writer goes on, and
the copy contains exactly the transactions committed before it started (a file copy of a WAL
database can miss the WAL or tear pages).

Keys look like `{prefix}image_search-20250102T030405123456Z.sqlite3` (UTC); snapshots are
ranked by that timestamp. `restore_latest` only ever fills a missing database file: it verifies
each candidate (`PRAGMA integrity_check` and the catalog's tables), falls back to older snapshots
when the newest is damaged, and moves the good one into place without overwriting anything.

Nothing restored is trusted as it is. A snapshot dated more than `max_clock_skew_s` in the
future is skipped (a forged or mis-clocked one would otherwise always win, and always be kept
by `prune`, which does not count it among the `keep` newest). With `row_rules`, every row of
the candidate is checked before it is moved into place (`trust.quarantine_untrusted_rows`):
rows whose object key or content type is not their own are quarantined and reported.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.durable import fsync_dir
from core.errors import ObjectNotFound
from core.storage import ObjectStore, validate_key, validate_prefix
from deployments.vector_store.models import REQUIRED_TABLES
from deployments.vector_store.schema import LegacyModel, SchemaTooNew, upgrade
from deployments.vector_store.trust import QuarantineReport, RowRules, quarantine_untrusted_rows

__all__ = [
    "BackupManager",
    "RestoreReport",
    "snapshot_stamp",
    "snapshot_to_file",
    "verify_database",
]

log = logging.getLogger(__name__)

SNAPSHOT_CONTENT_TYPE = "application/vnd.sqlite3"
_STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
_NAME_RE = re.compile(r"image_search-(\d{8}T\d{12}Z)\.sqlite3")
MAX_CLOCK_SKEW_S = 300.0  # how far in the future a snapshot's timestamp may be and still count


def snapshot_to_file(db_path: Path, target_path: Path) -> None:
    """Write a consistent copy of the SQLite database `db_path` to `target_path`.

    Uses the online backup API in one step, so concurrent writers (WAL mode) are not blocked
    and the copy is a single transaction-consistent state. The copy is switched to
    `journal_mode=DELETE`, so it is one self-contained file. `target_path` is replaced.
    Raises `FileNotFoundError` when `db_path` does not exist (it is never created).
    """
    db_path, target_path = Path(db_path), Path(target_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"no database at {db_path}")
    target_path.unlink(missing_ok=True)
    # Read-only: this connection can never checkpoint or reset the writer's WAL.
    source = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        target = sqlite3.connect(target_path)
        try:
            source.backup(target)  # pages=-1: everything in one consistent step
            target.execute("PRAGMA journal_mode=DELETE")
            target.commit()
        finally:
            target.close()
    finally:
        source.close()
    _fsync_file(target_path)


def verify_database(path: Path, required_tables: Iterable[str] = REQUIRED_TABLES) -> str | None:
    """None when `path` is a sound SQLite database with the tables; else the reason it is not."""
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return f"cannot open: {exc}"
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
        if result != [("ok",)]:
            return "integrity_check: " + "; ".join(str(r[0]) for r in result[:5])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = sorted(set(required_tables) - tables)
        if missing:
            return f"missing tables: {', '.join(missing)}"
        return None
    except sqlite3.Error as exc:
        return f"unreadable: {exc}"
    finally:
        conn.close()


@dataclass(frozen=True)
class RestoreReport:
    """What `BackupManager.restore` did: the snapshot restored (None when none was), the
    newer snapshots passed over on the way, each with the reason (newest first), and the rows
    of the restored one that were quarantined (None when rows were not checked)."""

    key: str | None = None
    skipped: tuple[tuple[str, str], ...] = field(default=())
    quarantine: QuarantineReport | None = None


class BackupManager:
    """Uploads snapshots of the catalog database under `prefix`, keeps the newest `keep`."""

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        keep: int,
        required_tables: Iterable[str] = REQUIRED_TABLES,
        row_rules: RowRules | None = None,
        max_clock_skew_s: float = MAX_CLOCK_SKEW_S,
        legacy: LegacyModel | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.store = store
        self.prefix = validate_prefix(prefix)
        self.keep = keep
        self.required_tables = frozenset(required_tables)
        self.row_rules = row_rules
        self.max_clock_skew = timedelta(seconds=max_clock_skew_s)
        # Snapshots are brought to the current schema (`schema.upgrade`) before their rows are
        # checked; `legacy` names the model of vectors from before schema 2 (None: no upgrade).
        self.legacy = legacy
        self._last_stamp: datetime | None = None

    def _key_for(self, stamp: datetime) -> str:
        return validate_key(f"{self.prefix}image_search-{stamp.strftime(_STAMP_FORMAT)}.sqlite3")

    def _next_stamp(self) -> datetime:
        """Now (UTC), nudged forward so that two backups never share a key."""
        stamp = datetime.now(UTC)
        if self._last_stamp is not None and stamp <= self._last_stamp:
            stamp = self._last_stamp + timedelta(microseconds=1)
        self._last_stamp = stamp
        return stamp

    def backup(self, db_path: Path) -> str:
        """Snapshot `db_path`, upload it, prune old snapshots; returns the new key."""
        key = self._key_for(self._next_stamp())
        with tempfile.TemporaryDirectory(prefix="image-search-backup-") as tmp:
            snapshot = Path(tmp) / "snapshot.sqlite3"
            snapshot_to_file(Path(db_path), snapshot)
            self.store.put(key, snapshot.read_bytes(), SNAPSHOT_CONTENT_TYPE)
        log.info("uploaded database snapshot %s", key)
        self.prune()
        return key

    def list_snapshots(self) -> list[str]:
        """Snapshot keys directly under the prefix, newest first (by the timestamp in the key;
        future-dated ones included, see `is_future`)."""
        stamped = []
        for info in self.store.list(self.prefix):
            stamp = snapshot_stamp(info.key[len(self.prefix) :])
            if stamp is not None:
                stamped.append((stamp, info.key))
        return [key for _stamp, key in sorted(stamped, reverse=True)]

    def is_future(self, key: str, now: datetime | None = None) -> bool:
        """Whether the snapshot is dated more than the clock-skew allowance after `now`."""
        stamp = snapshot_stamp(key[len(self.prefix) :])
        return stamp is not None and stamp > (now or datetime.now(UTC)) + self.max_clock_skew

    def prune(self) -> list[str]:
        """Delete all but the newest `keep` snapshots; returns the deleted keys.

        Future-dated snapshots are neither counted nor deleted (they are logged): one must not
        push the real backups out, and deleting it is an operator's decision.
        """
        now = datetime.now(UTC)
        keys = self.list_snapshots()
        future = [key for key in keys if self.is_future(key, now)]
        if future:
            log.warning(
                "%d database snapshot(s) dated in the future are ignored: %s",
                len(future),
                ", ".join(future[:5]),
            )
        stale = [key for key in keys if key not in future][self.keep :]
        for key in stale:
            self.store.delete(key)
        if stale:
            log.info("pruned %d old database snapshot(s)", len(stale))
        return stale

    def restore_latest(self, db_path: Path) -> str | None:
        """Fill a missing `db_path` with the newest snapshot that verifies; returns its key.

        Does nothing and returns None when `db_path` already exists (an existing database is
        never overwritten) or when no snapshot is usable. A damaged snapshot is logged and the
        next older one is tried. `restore` also says which snapshots were skipped and why.
        """
        return self.restore(db_path).key

    def restore(self, db_path: Path) -> RestoreReport:
        """`restore_latest`, reporting the restored key and the snapshots skipped on the way."""
        db_path = Path(db_path)
        skipped: list[tuple[str, str]] = []
        if db_path.exists():
            return RestoreReport()
        db_path.parent.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        for key in self.list_snapshots():
            if self.is_future(key, now):
                reason = (
                    f"dated in the future (more than {self.max_clock_skew.total_seconds():g} s "
                    "ahead of this clock)"
                )
                log.warning("snapshot %s is %s; skipping it", key, reason)
                skipped.append((key, reason))
                continue
            try:
                data = self.store.get(key)
            except ObjectNotFound:
                log.warning("snapshot %s vanished while restoring; trying an older one", key)
                skipped.append((key, "vanished while restoring"))
                continue
            fd, tmp_name = tempfile.mkstemp(prefix=f".{db_path.name}.restore-", dir=db_path.parent)
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                problem = verify_database(tmp, self.required_tables)
                if problem is None and self.legacy is not None:
                    problem = _upgrade_problem(tmp, self.legacy)
                quarantine: QuarantineReport | None = None
                if problem is None and self.row_rules is not None:
                    try:
                        quarantine = quarantine_untrusted_rows(tmp, self.row_rules)
                    except sqlite3.Error as exc:
                        problem = f"rows cannot be checked: {exc}"
                if problem is not None:
                    log.warning("snapshot %s is unusable (%s); trying an older one", key, problem)
                    skipped.append((key, problem))
                    continue
                _set_aside_stale_journals(db_path)
                if not _move_into_place(tmp, db_path):
                    log.warning("a database appeared at %s meanwhile; not restoring", db_path)
                    return RestoreReport(skipped=tuple(skipped))
                log.info("restored database %s from snapshot %s", db_path, key)
                return RestoreReport(key=key, skipped=tuple(skipped), quarantine=quarantine)
            finally:
                tmp.unlink(missing_ok=True)
        return RestoreReport(skipped=tuple(skipped))


def _upgrade_problem(path: Path, legacy: LegacyModel) -> str | None:
    """Bring a downloaded snapshot to the current schema; why it cannot be, or None."""
    try:
        upgrade(path, legacy)
    except SchemaTooNew as exc:
        return f"written by a newer server (schema version {exc.version})"
    except sqlite3.Error as exc:
        return f"schema cannot be upgraded: {exc}"
    return None


def snapshot_stamp(name: str) -> datetime | None:
    """The UTC time in a snapshot's file name (`image_search-<stamp>.sqlite3`), or None."""
    match = _NAME_RE.fullmatch(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), _STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:  # shaped like a stamp but no real date (month 13, say)
        return None


def _move_into_place(tmp: Path, db_path: Path) -> bool:
    """Atomically give `tmp`'s content the name `db_path`, unless `db_path` exists."""
    try:
        os.link(tmp, db_path)  # fails with FileExistsError instead of overwriting
    except FileExistsError:
        return False
    except OSError:  # file systems without hard links: check, then rename
        if db_path.exists():
            return False
        os.replace(tmp, db_path)
    fsync_dir(db_path.parent)
    return True


def _set_aside_stale_journals(db_path: Path) -> None:
    """Rename -wal/-shm/-journal files left without their database: SQLite would replay them."""
    stamp = datetime.now(UTC).strftime(_STAMP_FORMAT)
    for suffix in ("-wal", "-shm", "-journal"):
        stale = db_path.with_name(db_path.name + suffix)
        if stale.exists():
            aside = stale.with_name(f"{stale.name}.orphaned-{stamp}")
            log.warning("moving stale %s aside to %s before restoring", stale.name, aside.name)
            os.replace(stale, aside)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
