"""The embedded default's metadata store, on SQLite (WAL): cached index pages, stored blobs
and their last use, and small shared state.

Queries are tiny and run on the event loop's thread: each one reads through an index or a
kept total (triggers keep the totals of files and bytes, per project and overall, with every
change of `blobs`), so SQLite answers in microseconds however big the cache, and the hot
paths (fresh pages, cached files) are served from memory before reaching here. `overview`
runs on a thread, on a connection of its own. Every SQLite error (a locked or full database)
surfaces as StoreUnavailable.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from cachepi.store.protocols import (
    CHANGES_KEPT,
    EXTRACTED,
    HOURS_KEPT,
    JOBS_KEPT,
    PAGES,
    UPLOAD_TIMES,
    Changes,
    NewBlob,
    Overview,
    PageRecord,
    StoreHealth,
    StoreUnavailable,
    changes_since,
)

F = TypeVar("F", bound=Callable[..., Any])


def _mapped(method: F) -> F:
    """`method` with SQLite's errors as the seam's one exception, recorded for /health."""

    @functools.wraps(method)
    def call(self: SqliteMetadata, *args: Any, **kwargs: Any) -> Any:
        try:
            result = method(self, *args, **kwargs)
        except sqlite3.Error as error:
            self.health.failed(error)
            raise StoreUnavailable(f"sqlite: {error}") from error
        if not self.health.healthy:
            self.health.ok()
        return result

    return call  # type: ignore[return-value]  # the same signature, by functools.wraps


_SCHEMA = """
CREATE TABLE IF NOT EXISTS pages (
    index_url TEXT NOT NULL,
    key TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    etag TEXT,
    last_modified TEXT,
    body BLOB,
    PRIMARY KEY (index_url, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pages_by_key ON pages (key);
CREATE INDEX IF NOT EXISTS pages_missing ON pages (fetched_at) WHERE body IS NULL;
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    last_access REAL NOT NULL,
    project TEXT,
    filename TEXT,
    added_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_last_access ON blobs (last_access);
CREATE TABLE IF NOT EXISTS wheel_metadata (
    wheel_sha256 TEXT PRIMARY KEY,
    metadata_sha256 TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS generations (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refs (
    url TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hourly (
    hour INTEGER NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (hour, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    started REAL NOT NULL,
    report BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_by_started ON jobs (started);
CREATE TABLE IF NOT EXISTS upload_times (
    url TEXT PRIMARY KEY,
    time TEXT NOT NULL
) WITHOUT ROWID;
"""
# Columns added after the first release, for caches made before them.
_ADDED_COLUMNS = {"blobs": ("project TEXT", "filename TEXT", "added_at REAL")}
# Indexes and kept totals, added after the first release too: made in one transaction, so
# the totals of a cache made before them are counted once, whoever opens it first.
_DERIVED = """
BEGIN IMMEDIATE;
CREATE INDEX IF NOT EXISTS blobs_by_added_at ON blobs (added_at);
CREATE INDEX IF NOT EXISTS blobs_by_project ON blobs (project, filename);
CREATE INDEX IF NOT EXISTS refs_by_sha256 ON refs (sha256);
CREATE INDEX IF NOT EXISTS wheel_metadata_by_metadata ON wheel_metadata (metadata_sha256);
CREATE TABLE IF NOT EXISTS changes (
    topic TEXT NOT NULL,
    generation INTEGER NOT NULL,
    key TEXT,  -- NULL: everything changed
    PRIMARY KEY (topic, generation)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blob_totals (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS project_totals (
    project TEXT PRIMARY KEY,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS project_totals_by_bytes ON project_totals (bytes);
-- Counted from the blobs only while no total is kept: the CROSS JOIN puts the empty row
-- first, so a cache counted already is not read through at every start.
INSERT INTO project_totals SELECT project, count(*), sum(size)
    FROM (SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM blob_totals)) CROSS JOIN blobs
    WHERE project IS NOT NULL GROUP BY project;
INSERT OR IGNORE INTO blob_totals SELECT 0, count(*), coalesce(sum(size), 0)
    FROM (SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM blob_totals)) CROSS JOIN blobs;
CREATE TRIGGER IF NOT EXISTS blob_added AFTER INSERT ON blobs BEGIN
    UPDATE blob_totals SET files = files + 1, bytes = bytes + new.size WHERE id = 0;
    INSERT INTO project_totals SELECT new.project, 1, new.size WHERE new.project IS NOT NULL
        ON CONFLICT (project) DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS blob_removed AFTER DELETE ON blobs BEGIN
    UPDATE blob_totals SET files = files - 1, bytes = bytes - old.size WHERE id = 0;
    UPDATE project_totals SET files = files - 1, bytes = bytes - old.size
        WHERE project = old.project;
    DELETE FROM project_totals WHERE project = old.project AND files <= 0;
END;
CREATE TRIGGER IF NOT EXISTS blob_changed AFTER UPDATE OF size, project ON blobs BEGIN
    UPDATE blob_totals SET bytes = bytes - old.size + new.size WHERE id = 0;
    INSERT INTO project_totals SELECT new.project, 1, new.size WHERE new.project IS NOT NULL
        ON CONFLICT (project) DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes;
    UPDATE project_totals SET files = files - 1, bytes = bytes - old.size
        WHERE project = old.project;
    DELETE FROM project_totals WHERE project = old.project AND files <= 0;
END;
COMMIT;
"""


class SqliteMetadata:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._db = _connect(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode keeps the database consistent on power loss; only the last
        # commits may be lost, and every row here can be rebuilt from upstream or disk.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self.health = StoreHealth()
        self._db.executescript(_SCHEMA)
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column.split()[0] not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        self._db.executescript(_DERIVED)
        # `overview`'s connection, opened when first asked for, used by one thread at a time.
        self._reader: sqlite3.Connection | None = None
        self._reading = threading.Lock()

    def close(self) -> None:
        self._db.close()
        with self._reading:
            if self._reader is not None:
                self._reader.close()

    @contextlib.contextmanager
    def _transaction(
        self,
        db: sqlite3.Connection | None = None,
        mode: Literal["IMMEDIATE", "DEFERRED"] = "IMMEDIATE",
    ) -> Iterator[sqlite3.Connection]:
        """Statements that count as one (the connections are in autocommit mode): IMMEDIATE
        for writes, so that a reader never has to become a writer and deadlock."""
        db = db or self._db
        db.execute(f"BEGIN {mode}")
        try:
            yield db
        except BaseException:
            if db.in_transaction:  # SQLite rolls back itself on some errors (a full disk)
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _announce(self, topic: str, key: str | None) -> None:
        """Log a change of `topic` (call in a transaction)."""
        (generation,) = self._db.execute(
            "INSERT INTO generations VALUES (?, 1)"
            " ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value",
            (topic,),
        ).fetchall()[0]
        self._db.execute("INSERT INTO changes VALUES (?, ?, ?)", (topic, generation, key))
        self._db.execute(
            "DELETE FROM changes WHERE topic = ? AND generation <= ?",
            (topic, generation - CHANGES_KEPT),
        )

    # -- index pages -------------------------------------------------------------------

    @_mapped
    def get_page(self, index_url: str, key: str) -> PageRecord | None:
        row = self._db.execute(
            "SELECT fetched_at, etag, last_modified, body FROM pages"
            " WHERE index_url = ? AND key = ?",
            (index_url, key),
        ).fetchone()
        return PageRecord(*row) if row else None

    @_mapped
    def put_page(self, index_url: str, key: str, record: PageRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?, ?, ?)",
            (index_url, key, record.fetched_at, record.etag, record.last_modified, record.body),
        )

    @_mapped
    def pages_of(self, key: str) -> list[tuple[str, PageRecord]]:
        """Every index's stored page for `key`, as (index URL, record)."""
        rows = self._db.execute(
            "SELECT index_url, fetched_at, etag, last_modified, body FROM pages WHERE key = ?",
            (key,),
        )
        return [(row[0], PageRecord(*row[1:])) for row in rows]

    @_mapped
    def page_keys(self, prefix: str, limit: int) -> list[str]:
        """Cached project names starting with `prefix`, a normalized name: a range of the
        index by key, since its characters (a-z, 0-9, `-`) all sort before DEL."""
        rows = self._db.execute(
            "SELECT DISTINCT key FROM pages WHERE key >= ? AND key < ? AND key != ''"
            " ORDER BY key LIMIT ?",
            (prefix, prefix + "\x7f", limit),
        )
        return [row[0] for row in rows]

    @_mapped
    def delete_pages(self, key: str | None) -> int:
        """Forget the pages of `key` (None: every page); returns how many."""
        with self._transaction() as db:
            if key is None:
                deleted = db.execute("DELETE FROM pages").rowcount
            else:
                deleted = db.execute("DELETE FROM pages WHERE key = ?", (key,)).rowcount
            self._announce(PAGES, key)
        return deleted

    @_mapped
    def delete_missing_pages(self, before: float, limit: int) -> int:
        """Forget up to `limit` 404 records fetched before `before` (through the partial
        index of 404 records: the pages themselves are not scanned)."""
        return self._db.execute(
            "DELETE FROM pages WHERE (index_url, key) IN (SELECT index_url, key FROM pages"
            " WHERE body IS NULL AND fetched_at < ? ORDER BY fetched_at LIMIT ?)",
            (before, limit),
        ).rowcount

    @_mapped
    def expire_pages(self, key: str) -> None:
        """Make one project's pages (or the list's, with LIST_KEY) stale for every index.
        Their validators stay, so the next request revalidates cheaply."""
        with self._transaction() as db:
            db.execute("UPDATE pages SET fetched_at = 0 WHERE key = ?", (key,))
            self._announce(PAGES, key)

    # -- blobs ---------------------------------------------------------------------------

    def add_blob(
        self, sha256: str, size: int, now: float, project: str | None = None,
        filename: str | None = None,
    ) -> None:  # fmt: skip
        self.add_blobs([NewBlob(sha256, size, now, project, filename)])

    @_mapped
    def add_blobs(self, blobs: Iterable[NewBlob]) -> None:
        # An upsert, not a REPLACE: that would delete the old row without telling the
        # triggers that keep the totals.
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE SET"
                " size = excluded.size, last_access = excluded.last_access,"
                " project = excluded.project, filename = excluded.filename,"
                " added_at = excluded.added_at",
                ((b.sha256, b.size, b.at, b.project, b.filename, b.at) for b in blobs),
            )

    @_mapped
    def remove_blob(self, sha256: str) -> None:
        """Forget a blob and everything that points at it or derives from it."""
        with self._transaction() as db:
            db.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
            db.execute("DELETE FROM refs WHERE sha256 = ?", (sha256,))
            paired = db.execute(
                "DELETE FROM wheel_metadata WHERE wheel_sha256 = ?1 OR metadata_sha256 = ?1"
                " RETURNING wheel_sha256",
                (sha256,),
            ).fetchall()
            for (wheel,) in paired:
                self._announce(EXTRACTED, wheel)

    @_mapped
    def touch_blobs(self, accesses: Iterable[tuple[str, float]]) -> None:
        with self._transaction() as db:
            db.executemany(
                "UPDATE blobs SET last_access = max(last_access, ?) WHERE sha256 = ?",
                ((at, sha256) for sha256, at in accesses),
            )

    @_mapped
    def blobs(self) -> dict[str, int]:
        """Every recorded blob and its size."""
        return dict(self._db.execute("SELECT sha256, size FROM blobs"))

    @_mapped
    def blob_stats(self) -> tuple[int, int]:
        """(number of blobs, total bytes)."""
        return _totals(self._db)

    @_mapped
    def overview(self, recent: int, biggest: int, jobs: int = 0) -> Overview:
        with self._reading:
            if self._reader is None:
                self._reader = _connect(self._path)
            with self._transaction(self._reader, "DEFERRED") as db:  # one snapshot
                files, size = _totals(db)
                counts = dict(db.execute("SELECT name, value FROM counters"))
                latest = db.execute(
                    "SELECT added_at, project, filename, size FROM blobs"
                    " WHERE added_at IS NOT NULL ORDER BY added_at DESC LIMIT ?",
                    (recent,),
                ).fetchall()
                ranked = db.execute(
                    "SELECT project, files, bytes FROM project_totals ORDER BY bytes DESC LIMIT ?",
                    (biggest,),
                ).fetchall()
                hourly: dict[int, dict[str, int]] = {}
                for hour, name, value in db.execute("SELECT hour, name, value FROM hourly"):
                    hourly.setdefault(hour, {})[name] = value
                reports = db.execute(
                    "SELECT report FROM jobs ORDER BY started DESC LIMIT ?", (jobs,)
                ).fetchall()
        return Overview(files, size, counts, latest, ranked, hourly, [r for (r,) in reports])

    @_mapped
    def blobs_of(self, project: str) -> list[tuple[str, str, int, float]]:
        """A project's stored files as (sha256, filename, size, last access)."""
        return self._db.execute(
            "SELECT sha256, filename, size, last_access FROM blobs WHERE project = ?"
            " ORDER BY filename",
            (project,),
        ).fetchall()

    @_mapped
    def least_recently_used(self, limit: int = 256) -> list[tuple[str, int]]:
        """The `limit` blobs used longest ago, oldest first, as (sha256, size)."""
        return self._db.execute(
            "SELECT sha256, size FROM blobs ORDER BY last_access LIMIT ?", (limit,)
        ).fetchall()

    # -- METADATA extracted from cached wheels (PEP 658 for indexes without it) ----------

    @_mapped
    def extracted_metadata(self, wheels: Iterable[str] | None = None) -> dict[str, str]:
        """wheel sha256 -> sha256 of the METADATA blob extracted from it."""
        query = "SELECT wheel_sha256, metadata_sha256 FROM wheel_metadata"
        if wheels is None:
            return dict(self._db.execute(query))
        return {
            wheel: metadata
            for sha256 in wheels
            for wheel, metadata in self._db.execute(query + " WHERE wheel_sha256 = ?", (sha256,))
        }

    @_mapped
    def put_extracted_metadata(self, wheel_sha256: str, metadata_sha256: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO wheel_metadata VALUES (?, ?)",
                (wheel_sha256, metadata_sha256),
            )
            self._announce(EXTRACTED, wheel_sha256)

    # -- upload times of files whose index gives none -----------------------------------

    @_mapped
    def upload_times(self, urls: Iterable[str] | None = None) -> dict[str, str]:
        query = "SELECT url, time FROM upload_times"
        if urls is None:
            return dict(self._db.execute(query))
        return {
            url: time
            for asked in urls
            for url, time in self._db.execute(query + " WHERE url = ?", (asked,))
        }

    @_mapped
    def put_upload_time(self, url: str, time: str) -> None:
        with self._transaction() as db:
            added = db.execute("INSERT OR IGNORE INTO upload_times VALUES (?, ?)", (url, time))
            if added.rowcount:
                self._announce(UPLOAD_TIMES, url)

    # -- changes: what one process changed that others hold in memory -----------------------

    @_mapped
    def generation(self, topic: str) -> int:
        return _generation(self._db, topic)

    @_mapped
    def changes(self, topic: str, since: int) -> Changes:
        with self._transaction(mode="DEFERRED") as db:
            generation = _generation(db, topic)
            logged = db.execute(
                "SELECT generation, key FROM changes WHERE topic = ? AND generation > ?",
                (topic, since),
            ).fetchall()
        return changes_since(since, generation, logged)

    # -- counters: traffic totals, for life and per hour, added to by every worker -----

    @_mapped
    def add_counts(self, deltas: Iterable[tuple[str, int]], hour: int) -> None:
        added = list(deltas)
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO counters VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                added,
            )
            db.executemany(
                "INSERT INTO hourly VALUES (?, ?, ?)"
                " ON CONFLICT (hour, name) DO UPDATE SET value = value + excluded.value",
                ((hour, name, value) for name, value in added),
            )
            db.execute("DELETE FROM hourly WHERE hour <= ?", (hour - HOURS_KEPT,))

    # -- warm jobs' reports ----------------------------------------------------------------

    @_mapped
    def put_job(self, job_id: str, started: float, report: bytes) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?)", (job_id, started, report))
            oldest_kept = db.execute(
                "SELECT started FROM jobs ORDER BY started DESC LIMIT 1 OFFSET ?", (JOBS_KEPT - 1,)
            ).fetchone()
            if oldest_kept is not None:
                db.execute("DELETE FROM jobs WHERE started < ?", oldest_kept)

    @_mapped
    def get_job(self, job_id: str) -> bytes | None:
        row = self._db.execute("SELECT report FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bytes(row[0]) if row else None

    # -- refs: the sha256 of files whose index gave no sha256 ----------------------------

    @_mapped
    def get_ref(self, url: str) -> str | None:
        row = self._db.execute("SELECT sha256 FROM refs WHERE url = ?", (url,)).fetchone()
        return row[0] if row else None

    @_mapped
    def put_ref(self, url: str, sha256: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO refs VALUES (?, ?)", (url, sha256))


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit: transactions are begun explicitly (`_transaction`).
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def _totals(db: sqlite3.Connection) -> tuple[int, int]:
    files, size = db.execute("SELECT files, bytes FROM blob_totals WHERE id = 0").fetchone()
    return int(files), int(size)


def _generation(db: sqlite3.Connection, topic: str) -> int:
    row = db.execute("SELECT value FROM generations WHERE name = ?", (topic,)).fetchone()
    return int(row[0]) if row else 0
