"""The storage seams: what the caches need from a backend, and nothing more.

Three protocols, each implemented completely by the embedded default (a local directory,
SQLite, lock files) and by the cluster backends (S3, Redis): a blob store, a metadata store,
and locks. The caches never ask which backend they hold. Every backend failure surfaces as
one exception, `StoreUnavailable`; callers treat it as "nothing stored" and carry on.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol

import msgspec

from cachepi.types import Source

log = logging.getLogger(__name__)

# The project list is stored beside the pages under a key no project name can have.
LIST_KEY = ""
# Topics of `MetadataStore.changes`: what processes hold in memory and drop when told.
PAGES = "pages"  # keys of pages expired or deleted
EXTRACTED = "extracted"  # sha256s of wheels whose pair of extracted METADATA came or went
UPLOAD_TIMES = "upload-times"  # URLs of files whose upload time was recorded
# Changes kept per topic: a process that missed more (it checks every second) drops all.
CHANGES_KEPT = 10_000
# Hours whose traffic totals are kept, besides the lifetime ones (the dashboard charts a day).
HOURS_KEPT = 48
# Warm jobs' reports kept: the latest started.
JOBS_KEPT = 50


class StoreUnavailable(Exception):
    """A store did not answer or failed; the message is one line."""


@dataclass
class StoreHealth:
    """How the latest request to a store went, for /health."""

    healthy: bool = True
    last_error: str | None = None

    def ok(self) -> None:
        if not self.healthy:
            log.info("the store answers again")
        self.healthy = True

    def failed(self, error: BaseException) -> None:
        message = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        if self.healthy:
            log.warning("the store failed: %s", message)
        self.healthy, self.last_error = False, message


@dataclass(frozen=True)
class Changes:
    """What changed in a topic after the generation a process last saw."""

    generation: int  # the topic's generation now
    keys: frozenset[str] | None  # None: anything may have (everything, or too much to tell)


def changes_since(since: int, generation: int, logged: Sequence[tuple[int, str | None]]) -> Changes:
    """The Changes a log tells of: `logged` holds (generation, key) for generations after
    `since` up to `generation`, a key None where everything changed."""
    if generation == since:
        return Changes(generation, frozenset())
    keys = {key for _, key in logged}
    complete = generation > since and len(logged) == generation - since and None not in keys
    return Changes(generation, frozenset(k for k in keys if k is not None) if complete else None)


@dataclass(frozen=True)
class Overview:
    """What the dashboard, /metrics and `cachepi stats` show of a cache, read at once."""

    files: int
    bytes: int
    counts: Mapping[str, int]  # lifetime traffic totals, as flushed by every process
    recent: Sequence[tuple[float, str, str, int]]  # (added at, project, filename, size)
    biggest: Sequence[tuple[str, int, int]]  # (project, files, bytes), the biggest first
    # hour (since the epoch) -> the traffic totals added in it, for the HOURS_KEPT latest
    hourly: Mapping[int, Mapping[str, int]] = field(default_factory=dict)
    # the latest warm jobs' reports, the latest started first (`bytes` is a field here)
    jobs: Sequence[builtins.bytes] = ()


class NewBlob(NamedTuple):
    sha256: str
    size: int
    at: float  # when it was stored (its first use)
    project: str | None = None
    filename: str | None = None


class PageRecord(msgspec.Struct, frozen=True):
    """An upstream page as last fetched: `body` is None when the upstream answered 404."""

    fetched_at: float
    etag: str | None
    last_modified: str | None
    body: bytes | None


@dataclass(frozen=True)
class Outcome:
    """What the holder of a lock did, as those who waited for it learn it. A download's
    holder that succeeded says what it verified: the sha256 and size of the whole file, which
    a follower's own copy must equal before its clients get their last byte."""

    ok: bool
    reason: str = ""
    sha256: str | None = None
    size: int | None = None

    def encode(self) -> str:
        if not self.ok:
            return f"failed: {self.reason}"
        if self.sha256 is None or self.size is None:
            return "ok"
        return f"ok {self.sha256} {self.size}"

    @classmethod
    def decode(cls, text: str) -> Outcome | None:
        """None: the holder said nothing (it died, or its word was lost)."""
        if text == "ok":
            return DONE
        if text.startswith("ok "):
            match = _VERIFIED_RE.fullmatch(text)
            if match is None:
                return cls(False, "the holder's outcome is unreadable")
            return cls(True, sha256=match[1], size=int(match[2]))
        if text.startswith("failed: "):
            return cls(False, text.removeprefix("failed: "))
        return None

    @property
    def verified(self) -> tuple[str, int] | None:
        """(sha256, size) the holder vouches for, if it said."""
        if not self.ok or self.sha256 is None or self.size is None:
            return None
        return self.sha256, self.size


