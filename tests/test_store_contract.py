"""One contract for every storage backend (store/protocols.py), run against each:

- local: DirectoryBlobs + SqliteMetadata + FileLocks in a temp directory;
- cluster (slow): S3Blobs on SeaweedFS + RedisMetadata + RedisLocks, two nodes sharing a
  bucket prefix and a redis-server (the servers come from tests/cluster.py's fixtures).

"Another process" is a second FileLocks on the same directory locally, another node (its own
local disk, its own Redis connection) in the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from cachepi.filecache.transfer import write_all
from cachepi.store import redis_metadata, sqlite
from cachepi.store.breaker import Breaker
from cachepi.store.directory import DirectoryBlobs
from cachepi.store.flock import FileLocks
from cachepi.store.protocols import (
    DONE,
    EXTRACTED,
    HOURS_KEPT,
    JOBS_KEPT,
    LIST_KEY,
    PAGES,
    UPLOAD_TIMES,
    BlobStore,
    Changes,
    Lock,
    Locks,
    MetadataStore,
    NewBlob,
    Outcome,
    PageRecord,
    StoredBlob,
)
from cachepi.store.redis_locks import PIECE_BYTES, RedisLocks
from cachepi.store.redis_metadata import RedisMetadata, connect
from cachepi.store.s3 import S3Blobs, s3_store
from cachepi.types import DownloadFailed
from tests.cluster import RedisServer, SeaweedFS, redis_server, seaweedfs
from tests.inprocess import local_stores

__all__ = ["redis_server", "seaweedfs"]


@dataclass
class Backend:
    kind: str
    metadata: MetadataStore
    blobs: BlobStore
    locks: Locks
    # Another process (local) or node (cluster) sharing the store.
    other_blobs: BlobStore
    other_locks: Locks


@pytest.fixture(params=["local", pytest.param("cluster", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        stores = local_stores(tmp_path)
        other = FileLocks(stores.blobs.temp_dir, tmp_path / "store.lock")
        yield Backend("local", stores.metadata, stores.blobs, stores.locks, stores.blobs, other)
        stores.close()
        return
    s3: SeaweedFS = request.getfixturevalue("seaweedfs")
    server: RedisServer = request.getfixturevalue("redis_server")
    env = s3.env(f"contract-{uuid.uuid4().hex[:10]}")
    nodes = []
    for name in ("node-a", "node-b"):
        bucket, prefix = s3_store(env["CACHEPI_STORAGE"], env["CACHEPI_S3_ENDPOINT"], env)
        blobs = S3Blobs(bucket, prefix, DirectoryBlobs(tmp_path / name))
        client = connect(server.url)
        breaker = Breaker("redis", (redis.RedisError,))
        locks = RedisLocks(client, breaker, name, blobs)
        nodes.append((RedisMetadata(client, breaker), blobs, locks))
    (metadata, blobs, locks), (other_metadata, other_blobs, other_locks) = nodes
    yield Backend("cluster", metadata, blobs, locks, other_blobs, other_locks)
    metadata.close()
    other_metadata.close()


def random_bytes(size: int, seed: str = "contract") -> bytes:
    return random.Random(seed).randbytes(size)


async def put(blobs: BlobStore, data: bytes) -> str:
    """Store `data` as the caches do: a synced temp file, put, then discarded."""
    sha256 = hashlib.sha256(data).hexdigest()
    fd, temp = blobs.new_temp()
    try:
        write_all(fd, data)
        await blobs.sync(fd)
        await blobs.put(fd, temp, sha256)
    finally:
        os.close(fd)
        blobs.discard(temp)
    return sha256


async def read(blob: StoredBlob, start: int = 0, stop: int | None = None) -> bytes:
    end = blob.size if stop is None else stop
    return b"".join([chunk async for chunk in blob.chunks(start, end)])


async def opened(blobs: BlobStore, sha256: str) -> StoredBlob:
    blob = await blobs.open(sha256)
    assert blob is not None, f"{sha256} is not stored"
    return blob


async def listed(blobs: BlobStore) -> list[tuple[str, int]]:
    return sorted([entry async for entry in blobs.listing()])


# -- BlobStore -----------------------------------------------------------------------------------


async def test_a_stored_blob_reads_back_whole_in_ranges_and_seekable(backend: Backend) -> None:
    data = random_bytes(300_000)
    sha256 = await put(backend.blobs, data)
    assert await backend.blobs.contains(sha256)
    assert list(backend.blobs.temp_dir.iterdir()) == []  # the temp file is gone
    blob = await opened(backend.blobs, sha256)
    try:
        assert (blob.sha256, blob.size) == (sha256, len(data))
        assert await read(blob) == data
        assert await read(blob, 1000, 2000) == data[1000:2000]
        assert await read(blob, len(data) - 1) == data[-1:]
        assert await read(blob, 5, 5) == b""
        async with blob.seekable() as file:
            file.seek(123)
            assert file.read(10) == data[123:133]
            file.seek(0)
            assert file.read() == data
    finally:
        blob.close()
    # Another process (node) sees it as stored.
    elsewhere = await opened(backend.other_blobs, sha256)
    assert await read(elsewhere) == data
    elsewhere.close()
    assert await listed(backend.blobs) == [(sha256, len(data))]


async def test_a_blob_that_is_not_there(backend: Backend) -> None:
    missing = "0" * 64
    assert not await backend.blobs.contains(missing)
    assert await backend.blobs.open(missing) is None
    await backend.blobs.remove(missing)  # no error
    assert await listed(backend.blobs) == []


async def test_a_removed_blob_is_gone(backend: Backend) -> None:
    kept, removed = random_bytes(1000, "kept"), random_bytes(2000, "removed")
    kept_sha, removed_sha = await put(backend.blobs, kept), await put(backend.blobs, removed)
    await backend.blobs.remove(removed_sha)
    assert not await backend.blobs.contains(removed_sha)
    assert await backend.blobs.open(removed_sha) is None
    assert await listed(backend.blobs) == [(kept_sha, len(kept))]


async def test_a_put_of_a_stored_sha256_keeps_it_and_an_open_reader_reads_on(
    backend: Backend,
) -> None:
    data = random_bytes(200_000)
    sha256 = await put(backend.blobs, data)
    reader = await opened(backend.blobs, sha256)
    assert await put(backend.other_blobs, data) == sha256  # the same file, by another way
    try:
        assert await read(reader) == data
    finally:
        reader.close()
    assert await read(await opened(backend.blobs, sha256)) == data
    assert await listed(backend.blobs) == [(sha256, len(data))]


# -- MetadataStore: pages ------------------------------------------------------------------------

A, B = "https://a.test/simple/", "https://b.test/simple/"


def record(at: float, body: bytes | None = b"page", etag: str | None = '"e1"') -> PageRecord:
    return PageRecord(at, etag, "Mon, 01 Jan 2024 00:00:00 GMT", body)


def test_pages_are_kept_per_index_and_key(backend: Backend) -> None:
    store = backend.metadata
    assert store.get_page(A, "lib") is None
    store.put_page(A, "lib", record(10.0))
    store.put_page(B, "lib", record(11.0, body=None, etag=None))  # B said 404
    store.put_page(A, "libfoo", record(12.0))
    store.put_page(A, LIST_KEY, record(13.0, b"names"))
    assert store.get_page(A, "lib") == record(10.0)
    assert store.get_page(B, "lib") == record(11.0, body=None, etag=None)
    assert sorted(store.pages_of("lib")) == [
        (A, record(10.0)), (B, record(11.0, body=None, etag=None)),
    ]  # fmt: skip
    assert store.page_keys("lib", 10) == ["lib", "libfoo"]  # never the project list's key
    assert store.page_keys("libf", 10) == ["libfoo"]
    assert store.page_keys("lib", 1) == ["lib"]
    store.put_page(A, "lib", record(20.0, b"newer", '"e2"'))  # replaces
    assert store.get_page(A, "lib") == record(20.0, b"newer", '"e2"')


def test_expired_pages_keep_their_validators_and_deleted_pages_are_gone(
    backend: Backend,
) -> None:
    store = backend.metadata
    for index in (A, B):
        store.put_page(index, "lib", record(10.0))
    store.put_page(A, "other", record(10.0))
    store.expire_pages("lib")
    assert {index: page.fetched_at for index, page in store.pages_of("lib")} == {A: 0, B: 0}
    assert store.get_page(A, "lib") == record(0.0)  # etag, last-modified and body stay
    assert store.get_page(A, "other") == record(10.0)
    assert store.delete_pages("lib") == 2
    assert store.pages_of("lib") == [] and store.page_keys("l", 10) == []
    assert store.delete_pages(None) == 1
    assert store.get_page(A, "other") is None


def test_stale_404_records_are_deleted_oldest_first_and_nothing_else(backend: Backend) -> None:
    """Every name ever asked for left a 404 record behind, forever."""
    store = backend.metadata

    def missing(at: float) -> PageRecord:
        return record(at, body=None, etag=None)

    store.put_page(A, "gone", missing(10.0))
    store.put_page(B, "gone", missing(20.0))
    store.put_page(A, LIST_KEY, missing(12.0))
    store.put_page(A, "kept", record(5.0))  # a page, however old, stays
    store.put_page(A, "back", missing(8.0))
    store.put_page(A, "back", record(30.0))  # the upstream has it now
    store.put_page(A, "fresh", missing(100.0))
    store.put_page(A, "expired", missing(50.0))
    store.expire_pages("expired")  # fetched at 0 now: the oldest
    store.put_page(A, "purged", missing(7.0))
    store.delete_pages("purged")
    assert store.delete_missing_pages(15.0, 2) == 2  # oldest first
    assert store.get_page(A, "expired") is None and store.get_page(A, "gone") is None
    assert store.get_page(B, "gone") == missing(20.0)
    assert store.delete_missing_pages(15.0, 10) == 1  # the project list's
    assert store.get_page(A, LIST_KEY) is None
    assert store.delete_missing_pages(15.0, 10) == 0
    assert store.page_keys("", 10) == ["back", "fresh", "gone", "kept"]
    assert store.delete_missing_pages(1000.0, 10) == 2
    assert store.page_keys("", 10) == ["back", "kept"]
    assert store.get_page(A, "kept") == record(5.0)
    assert store.get_page(A, "back") == record(30.0)


# -- MetadataStore: blobs ------------------------------------------------------------------------

SHA = {name: hashlib.sha256(name.encode()).hexdigest() for name in ("a", "b", "c", "m")}


def test_blob_records_keep_totals_and_the_order_of_last_use(backend: Backend) -> None:
    store = backend.metadata
    assert store.blob_stats() == (0, 0) and store.least_recently_used() == []
    store.add_blob(SHA["a"], 100, 1.0, "lib", "lib-1.0.tar.gz")
    store.add_blob(SHA["b"], 200, 2.0, "lib", "lib-2.0.tar.gz")
    store.add_blob(SHA["c"], 400, 3.0, "big", "big-1.0.tar.gz")
    store.add_blob(SHA["c"], 400, 3.0, "big", "big-1.0.tar.gz")  # again: counted once
    assert store.blob_stats() == (3, 700)
    assert store.blobs() == {SHA["a"]: 100, SHA["b"]: 200, SHA["c"]: 400}
    assert store.least_recently_used() == [(SHA["a"], 100), (SHA["b"], 200), (SHA["c"], 400)]
    store.touch_blobs([(SHA["a"], 5.0), (SHA["b"], 0.5)])  # a touch never moves back in time
    store.touch_blobs([(SHA["m"], 6.0)])  # nor records a blob nobody added
    assert SHA["m"] not in store.blobs() and store.blob_stats() == (3, 700)
    assert store.least_recently_used(2) == [(SHA["b"], 200), (SHA["c"], 400)]
    assert store.blobs_of("lib") == [
        (SHA["a"], "lib-1.0.tar.gz", 100, 5.0), (SHA["b"], "lib-2.0.tar.gz", 200, 2.0),
    ]  # fmt: skip
    overview = store.overview(2, 5)
    assert (overview.files, overview.bytes) == (3, 700)
    assert overview.recent == [
        (3.0, "big", "big-1.0.tar.gz", 400), (2.0, "lib", "lib-2.0.tar.gz", 200),
    ]  # newest added first, whatever was used since  # fmt: skip
    assert overview.biggest == [("big", 1, 400), ("lib", 2, 300)]
    assert store.overview(0, 1).recent == [] and store.overview(0, 1).biggest == [("big", 1, 400)]
    store.remove_blob(SHA["c"])
    store.remove_blob(SHA["m"])  # never added: nothing changes
    assert store.blob_stats() == (2, 300)
    assert store.blobs() == {SHA["a"]: 100, SHA["b"]: 200}
    assert store.least_recently_used() == [(SHA["b"], 200), (SHA["a"], 100)]
    assert store.blobs_of("big") == [] and store.overview(5, 5).biggest == [("lib", 2, 300)]


def test_blobs_added_in_bulk_keep_the_totals_also_when_added_again(backend: Backend) -> None:
    store = backend.metadata
    store.add_blobs(
        NewBlob(SHA[name], size, 1.0, project, f"{project}-{name}.whl")
        for name, size, project in (("a", 100, "lib"), ("b", 200, "lib"), ("c", 400, None))
    )
    store.add_blobs([NewBlob(SHA["a"], 150, 2.0, "other", "other-a.whl")])  # moved, grown
    store.add_blobs([])
    overview = store.overview(10, 10)
    assert (overview.files, overview.bytes) == (3, 750) == store.blob_stats()
    assert overview.biggest == [("lib", 1, 200), ("other", 1, 150)]  # no project: not ranked
    assert overview.recent[0] == (2.0, "other", "other-a.whl", 150)
    assert store.blobs_of("other") == [(SHA["a"], "other-a.whl", 150, 2.0)]


@pytest.mark.slow
def test_redis_ranks_the_projects_an_older_version_sized_in_a_hash(
    redis_server: RedisServer,
) -> None:
    client = connect(redis_server.url)
    client.hset("old:projbytes", mapping={"lib": 300, "big": 400})
    client.hset("old:projfiles", mapping={"lib": 2, "big": 1})
    store = RedisMetadata(client, Breaker("redis", (redis.RedisError,)), "old:")
    try:
        assert store.overview(0, 5).biggest == [("big", 1, 400), ("lib", 2, 300)]
        assert not client.exists("old:projbytes")
    finally:
        store.close()


def test_refs_and_extracted_pairs_go_with_their_blobs(backend: Backend) -> None:
    store = backend.metadata
    for name in "abm":
        store.add_blob(SHA[name], 10, 1.0)
    store.put_ref("https://files.test/a.tar.gz", SHA["a"])
    store.put_ref("https://mirror.test/a.tar.gz", SHA["a"])
    store.put_ref("https://files.test/b.tar.gz", SHA["b"])
    assert store.get_ref("https://files.test/a.tar.gz") == SHA["a"]
    assert store.get_ref("https://files.test/unknown") is None
    store.remove_blob(SHA["a"])
    assert store.get_ref("https://files.test/a.tar.gz") is None
    assert store.get_ref("https://mirror.test/a.tar.gz") is None
    assert store.get_ref("https://files.test/b.tar.gz") == SHA["b"]
    # A wheel and the METADATA extracted from it: removing either side forgets the pair.
    for removed in ("b", "m"):
        store.add_blob(SHA[removed], 10, 1.0)
        store.put_extracted_metadata(SHA["b"], SHA["m"])
        assert store.extracted_metadata() == {SHA["b"]: SHA["m"]}
        store.remove_blob(SHA[removed])
        assert store.extracted_metadata() == {}
    # A wheel that holds no readable METADATA is paired with nothing (""), as long as its blob.
    store.add_blob(SHA["b"], 10, 1.0)
    store.put_extracted_metadata(SHA["b"], "")
    store.put_extracted_metadata(SHA["a"], "")  # a wheel not stored (read from ranges)
    assert store.extracted_metadata([SHA["a"], SHA["b"]]) == {SHA["a"]: "", SHA["b"]: ""}
    store.remove_blob(SHA["b"])
    assert store.extracted_metadata() == {SHA["a"]: ""}


def test_the_first_upload_time_recorded_stays_and_is_a_change(backend: Backend) -> None:
    store = backend.metadata
    wheel, sdist = "https://files.test/a-1.0-py3-none-any.whl", "https://files.test/a-1.0.tar.gz"
    assert store.upload_times() == {} and store.generation(UPLOAD_TIMES) == 0
    store.put_upload_time(wheel, "2024-01-02T03:04:05Z")
    store.put_upload_time(wheel, "2025-01-01T00:00:00Z")  # a later touch changes nothing
    store.put_upload_time(sdist, "2024-02-01T00:00:00Z")
    assert store.upload_times() == {wheel: "2024-01-02T03:04:05Z", sdist: "2024-02-01T00:00:00Z"}
    assert store.upload_times([wheel, "https://files.test/other"]) == {
        wheel: "2024-01-02T03:04:05Z"
    }
    assert store.changes(UPLOAD_TIMES, 0) == Changes(2, frozenset({wheel, sdist}))
    store.add_blob(SHA["a"], 10, 1.0)
    store.remove_blob(SHA["a"])  # times are facts about the upstream's files: they stay
    assert len(store.upload_times()) == 2


HOUR = 480_000  # an hour since the epoch (in 2024)


def test_counts_add_up_for_life_and_per_hour(backend: Backend) -> None:
    store = backend.metadata
    assert store.overview(1, 1).counts == {} and store.overview(1, 1).hourly == {}
    store.add_counts([("hits", 3), ("misses", 1)], HOUR)
    store.add_counts([("hits", 2)], HOUR)
    store.add_counts([("hits", 7)], HOUR + 1)
    overview = store.overview(1, 1)
    assert overview.counts == {"hits": 12, "misses": 1}
    assert overview.hourly == {HOUR: {"hits": 5, "misses": 1}, HOUR + 1: {"hits": 7}}


def test_the_hours_kept_are_the_latest(backend: Backend) -> None:
    store = backend.metadata
    store.add_counts([("hits", 1)], HOUR)
    store.add_counts([("hits", 2)], HOUR + HOURS_KEPT - 1)
    assert set(store.overview(0, 0).hourly) == {HOUR, HOUR + HOURS_KEPT - 1}
    store.add_counts([("hits", 4)], HOUR + HOURS_KEPT)  # HOUR is HOURS_KEPT hours before it
    overview = store.overview(0, 0)
    assert overview.hourly == {HOUR + HOURS_KEPT - 1: {"hits": 2}, HOUR + HOURS_KEPT: {"hits": 4}}
    assert overview.counts == {"hits": 7}  # the lifetime totals keep everything


def test_job_reports_are_kept_for_the_latest_jobs(backend: Backend) -> None:
    store = backend.metadata
    assert store.get_job("nope") is None and store.overview(0, 0, 5).jobs == []
    for i in range(JOBS_KEPT + 3):
        store.put_job(f"job-{i}", 1000.0 + i, f"report {i}".encode())
    store.put_job("job-5", 1005.0, b"report 5, later")  # saved again while it runs
    assert store.get_job("job-5") == b"report 5, later"
    assert store.get_job("job-2") is None  # one of the three oldest: forgotten
    assert store.get_job(f"job-{JOBS_KEPT + 2}") == f"report {JOBS_KEPT + 2}".encode()
    latest = [f"report {i}".encode() for i in range(JOBS_KEPT + 2, JOBS_KEPT - 1, -1)]
    assert store.overview(0, 0, 3).jobs == latest
    assert len(store.overview(0, 0, 2 * JOBS_KEPT).jobs) == JOBS_KEPT
    assert store.overview(0, 0).jobs == []


def test_changes_name_what_changed_since_a_generation(backend: Backend) -> None:
    """Invalidated pages and paired wheels, so that every process drops just those."""
    store = backend.metadata
    assert store.generation(PAGES) == 0 and store.changes(PAGES, 0) == Changes(0, frozenset())
    store.put_page(A, "lib", record(10.0))
    store.expire_pages("lib")
    store.delete_pages("other")
    store.delete_pages(LIST_KEY)
    assert store.changes(PAGES, 0) == Changes(3, frozenset({"lib", "other", LIST_KEY}))
    assert store.changes(PAGES, 2) == Changes(3, frozenset({LIST_KEY}))
    assert store.changes(PAGES, 3) == Changes(3, frozenset())
    store.delete_pages(None)  # everything
    assert store.changes(PAGES, 3) == Changes(4, None)
    assert store.changes(PAGES, 9) == Changes(4, None)  # a store younger than what we saw
    # A pair of extracted METADATA is a change of its wheel, also when either side goes.
    assert store.generation(EXTRACTED) == 0
    for name in "abm":
        store.add_blob(SHA[name], 10, 1.0)
    store.put_extracted_metadata(SHA["a"], SHA["m"])
    store.put_extracted_metadata(SHA["b"], SHA["c"])
    assert store.changes(EXTRACTED, 0) == Changes(2, frozenset({SHA["a"], SHA["b"]}))
    store.remove_blob(SHA["m"])
    store.remove_blob(SHA["c"])  # not a blob here, but the METADATA side of b's pair
    assert store.changes(EXTRACTED, 2) == Changes(4, frozenset({SHA["a"], SHA["b"]}))
    store.remove_blob(SHA["a"])  # its pair went already: nothing changes
    assert store.generation(EXTRACTED) == 4 and store.generation(PAGES) == 4
    assert store.extracted_metadata([SHA["a"], SHA["b"]]) == {}


def test_a_process_that_missed_more_changes_than_are_kept_hears_of_everything(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = backend.metadata
    for key in ("a", "b", "c"):
        store.expire_pages(key)
    assert store.changes(PAGES, 0) == Changes(3, frozenset("abc"))
    monkeypatch.setattr(sqlite, "CHANGES_KEPT", 2)
    monkeypatch.setattr(redis_metadata, "CHANGES_KEPT", 2)
    store.expire_pages("d")  # the log keeps c and d
    assert store.changes(PAGES, 2) == Changes(4, frozenset("cd"))
    assert store.changes(PAGES, 1) == Changes(4, None)  # b is gone from the log
    assert store.changes(PAGES, 0) == Changes(4, None)


# -- Locks ---------------------------------------------------------------------------------------


async def test_a_lock_has_one_holder_at_a_time(backend: Backend) -> None:
    holder = backend.locks.lock("https://files.test/lib-1.0.tar.gz")
    other = backend.other_locks.lock("https://files.test/lib-1.0.tar.gz")
    unrelated = backend.other_locks.lock("https://files.test/lib-2.0.tar.gz")
    try:
        assert holder.try_acquire() and holder.acquired and holder.storable
        assert not other.try_acquire() and not other.acquired and not other.storable
        assert unrelated.try_acquire()
        holder.release(DONE)
        assert not holder.acquired
        again = backend.other_locks.lock("https://files.test/lib-1.0.tar.gz")
        assert again.try_acquire()
        again.release()
    finally:
        for lock in (holder, other, unrelated):
            lock.release()


@pytest.mark.parametrize(
    "outcome", [DONE, Outcome(False, "sha256 mismatch"), None], ids=["done", "failed", "silent"]
)
async def test_a_waiter_reads_the_outcome_the_holder_released_with(
    outcome: Outcome | None, backend: Backend
) -> None:
    holder = backend.locks.lock("page https://a.test/simple/ lib")
    waiter = backend.other_locks.lock("page https://a.test/simple/ lib")
    assert holder.try_acquire() and not waiter.try_acquire()
    waiting = asyncio.create_task(waiter.wait_released())
    await asyncio.sleep(0.1)  # a few polls of the lock
    assert not waiting.done()
    holder.release(outcome)
    assert await asyncio.wait_for(waiting, 10) == outcome
    waiter.close()


async def test_the_store_lock_is_had_when_free(backend: Backend) -> None:
    async with backend.locks.exclusive() as held:
        assert held is True
    async with backend.other_locks.exclusive() as held:  # and free again after
        assert held is True


# -- Locks: following another process's download ---------------------------------------------


class Progress:
    def __init__(self) -> None:
        self.written = 0
        self.done = False
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def wrote(self, count: int) -> None:
        self.written += count
        self._notify()

    def finish(self) -> None:
        self.done = True
        self._notify()

    async def wait_changed(self) -> None:
        await self._changed.wait()


@contextlib.asynccontextmanager
async def no_origin(offset: int) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
    raise AssertionError(f"the follower went to the upstream (from byte {offset})")
    yield  # pragma: no cover


# Enough that a cluster node publishes a piece for other nodes to relay.
FOLLOWED = PIECE_BYTES + 1024 * 1024


@dataclass
class Holder:
    """A download under a lock, half-way: all of `data` is in its part file and
    published, but the holder has not let go yet."""

    backend: Backend
    lock: Lock
    data: bytes
    fd: int
    progress: Progress

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    async def store(self) -> None:
        """Make the verified part file a blob, as the file cache does."""
        await self.backend.blobs.sync(self.fd)
        await self.backend.blobs.put(self.fd, self.lock.part, self.sha256)

    def end(self, outcome: Outcome | None) -> None:
        self.progress.finish()
        self.lock.release(outcome)


@contextlib.asynccontextmanager
async def holding(backend: Backend, key: str) -> AsyncIterator[Holder]:
    lock = backend.locks.lock(key)
    assert lock.try_acquire()
    fd = os.open(lock.part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    progress = Progress()
    publishing = asyncio.create_task(lock.publish(progress))
    data = random_bytes(FOLLOWED, key)
    write_all(fd, data)
    progress.wrote(len(data))
    try:
        yield Holder(backend, lock, data, fd, progress)
    finally:
        os.close(fd)
        publishing.cancel()  # it keeps a cluster's pieces a while for late followers
        await asyncio.gather(publishing, return_exceptions=True)
        lock.release()
        backend.blobs.discard(lock.part)


async def follow(
    follower: Lock, holder: Holder, then: Callable[[], Awaitable[None]] | None = None
) -> bytes:
    """Follow `holder`: its first bytes while it still holds the lock, then `then()` (it
    ends), then the rest."""
    lookup = lambda: holder.backend.other_blobs.open(holder.sha256)  # noqa: E731
    source = await asyncio.wait_for(follower.follow(len(holder.data), lookup, no_origin), 30)
    assert source is not None
    async with source as (size, chunks):
        assert size == len(holder.data)
        first = await anext(chunks)
        assert first and holder.data.startswith(first)
        if then is not None:
            await then()
        return first + b"".join([chunk async for chunk in chunks])


async def test_a_follower_gets_the_holders_bytes_and_its_done(backend: Backend) -> None:
    key = "https://files.test/followed-1.0.tar.gz"
    follower = backend.other_locks.lock(key)
    async with holding(backend, key) as holder:
        assert not follower.try_acquire()

        async def store_and_end() -> None:
            await holder.store()
            holder.end(DONE)

        assert await follow(follower, holder, store_and_end) == holder.data
    assert not follower.acquired
    follower.close()


async def test_a_follower_of_a_holder_that_fails_raises(backend: Backend) -> None:
    key = "https://files.test/failing-1.0.tar.gz"
    follower = backend.other_locks.lock(key)
    async with holding(backend, key) as holder:
        assert not follower.try_acquire()

        async def fail() -> None:
            holder.end(Outcome(False, "sha256 mismatch"))

        with pytest.raises(DownloadFailed, match="sha256 mismatch"):
            await follow(follower, holder, fail)
    follower.close()


async def test_a_follower_of_a_holder_that_failed_raises(backend: Backend) -> None:
    key = "https://files.test/failed-1.0.tar.gz"
    follower = backend.other_locks.lock(key)
    async with holding(backend, key) as holder:
        assert not follower.try_acquire()
        holder.end(Outcome(False, "sha256 mismatch"))
        with pytest.raises(DownloadFailed, match="sha256 mismatch"):
            await follow(follower, holder)
    follower.close()


async def test_a_follower_of_a_holder_that_stored_the_file_reads_it_stored(
    backend: Backend,
) -> None:
    key = "https://files.test/stored-1.0.tar.gz"
    holder = backend.locks.lock(key)
    follower = backend.other_locks.lock(key)
    assert holder.try_acquire() and not follower.try_acquire()
    data = random_bytes(100_000, key)
    sha256 = await put(backend.blobs, data)
    holder.release(DONE)
    source = await follower.follow(len(data), lambda: backend.other_blobs.open(sha256), no_origin)
    assert source is not None
    async with source as (size, chunks):
        assert size == len(data)
        assert b"".join([chunk async for chunk in chunks]) == data
    assert not follower.acquired
    follower.close()


async def test_a_follower_of_a_holder_that_said_nothing_takes_the_lock(
    backend: Backend,
) -> None:
    key = "https://files.test/orphan-1.0.tar.gz"
    holder = backend.locks.lock(key)
    follower = backend.other_locks.lock(key)
    assert holder.try_acquire() and not follower.try_acquire()
    holder.release()  # no outcome: as if it died before anything was relayed
    lookup = lambda: backend.other_blobs.open("0" * 64)  # noqa: E731
    assert await follower.follow(None, lookup, no_origin) is None
    assert follower.acquired  # the download is the follower's to do now
    assert not backend.locks.lock(key).try_acquire()
    follower.release()


# -- Locks: one holding, one part file; what holders vouch for; room reserved; leftovers --------


async def test_every_holding_of_a_lock_has_a_part_file_of_its_own(backend: Backend) -> None:
    key = "https://files.test/parted-1.0.tar.gz"
    parts = set()
    for locks in (backend.locks, backend.other_locks, backend.locks):
        lock = locks.lock(key)
        assert lock.try_acquire()
        parts.add(lock.part)
        assert lock.part in parts  # stable within one holding
        lock.release(DONE)
    assert len(parts) == 3


async def test_a_follower_learns_the_sha256_and_size_the_holder_verified(backend: Backend) -> None:
    key = "https://files.test/vouched-1.0.tar.gz"
    follower = backend.other_locks.lock(key)
    async with holding(backend, key) as holder:
        assert not follower.try_acquire()
        lookup = lambda: backend.other_blobs.open(holder.sha256)  # noqa: E731
        source = await asyncio.wait_for(follower.follow(len(holder.data), lookup, no_origin), 30)
        assert source is not None and source.vouched is None  # nothing said yet
        async with source as (_, chunks):
            received = await anext(chunks)
            await holder.store()
            holder.end(Outcome(True, sha256=holder.sha256, size=len(holder.data)))
            received += b"".join([chunk async for chunk in chunks])
        assert received == holder.data
        assert source.vouched == (holder.sha256, len(holder.data))
    follower.close()


def test_an_outcome_carries_what_was_verified_and_garbage_is_no_ok() -> None:
    verified = Outcome(True, sha256="a" * 64, size=12)
    assert Outcome.decode(verified.encode()) == verified and verified.verified == ("a" * 64, 12)
    assert Outcome.decode("ok") == DONE and DONE.verified is None
    assert Outcome.decode("ok " + "a" * 63 + " 12") == Outcome(
        False, "the holder's outcome is unreadable"
    )
    assert Outcome.decode("held 0123 00") is None and Outcome.decode("") is None


async def test_reserved_room_counts_while_its_holder_holds(backend: Backend) -> None:
    holder = backend.locks.lock("https://files.test/reserved-1.0.tar.gz")
    page = backend.locks.lock("page https://a.test/simple/ lib")  # held, reserving nothing
    assert holder.try_acquire() and page.try_acquire()
    async with backend.locks.exclusive() as held:
        assert held
        holder.reserve(1_000_000)
    async with backend.other_locks.exclusive() as held:
        assert held
        assert backend.other_locks.in_progress() == 1_000_000
        assert backend.locks.in_progress(but=holder) == 0
        holder.reserve(3_000_000)  # it grew
        assert backend.other_locks.in_progress() == 3_000_000
    holder.release(DONE)
    page.release()
    async with backend.other_locks.exclusive():
        assert backend.other_locks.in_progress() == 0


async def test_a_sweep_removes_what_a_dead_holder_left_and_keeps_a_living_ones(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cachepi.store.redis_locks._UNHELD_GRACE", 0.0)
    living = backend.locks.lock("https://files.test/living-1.0.tar.gz")
    assert living.try_acquire()
    write_all(os.open(living.part, os.O_WRONLY | os.O_CREAT, 0o644), b"alive")
    dead_part = await die_holding(backend, "https://files.test/dead-1.0.tar.gz", tmp_path)
    assert dead_part.exists()
    assert await asyncio.to_thread(backend.locks.sweep) >= 1
    assert not dead_part.exists()
    assert living.part.exists()
    again = backend.other_locks.lock("https://files.test/dead-1.0.tar.gz")
    assert again.try_acquire()  # free for the next holder
    again.release()
    living.release()


async def die_holding(backend: Backend, key: str, tmp_path: Path) -> Path:
    """A holder of `key` that wrote to its part file and died: a killed process (local), a
    node that stopped renewing its lock (cluster). Returns its part file."""
    if backend.kind == "cluster":
        assert isinstance(backend.locks, RedisLocks)
        lock = backend.locks.lock(key)
        assert lock.try_acquire()
        write_all(os.open(lock.part, os.O_WRONLY | os.O_CREAT, 0o644), b"x" * 1000)
        lock.close()  # stops renewing
        backend.locks.client.delete(lock._key)  # as when it expires
        return lock.part
    assert isinstance(backend.locks, FileLocks)
    script = (
        "import os, sys; from pathlib import Path; from cachepi.store.flock import FileLocks\n"
        "lock = FileLocks(Path(sys.argv[1]), Path(sys.argv[2])).lock(sys.argv[3])\n"
        "assert lock.try_acquire(); part = lock.part; part.write_bytes(b'x' * 1000)\n"
        "print(part, flush=True); os._exit(0)\n"
    )
    died = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(backend.locks.directory),
        str(tmp_path / "store.lock"), key, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await died.communicate()
    assert died.returncode == 0
    return Path(out.decode().strip())


async def test_a_follower_of_an_ended_holding_never_reads_the_next_ones_part_as_its_own(
    backend: Backend,
) -> None:
    """The race two workers ran into: a follower waits on holding A; A ends "ok" without
    storing the file and lets go; holding B starts at once, its part file still empty; only
    then does the follower look for a part file. It must follow B, as B, to B's end; never
    take B's part file for A's and complete with A's "ok"."""
    key = "https://files.test/raced-1.0.tar.gz"
    follower = backend.other_locks.lock(key)
    async with holding(backend, key) as first:
        assert not follower.try_acquire()  # waiting on A
        first.end(Outcome(True, sha256=first.sha256, size=len(first.data)))
    second = backend.locks.lock(key)
    assert second.try_acquire()
    fd = os.open(second.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # empty yet
    progress = Progress()
    publishing = asyncio.create_task(second.publish(progress))
    data = random_bytes(FOLLOWED, "second holding")
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        lookup = lambda: backend.other_blobs.open(sha256)  # noqa: E731
        following = asyncio.create_task(follower.follow(None, lookup, no_origin))
        await asyncio.sleep(0.2)  # the follower looks while B's part file is empty
        write_all(fd, data)
        progress.wrote(len(data))
        source = await asyncio.wait_for(following, 30)
        assert source is not None
        async with source as (_, chunks):
            received = await anext(chunks)
            await backend.blobs.sync(fd)
            await backend.blobs.put(fd, second.part, sha256)
            progress.finish()
            second.release(Outcome(True, sha256=sha256, size=len(data)))
            received += b"".join([chunk async for chunk in chunks])
        assert received == data
        assert source.vouched == (sha256, len(data))
    finally:
        os.close(fd)
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)
        second.release()
        backend.blobs.discard(second.part)
        follower.close()
