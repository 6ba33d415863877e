"""The embedded default's metadata store, on SQLite (WAL): cached index pages, stored blobs
and their last use, and small shared state.

Queries are tiny and run on the event loop's thread: SQLite answers them in microseconds, and
the hot paths (fresh pages, cached files) are served from memory before reaching here. Every
SQLite error (a locked or full database) surfaces as StoreUnavailable.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from cachepi.store.protocols import PageRecord, StoreHealth, StoreUnavailable

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
"""
# Columns added after the first release, for caches made before them.
_ADDED_COLUMNS = {"blobs": ("project TEXT", "filename TEXT", "added_at REAL")}


class SqliteMetadata:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode keeps the database consistent on power loss; only the last
        # commits may be lost, and every row here can be rebuilt from upstream or disk.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self.health = StoreHealth()
        self._db.executescript(_SCHEMA)
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column.split()[0] not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")

    def close(self) -> None:
        self._db.close()

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
        """Cached project names starting with `prefix`, a normalized name (only a-z, 0-9
        and `-`, so nothing in it is special to LIKE)."""
        rows = self._db.execute(
            "SELECT DISTINCT key FROM pages WHERE key LIKE ? AND key != '' ORDER BY key LIMIT ?",
            (prefix + "%", limit),
        )
        return [row[0] for row in rows]

    @_mapped
    def delete_pages(self, key: str | None) -> int:
        """Forget the pages of `key` (None: every page); returns how many."""
        if key is None:
            return self._db.execute("DELETE FROM pages").rowcount
        return self._db.execute("DELETE FROM pages WHERE key = ?", (key,)).rowcount

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
        self._db.execute("UPDATE pages SET fetched_at = 0 WHERE key = ?", (key,))

    # -- blobs ---------------------------------------------------------------------------

    @_mapped
    def add_blob(
        self, sha256: str, size: int, now: float, project: str | None = None,
        filename: str | None = None,
    ) -> None:  # fmt: skip
        self._db.execute(
            "INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?, ?, ?)",
            (sha256, size, now, project, filename, now),
        )

    @_mapped
    def remove_blob(self, sha256: str) -> None:
        """Forget a blob and everything that points at it or derives from it."""
        with self._db:
            self._db.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
            self._db.execute("DELETE FROM refs WHERE sha256 = ?", (sha256,))
            self._db.execute(
                "DELETE FROM wheel_metadata WHERE wheel_sha256 = ?1 OR metadata_sha256 = ?1",
                (sha256,),
            )

    @_mapped
    def touch_blobs(self, accesses: Iterable[tuple[str, float]]) -> None:
        with self._db:
            self._db.executemany(
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
        row = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM blobs").fetchone()
        return row[0], row[1]

    @_mapped
    def recent_blobs(self, limit: int) -> list[tuple[float, str, str, int]]:
        """The latest stored files as (added at, project, filename, size), newest first."""
        return self._db.execute(
            "SELECT added_at, project, filename, size FROM blobs WHERE added_at IS NOT NULL"
            " ORDER BY added_at DESC LIMIT ?",
            (limit,),
        ).fetchall()

    @_mapped
    def biggest_projects(self, limit: int) -> list[tuple[str, int, int]]:
        """(project, files, bytes) of the projects taking the most space."""
        return self._db.execute(
            "SELECT project, count(*), sum(size) FROM blobs WHERE project IS NOT NULL"
            " GROUP BY project ORDER BY sum(size) DESC LIMIT ?",
            (limit,),
        ).fetchall()

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
    def extracted_metadata(self) -> dict[str, str]:
        """wheel sha256 -> sha256 of the METADATA blob extracted from it."""
        return dict(self._db.execute("SELECT wheel_sha256, metadata_sha256 FROM wheel_metadata"))

    @_mapped
    def put_extracted_metadata(self, wheel_sha256: str, metadata_sha256: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO wheel_metadata VALUES (?, ?)", (wheel_sha256, metadata_sha256)
        )

    # -- generations: counters that tell other worker processes to reload something ------

    @_mapped
    def bump(self, name: str) -> None:
        self._db.execute(
            "INSERT INTO generations VALUES (?, 1)"
            " ON CONFLICT (name) DO UPDATE SET value = value + 1",
            (name,),
        )

    @_mapped
    def generation(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM generations WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    # -- counters: lifetime traffic totals, added to by every worker --------------------

    @_mapped
    def add_counts(self, deltas: Iterable[tuple[str, int]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT INTO counters VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                deltas,
            )

    @_mapped
    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT name, value FROM counters"))

    # -- refs: the sha256 of files whose index gave no sha256 ----------------------------

    @_mapped
    def get_ref(self, url: str) -> str | None:
        row = self._db.execute("SELECT sha256 FROM refs WHERE url = ?", (url,)).fetchone()
        return row[0] if row else None

    @_mapped
    def put_ref(self, url: str, sha256: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO refs VALUES (?, ?)", (url, sha256))