_VERIFIED_RE = re.compile(r"ok ([0-9a-f]{64}) ([0-9]{1,18})")
DONE = Outcome(True)


class Progress(Protocol):
    """A download in progress, as a lock holder publishes it to followers elsewhere."""

    @property
    def written(self) -> int: ...

    @property
    def done(self) -> bool: ...

    async def wait_changed(self) -> None: ...


class StoredBlob(Protocol):
    """A stored, verified file, held open so that eviction cannot pull it away between
    lookup and use. The caller closes it."""

    @property
    def sha256(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def file(self) -> BinaryIO | None:
        """The open file when the bytes are on this machine (to send with sendfile)."""

    def chunks(self, start: int, stop: int) -> AsyncIterator[bytes]:
        """The bytes [start, stop)."""

    def seekable(self) -> AbstractAsyncContextManager[BinaryIO]:
        """The bytes as a seekable file (to read a zip's members), on this machine."""

    async def redirect_url(self) -> str | None:
        """A URL a client may fetch the bytes from directly, when the store offers one."""

    def close(self) -> None: ...


class Followed:
    """Bytes of a download another process (or node) ran or runs, as a Source for a follower:
    entering gives (length, chunks) like an upstream's body. Besides:

    - `file`: a descriptor of a file on this machine that holds the same bytes at the same
      offsets (it may still be growing), when there is one: the follower's readers read it
      instead of a copy. Valid until the source is left; dup() it to keep it.
    - `vouched`: once the chunks ended, the (sha256, size) the holder verified, or that a
      stored blob has; None when nobody vouched for the bytes. A follower completes its
      copy only when its own hash and length equal it.
    """

    def __init__(
        self, opened: Source, file: int | None = None, vouched: tuple[str, int] | None = None
    ) -> None:
        self._opened = opened
        self.file = file
        self.vouched = vouched

    async def __aenter__(self) -> tuple[int | None, AsyncIterator[bytes]]:
        return await self._opened.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._opened.__aexit__(*exc_info)


def read_back(blob: StoredBlob) -> Followed:
    """A stored blob as a Source, like an upstream's body (a copy of it is verified again;
    when it is a file on this machine it is read in place), closed after."""

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        try:
            yield blob.size, blob.chunks(0, blob.size)
        finally:
            blob.close()

    file = blob.file.fileno() if blob.file is not None else None
    return Followed(opened(), file, (blob.sha256, blob.size))


class BlobStore(Protocol):
    """Verified files by sha256. New content is written to a temp file on this machine,
    synced, then `put`: a stored blob is whole or absent, also after a crash."""

    @property
    def kind(self) -> str:
        """What it is, for /health and logs."""

    @property
    def health(self) -> StoreHealth: ...

    @property
    def lists_cheaply(self) -> bool:
        """Whether listing every blob is cheap enough to reconcile records at each start."""

    @property
    def temp_dir(self) -> Path:
        """Where unfinished work lives on this machine: temp and part files, lock files."""

    def new_temp(self) -> tuple[int, Path]:
        """A new, empty temp file: (open fd for writing, its path)."""

    def discard(self, temp: Path) -> None: ...

    def clear_temp(self) -> int:
        """Remove leftovers of downloads a previous process did not finish (at start, as
        the only process); returns how many."""

    async def open(self, sha256: str) -> StoredBlob | None: ...

    async def contains(self, sha256: str) -> bool: ...

    async def sync(self, fd: int) -> None:
        """Make bytes written through `fd` durable before they are `put`."""

    async def put(self, fd: int, temp: Path, sha256: str) -> None:
        """Make the verified, synced bytes in `temp` the blob `sha256` (if it is there
        already, the same bytes stay)."""

    async def remove(self, sha256: str) -> None: ...

    def listing(self) -> AsyncIterator[tuple[str, int]]:
        """Every stored blob as (sha256, size)."""


class MetadataStore(Protocol):
    """Index pages, blob records with their last use, and small shared state. The methods
    a server calls while it serves read through indexes or kept totals, whatever the size
    of the cache (`blobs`, `extracted_metadata()` and `delete_pages(None)` read or clear
    everything: for startup and maintenance); `overview` may be called from a thread of its
    own while the others go on."""

    @property
    def kind(self) -> str:
        """What it is, for /health and logs."""

    @property
    def health(self) -> StoreHealth: ...

    def close(self) -> None: ...

    # -- index pages
    def get_page(self, index_url: str, key: str) -> PageRecord | None: ...
    def put_page(self, index_url: str, key: str, record: PageRecord) -> None: ...
    def pages_of(self, key: str) -> list[tuple[str, PageRecord]]:
        """Every index's stored page for `key`, as (index URL, record)."""

    def page_keys(self, prefix: str, limit: int) -> list[str]:
        """Stored project names starting with `prefix` (a normalized name)."""

    def delete_pages(self, key: str | None) -> int:
        """Forget the pages of `key` (None: every page), a change of PAGES; returns how
        many."""

    def expire_pages(self, key: str) -> None:
        """Make `key`'s pages stale for every index, keeping their validators; a change of
        PAGES."""

    def delete_missing_pages(self, before: float, limit: int) -> int:
        """Forget up to `limit` records of upstream 404s (body None) fetched before `before`,
        oldest first; returns how many. Past its negative TTL such a record is refetched
        anyway, and one is left behind by every name ever asked for."""

    # -- blobs
    def add_blob(
        self, sha256: str, size: int, now: float, project: str | None = None,
        filename: str | None = None,
    ) -> None:  # fmt: skip
        """`add_blobs` of one."""

    def add_blobs(self, blobs: Iterable[NewBlob]) -> None:
        """Record stored blobs (a blob recorded already is recorded anew), in one go."""

    def remove_blob(self, sha256: str) -> None:
        """Forget a blob and everything that points at it or derives from it (a pair of
        extracted METADATA: a change of EXTRACTED)."""

    def touch_blobs(self, accesses: Iterable[tuple[str, float]]) -> None: ...
    def blobs(self) -> dict[str, int]:
        """Every recorded blob and its size."""

    def blob_stats(self) -> tuple[int, int]:
        """(number of blobs, total bytes)."""

    def overview(self, recent: int, biggest: int, jobs: int = 0) -> Overview:
        """The totals, the `recent` latest stored files, the `biggest` projects and the
        `jobs` latest warm jobs; safe to call from another thread (while this one goes on
        using the store)."""

    def blobs_of(self, project: str) -> list[tuple[str, str, int, float]]:
        """A project's stored files as (sha256, filename, size, last access)."""

    def least_recently_used(self, limit: int = 256) -> list[tuple[str, int]]:
        """The `limit` blobs used longest ago, oldest first, as (sha256, size)."""

    # -- METADATA extracted from wheels (cached, or read in ranges)
    def extracted_metadata(self, wheels: Iterable[str] | None = None) -> dict[str, str]:
        """wheel sha256 -> sha256 of the METADATA blob extracted from it ("" when it holds
        none readable), for `wheels` (None: every wheel)."""

    def put_extracted_metadata(self, wheel_sha256: str, metadata_sha256: str) -> None:
        """A change of EXTRACTED."""

    # -- upload times of files whose index gives none (the upstream's Last-Modified)
    def upload_times(self, urls: Iterable[str] | None = None) -> dict[str, str]:
        """File URL -> its upload time (ISO 8601, UTC), for `urls` (None: every URL)."""

    def put_upload_time(self, url: str, time: str) -> None:
        """Record `url`'s upload time, unless it has one (the first one stays): then a
        change of UPLOAD_TIMES."""

    # -- changes: what one process changed that others may hold in memory, by topic
    def generation(self, topic: str) -> int:
        """How many changes `topic` has seen."""

    def changes(self, topic: str, since: int) -> Changes:
        """What changed in `topic` after generation `since`."""

    # -- traffic totals, added to by every process (read in `overview`)
    def add_counts(self, deltas: Iterable[tuple[str, int]], hour: int) -> None:
        """Add to the lifetime totals and to those of `hour` (since the epoch); forget the
        hours HOURS_KEPT and more before it."""

    # -- warm jobs' reports, for whichever process (or node) is asked about them
    def put_job(self, job_id: str, started: float, report: bytes) -> None:
        """Keep a job's report (anew); forget all but the JOBS_KEPT latest started."""

    def get_job(self, job_id: str) -> bytes | None: ...

    # -- refs: the sha256 of files whose index gave none
    def get_ref(self, url: str) -> str | None: ...
    def put_ref(self, url: str, sha256: str) -> None: ...


# Opens the upstream's bytes of a file from an offset on (to take over a download).
Origin = Callable[[int], Source]
# How a follower finds the file a holder stored (None: not there).
StoredLookup = Callable[[], Awaitable["StoredBlob | None"]]


class Lock(Protocol):
    """One key's lock across processes (or nodes): one holder at a time does the work
    (downloads a file, refreshes a page); the others wait for it or follow it.

    The contract, the same for every backend: `try_acquire` never waits; the holder
    `release`s with an Outcome that waiters read; a holder that dies loses the lock (so
    a waiter reads None and may take over); work done under a lock is stored only while
    `storable` (the lock is still ours where a lock can be lost).
    """

    @property
    def acquired(self) -> bool: ...

    @property
    def part(self) -> Path:
        """Where the holder writes the download it runs under this lock (on this machine):
        a name of its own, that no other holding of the lock ever has, so a follower never
        mistakes another download's part file for this one's."""

    def try_acquire(self) -> bool: ...

    @property
    def storable(self) -> bool: ...

    async def wait_released(self) -> Outcome | None:
        """Wait until the holder lets go; its outcome (None: it died or said nothing)."""

    def release(self, outcome: Outcome | None = None) -> None: ...

    def close(self) -> None: ...

    def reserve(self, size: int) -> None:
        """Held: count `size` bytes for the download under this lock among those in
        progress (`Locks.in_progress`) until it is released; call under `Locks.exclusive`."""

    async def publish(self, progress: Progress) -> None:
        """While the holder downloads into `part`, make its bytes visible to followers that
        cannot read that file; returns when the download is done."""

    async def follow(
        self, size: int | None, stored: StoredLookup, origin: Origin
    ) -> Followed | None:
        """The holder's download as it progresses, or as stored once it ended; None when
        the holder died (or ended without storing the file) before anything was relayed and
        the lock is now ours: download it then. DownloadFailed, raised here or by the
        source, when the holder failed. The source's `vouched` is what the holder said it
        verified (or the stored blob's), None if it said nothing."""


class Locks(Protocol):
    def lock(self, key: str) -> Lock:
        """The lock for any key (a URL, a page)."""

    def exclusive(self) -> AbstractAsyncContextManager[bool]:
        """The store-wide lock under which one process (or node) at a time counts, evicts,
        adds and removes blobs. Yields True once held, False if it could not be had within
        a few seconds (another holder kept it, or the store is down)."""

    def in_progress(self, but: Lock | None = None) -> int:
        """Bytes that downloads in progress under any process's (node's) lock, but `but`,
        reserved or already hold in their part files; call under `exclusive`."""

    async def remove_abandoned(self, older_than: float) -> int:
        """Remove what unfinished work of dead processes left: part files, lock files,
        published pieces untouched for `older_than` seconds; returns how many."""

    def sweep(self) -> int:
        """Remove this machine's part and lock files that no living process holds (a
        killed worker's), cheaply, while others work; returns how many."""
