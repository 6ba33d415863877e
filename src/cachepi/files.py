"""The file cache: verified blobs on disk, and single-flight streaming downloads.

A miss starts ONE upstream download per file URL, however many clients and worker processes
ask: the process holding the file's lock (locks.py) writes a temp ("part") file, and every
client anywhere reads that file as it grows. The last byte is only released once the whole
file matched the index's hash, so a client never completes a transfer of wrong bytes.
Verified files are renamed into the content-addressed store; least recently used blobs are
evicted, one process at a time, to stay under the byte limit.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import enum
import functools
import hashlib
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachepi.locks import LockFile, Locks
from cachepi.metrics import Metrics
from cachepi.store.blobs import Blob, BlobStore
from cachepi.store.metadata import STORE_ERRORS, MetadataStore

if TYPE_CHECKING:
    from cachepi.store.redis import RedisLock, RedisLocks, RedisMetadataStore
    from cachepi.store.s3 import RemoteBlob, S3Blobs
from cachepi.upstream import Upstream, redact
from cachepi.wheelmeta import read_wheel_metadata

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
# What a download may hold in memory when the disk refuses its bytes.
_WINDOW_BYTES = 8 * 1024 * 1024
# Chunks a download may have waiting for its hashing thread.
_HASH_QUEUE = 16
# How often a follower looks at another worker's part file.
_POLL_SECONDS = 0.002
_EXTRACTED = "extracted"  # the generation counter other workers watch
_TOUCH_FLUSH_SECONDS = 5.0
# A download another node follows is published in pieces of this size, checked this often.
PIECE_BYTES = 8 * 1024 * 1024
_NODE_POLL_SECONDS = 0.05
# Followers move on to the stored file when it is there; the pieces go a little after.
_PIECES_KEPT = 10.0


class DownloadFailed(Exception):
    """The download broke or its bytes did not verify; a client's transfer must not end."""


@dataclass(frozen=True)
class FileSpec:
    """What to fetch and how to check it: from the index entry that listed the file."""

    url: str
    hashes: dict[str, str]
    size: int | None
    upstream: Upstream
    # The wheel's filename when its index offers no PEP 658 metadata: extract it once cached.
    wheel_without_metadata: str | None = None
    # What the file is, for the dashboard, `cachepi stats` and `cachepi purge PROJECT`.
    project: str | None = None
    filename: str | None = None

    @property
    def sha256(self) -> str | None:
        return self.hashes.get("sha256")


# Where a transfer's bytes come from: its length, if known, and the bytes.
Source = AbstractAsyncContextManager[tuple[int | None, AsyncIterator[bytes]]]


class _State(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Download:
    """One transfer into a part file that any number of readers follow, fed either by this
    process's upstream request or by watching another worker's part file."""

    def __init__(self, spec: FileSpec) -> None:
        self.spec = spec
        self.size: int | None = spec.size
        # Bytes that came from the upstream, and bytes handed on to readers (on disk).
        self.received = 0
        self.written = 0
        self._state = _State.RUNNING
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self._headers = asyncio.Event()
        self._read_fd = -1
        # When the disk refuses the part file (full, unwritable), bytes from `_disk_end` on
        # are relayed from a bounded window in memory instead, paced by the slowest reader.
        self._disk_end: int | None = None
        self._window: collections.deque[bytes] = collections.deque()
        self._window_start = 0
        self._window_bytes = 0
        self._positions: dict[object, int] = {}
        self._consumed = asyncio.Event()

    # -- the writer's side ------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def started(self, read_fd: int, size: int | None) -> None:
        """Bytes will come through `read_fd` (owned from now on; closed with the last
        reference, and valid after the file is renamed or unlinked). Called again when a
        transfer is retried: the first descriptor stays."""
        if self._read_fd >= 0:
            os.close(read_fd)
            return
        self._read_fd = read_fd
        weakref.finalize(self, os.close, read_fd)
        self.size = size if size is not None else self.size
        self._headers.set()

    def progressed(self, count: int) -> None:
        self.written += count
        self._notify()

    @property
    def spilled(self) -> bool:
        """True once the part file could not take more bytes: this copy cannot be kept."""
        return self._disk_end is not None

    def spill(self) -> None:
        """From now on, bytes arrive through `relay` instead of the part file."""
        self._disk_end = self._window_start = self.written

    async def relay(self, data: bytes) -> None:
        """Hand on bytes the disk would not take, once every reader made room for them."""
        while self._window_bytes + len(data) > _WINDOW_BYTES and self._window:
            self._trim()
            if self._window_bytes + len(data) > _WINDOW_BYTES:
                await self._consumed.wait()
                self._consumed.clear()
        self._window.append(data)
        self._window_bytes += len(data)

    def _trim(self) -> None:
        """Drop window chunks that every reader is past."""
        slowest = min(self._positions.values(), default=self.written)
        while self._window and self._window_start + len(self._window[0]) <= slowest:
            dropped = self._window.popleft()
            self._window_start += len(dropped)
            self._window_bytes -= len(dropped)

    def _read(self, position: int, available: int) -> bytes:
        """Bytes from `position` on, up to `available`: from the part file or the window."""
        if self._disk_end is None or position < self._disk_end:
            limit = available if self._disk_end is None else min(available, self._disk_end)
            return os.pread(self._read_fd, min(limit - position, _CHUNK), position)
        if position < self._window_start:
            raise DownloadFailed("the disk is full and these bytes are gone from memory")
        offset = self._window_start
        for data in self._window:
            if offset + len(data) > position:
                return data[position - offset : available - offset]
            offset += len(data)
        raise AssertionError("a position below `available` is always in the window")

    @property
    def done(self) -> bool:
        return self._state is not _State.RUNNING

    async def wait_changed(self) -> None:
        """Until more bytes arrived or the download ended."""
        await self._changed.wait()

    def bytes_on_disk(self) -> int:
        """How much the file we read from holds now (for following another writer)."""
        return os.fstat(self._read_fd).st_size

    def finished(self, error: BaseException | None) -> None:
        if self._state is not _State.RUNNING:
            return
        self._state = _State.FAILED if error else _State.DONE
        self._error = error
        self._headers.set()
        self._notify()

    # -- the readers' side ------------------------------------------------------------------

    async def wait_started(self) -> None:
        """Return once the upstream sent its headers; raise if it failed before that."""
        await self._headers.wait()
        if self._state is _State.FAILED and self._read_fd < 0:
            if isinstance(self._error, Exception):
                raise self._error
            raise DownloadFailed("download cancelled")

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes [start, end) as they arrive.

        A reader's final byte is withheld until the whole file verified, and DownloadFailed
        is raised if it does not: no client ever completes a transfer of unverified bytes,
        not even of a range.
        """
        position = start
        me = object()
        self._positions[me] = position
        try:
            while end is None or position < end:
                if self._state is _State.FAILED:
                    raise DownloadFailed(str(self._error))
                done = self._state is _State.DONE
                available = self.written if end is None else min(self.written, end)
                if not done:
                    available = min(available, self.written - 1, (end or self.written) - 1)
                if position < available:
                    data = self._read(position, available)
                    position += len(data)
                    self._positions[me] = position
                    self._consumed.set()
                    yield data
                elif done:
                    return
                else:
                    await self._changed.wait()
        finally:
            del self._positions[me]
            self._consumed.set()


class FileCache:
    def __init__(
        self,
        blobs: BlobStore | S3Blobs,
        store: MetadataStore | RedisMetadataStore,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        locks: Locks | RedisLocks | None = None,
    ) -> None:
        """`locks` keep processes (or, from Redis, nodes) from downloading a file twice;
        by default, lock files beside the blobs."""
        self._blobs = blobs
        self._metrics = metrics
        self._store = store
        self._locks = locks or Locks(blobs.temp_dir)
        self.max_bytes = max_bytes
        self._clock = clock
        self._downloads: dict[str, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._touched: dict[str, float] = {}
        self._last_flush = clock()
        # wheel sha256 -> sha256 of the METADATA extracted from it (see wheelmeta.py), and a
        # counter that changes with it, so pages advertising them are re-rendered. Other
        # workers' extractions are picked up from the store, at most a second late.
        self._extracted: dict[str, str] = {}
        self._extracted_generation = 0
        self._extracted_stored = -1  # read at open()
        self._extracted_checked = clock()

    async def open(self, reconcile: bool = True) -> None:
        """Load the state; with `reconcile` (one process, before any worker serves), first
        make the records agree with the disk after whatever stopped the last process."""
        if reconcile:
            if removed := self._blobs.clear_temp():
                log.info("removed %d leftovers of unfinished downloads", removed)
            if self._blobs.kind == "local":  # listing a shared bucket is `cachepi gc`'s job
                await self.match_records()
        try:
            self._extracted_stored = self._store.generation(_EXTRACTED)
            self._extracted = self._store.extracted_metadata()
        except STORE_ERRORS as failure:  # a shared store that is down: picked up later
            log.warning("cannot load the extracted METADATA records: %s", failure)

    async def match_records(self) -> tuple[int, int, int]:
        """Make the records agree with the stored blobs, then evict down to the limit;
        safe while other processes serve. Returns (files recorded, records dropped,
        files evicted)."""
        async with self._blobs.exclusive():
            recorded = self._store.blobs()
            now = self._clock()
            added = 0
            async for sha256, size in self._blobs.listing():
                if recorded.pop(sha256, None) != size:
                    self._store.add_blob(sha256, size, now)
                    added += 1
            for sha256 in recorded:  # recorded, but the file is gone
                self._store.remove_blob(sha256)
            return added, len(recorded), await self._evict(0)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.flush_touches()

    # -- hits -----------------------------------------------------------------------------

    async def cached(self, spec: FileSpec) -> Blob | RemoteBlob | None:
        """The stored blob for `spec`, if we have it; counts as a use for eviction. A
        shared store that does not answer has nothing (the file then comes from upstream).
        """
        try:
            sha256 = spec.sha256 or self._store.get_ref(spec.url)
            if sha256 is None:
                return None
            blob = await self._blobs.open(sha256)
        except STORE_ERRORS:
            return None
        if blob is None:
            return None
        now = self._clock()
        self._touched[sha256] = now
        if now - self._last_flush > _TOUCH_FLUSH_SECONDS:
            self.flush_touches()
        return blob

    def flush_touches(self) -> None:
        """Write batched last-use times: one transaction per few seconds, not per hit."""
        if self._touched:
            try:
                self._store.touch_blobs(self._touched.items())
            except STORE_ERRORS as failure:  # eviction order gets a little less exact
                log.warning("cannot record when files were last used: %s", failure)
            self._touched.clear()
        self._last_flush = self._clock()

    # -- misses ---------------------------------------------------------------------------

    async def get(self, spec: FileSpec) -> Blob | Download:
        """The stored blob for `spec`, else its download (joined or started) once the
        upstream's headers are in. Check and start happen without an await in between, so
        two requests never start two downloads of one file."""
        if (blob := await self.cached(spec)) is not None:
            if spec.wheel_without_metadata and blob.sha256 not in self._extracted:
                self._spawn(self._extract(blob.sha256, spec.wheel_without_metadata, spec.project))
            return blob
        download = self._downloads.get(spec.url)
        if download is None:
            download = Download(spec)
            self._downloads[spec.url] = download
            self._spawn(self._run(download))
        await download.wait_started()
        return download

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background, owned here so shutdown can cancel it."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, download: Download) -> None:
        """Download `download.spec` here, or follow the worker that already does."""
        lock = self._locks.lock(download.spec.url)
        try:
            if lock.try_acquire():
                await self._fetch(download, lock)
            elif isinstance(lock, LockFile):  # a worker of this machine: read its part file
                await self._follow(download, lock)
            else:
                await self._follow_node(download, lock)
        finally:
            self._downloads.pop(download.spec.url, None)
            lock.close()

    async def _fetch(
        self,
        download: Download,
        lock: LockFile | RedisLock,
        following: Callable[[], Source] | None = None,
    ) -> None:
        """Download `download.spec` under `lock`, from the store if another process or
        node stored it meanwhile, else from upstream (and then store it). `following`:
        the bytes of another node's download instead (nothing to store then)."""
        spec = download.spec
        blob = None if following else await self.cached(spec)
        if isinstance(blob, Blob):  # another worker finished just now
            lock.release("ok")
            _complete_from(download, blob)
            return
        if following is None:  # other workers of this machine may follow this part file
            part = lock.path.with_suffix(".part")
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        else:
            fd, part = self._blobs.new_temp()
        error: BaseException | None = None
        stored = False
        publisher = None
        try:
            source: Callable[[], Source]
            if following is not None:
                source = following
            elif blob is not None:
                source = functools.partial(_from_store, blob)
            else:
                source = functools.partial(_from_upstream, spec)
            if following is None and blob is None and self._blobs.kind == "s3":
                publisher = asyncio.create_task(self._publish(download, part, lock))  # type: ignore[arg-type]
            sha256 = await self._transfer(download, fd, part, source)
        except Exception as failure:
            error = failure
            log.warning("download of %s failed: %s", redact(spec.url), failure)
            if self._metrics is not None:
                self._metrics.download_errors.labels(spec.upstream.name).inc()
        except BaseException as failure:  # cancelled at shutdown: readers must not hang
            error = failure
            raise
        else:
            # Stored (fsync'd, renamed, recorded) before the clients' last byte: when a
            # download completes, the cache holds the file and its PEP 658 metadata.
            try:
                # What we followed was stored by its node, unless that died and we took over.
                taken_over = following is not None and lock.acquired
                stored = blob is not None or (following is not None and not taken_over) or (
                    not download.spilled
                    and await self._keep(
                        fd, part, sha256, download.written, spec.project, spec.filename,
                        lock.storable,
                    )
                )  # fmt: skip
                if stored and spec.sha256 is None:
                    self._store.put_ref(spec.url, sha256)
            except (OSError, *STORE_ERRORS) as failure:  # the bytes are good: clients got them
                log.error("cannot store %s in the cache: %s", redact(spec.url), failure)
            if stored and spec.wheel_without_metadata:
                await self._extract(sha256, spec.wheel_without_metadata, spec.project)
        finally:
            if publisher is not None:
                publisher.cancel()
            download.finished(error)  # first: whatever fails below, no reader may hang
            os.close(fd)
            self._blobs.discard(part)  # a no-op once the part file became a blob
            # Other workers read the part file: a spilled one is incomplete for them.
            lock.release(
                f"failed: {error}"
                if error is not None
                else "failed: the disk would not take the file"
                if download.spilled
                else "ok"
            )

    async def _follow(self, download: Download, lock: LockFile) -> None:
        """Relay another worker's download from its part file, and its outcome."""
        part = lock.path.with_suffix(".part")
        while True:
            try:
                download.started(os.open(part, os.O_RDONLY), None)
                break
            except FileNotFoundError:
                if not lock.held_elsewhere():  # it finished before we saw its part file
                    blob = await self.cached(download.spec)
                    if not isinstance(blob, Blob):
                        download.finished(DownloadFailed("the worker fetching it failed"))
                    else:
                        _complete_from(download, blob)
                    return
                await asyncio.sleep(_POLL_SECONDS)
        while True:
            # Read the holder's state BEFORE the size: bytes it wrote before letting go are
            # then certainly counted.
            done = not lock.held_elsewhere()
            grown = download.bytes_on_disk() - download.written
            if grown > 0:
                download.progressed(grown)
            if done:
                outcome = lock.outcome()
                failed = None if outcome == "ok" else DownloadFailed(outcome or "worker died")
                download.finished(failed)
                return
            await asyncio.sleep(_POLL_SECONDS)

    async def _follow_node(self, download: Download, lock: RedisLock) -> None:
        """Another node downloads the file: relay its bytes as it publishes them to the
        store (in pieces, see `_publish`), the rest from the stored file. If that node
        failed, say so; if it died (its lock expired) before we relayed anything, or it
        could not store the file, take over."""
        while True:
            holder = lock.holder()
            if holder is None:  # released, or expired with its node
                if lock.outcome().startswith("failed"):
                    download.finished(DownloadFailed(lock.outcome()))
                    return
                if lock.try_acquire():  # nobody holds it now: it is ours to finish
                    lock.unwant_pieces()
                    await self._fetch(download, lock)
                    return
                continue
            lock.want_pieces()
            if lock.pieces(holder) > 0:
                blobs: S3Blobs = self._blobs  # type: ignore[assignment]
                await self._fetch(
                    download,
                    lock,
                    functools.partial(_following, blobs, lock, holder, download.spec),
                )
                return
            await asyncio.sleep(_NODE_POLL_SECONDS)

    async def _publish(self, download: Download, part: Path, lock: RedisLock) -> None:
        """While downloading, put the bytes so far in the store in pieces when another
        node follows this download, so its clients get them without waiting for the end.
        The stored file replaces them; they are deleted a while after."""
        token = lock.token
        published = 0
        try:
            while not download.done:
                if lock.pieces_wanted():
                    while (published + 1) * PIECE_BYTES <= download.written:
                        data = await asyncio.to_thread(_read_piece, part, published * PIECE_BYTES)
                        await self._blobs.put_piece(token, published, data)  # type: ignore[union-attr]
                        published += 1
                        lock.publish_pieces(published)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_NODE_POLL_SECONDS):
                        await download.wait_changed()
        except (OSError, *STORE_ERRORS) as failure:  # followers wait for the stored file
            log.warning("cannot publish the progress of %s: %s", download.spec.url, failure)
        finally:
            if published:
                self._spawn(self._blobs.delete_pieces(token, published, later=_PIECES_KEPT))  # type: ignore[union-attr]

    async def _transfer(self, download: Download, fd: int, part: Path, source: Source) -> str:
        """Copy the body from `source` into `fd` (the part file), checking length and
        hashes; a passing failure is retried while no byte has been received."""
        return await download.spec.upstream.retrying(
            lambda: self._transfer_once(download, fd, part, source),
            safe=lambda: download.received == 0,
        )

    async def _transfer_once(self, download: Download, fd: int, part: Path, source: Source) -> str:
        spec = download.spec
        hasher = _Hasher(spec.hashes)
        try:
            async with source() as (length, chunks):
                download.started(os.open(part, os.O_RDONLY), length)
                async for chunk in chunks:
                    download.received += len(chunk)
                    await hasher.update(chunk)
                    if not download.spilled:
                        try:
                            _write_all(fd, chunk)
                        except OSError as error:
                            log.error(
                                "cannot store %s (%s): disk full or unwritable; relaying it "
                                "from memory, it will not be cached",
                                redact(spec.url),
                                error.strerror or error,
                            )
                            download.spill()
                    if download.spilled:
                        await download.relay(chunk)
                    download.progressed(len(chunk))
            digests = await hasher.hexdigests()
        finally:
            hasher.close()
        for expected in (spec.size, download.size):
            if expected is not None and expected != download.written:
                raise DownloadFailed(
                    f"got {download.written} bytes, the index or upstream said {expected}"
                )
        for name, expected_digest in spec.hashes.items():
            if name in digests and digests[name] != expected_digest.lower():
                raise DownloadFailed(f"{name} mismatch: the upstream sent different bytes")
        return digests["sha256"]

    async def _keep(
        self, fd: int, temp: Path, sha256: str, size: int, project: str | None,
        filename: str | None, storable: bool,
    ) -> bool:  # fmt: skip
        """Make verified bytes (written to `temp` through `fd`) a blob, evicting others to
        make room; True if the cache now holds `sha256` (perhaps from before).
        `storable`: the lock it was downloaded under is still ours (and shared)."""
        if size > self.max_bytes or not storable:  # a cache size of 0: stream through only
            return False
        if os.fstat(fd).st_size != size:  # never store anything but the verified bytes
            raise OSError(f"the part file holds {os.fstat(fd).st_size} bytes, not {size}")
        await self._blobs.sync(fd)
        # One process (node) at a time evicts; counting and adding are atomic in the store.
        async with self._blobs.exclusive() as evicting:
            if await self._blobs.contains(sha256):  # the same bytes came by another URL
                return True
            if evicting:
                await self._evict(size)
            await self._blobs.put(fd, temp, sha256)
            self._store.add_blob(sha256, size, self._clock(), project, filename)
        return True

    def usage(self) -> tuple[int, int]:
        """(files, bytes) stored, as every worker sees them."""
        return self._store.blob_stats()

    async def _extract(self, wheel_sha256: str, filename: str, project: str | None) -> None:
        """Store a cached wheel's METADATA as a blob of its own and remember the pair."""
        try:
            await self._extract_unguarded(wheel_sha256, filename, project)
        except (OSError, *STORE_ERRORS) as failure:  # a missed optimisation, no more
            log.error("cannot store the METADATA of %s: %s", filename, failure)

    async def _extract_unguarded(
        self, wheel_sha256: str, filename: str, project: str | None
    ) -> None:
        wheel = self._blobs.local_path(wheel_sha256)
        if wheel is None:  # not a local file (S3): not worth downloading it again
            return
        data = await asyncio.to_thread(read_wheel_metadata, wheel, filename)
        if data is None or wheel_sha256 in self._extracted:
            return
        metadata_sha256 = hashlib.sha256(data).hexdigest()
        fd, temp = self._blobs.new_temp()
        try:
            _write_all(fd, data)
            stored = await self._keep(
                fd, temp, metadata_sha256, len(data), project, filename + ".metadata", True
            )
        finally:
            os.close(fd)
            self._blobs.discard(temp)
        if stored and wheel.is_file():  # the wheel may have been evicted meanwhile
            self._store.put_extracted_metadata(wheel_sha256, metadata_sha256)
            self._store.bump(_EXTRACTED)
            self._extracted = self._extracted | {wheel_sha256: metadata_sha256}
            self._extracted_generation += 1

    def _forget_extracted(self, sha256: str) -> None:
        """A removed blob takes its extracted METADATA pairing with it (either side)."""
        pairs = {w: m for w, m in self._extracted.items() if sha256 not in (w, m)}
        if len(pairs) != len(self._extracted):
            self._store.bump(_EXTRACTED)
            self._extracted = pairs
            self._extracted_generation += 1

    def extracted(self) -> tuple[int, Mapping[str, str]]:
        """(generation, wheel sha256 -> METADATA sha256) of what we can advertise. The
        mapping is never changed in place, so a renderer may read it from a thread."""
        now = self._clock()
        if now - self._extracted_checked >= 1.0:
            self._extracted_checked = now
            try:
                stored = self._store.generation(_EXTRACTED)
                if stored != self._extracted_stored:
                    self._extracted = self._store.extracted_metadata()
                    self._extracted_stored = stored
                    self._extracted_generation += 1
            except STORE_ERRORS:  # keep what we know
                pass
        return self._extracted_generation, self._extracted

    async def remove_stale_pieces(self, older_than: float) -> int:
        """Delete what nodes that died left of the downloads they published (see
        `_publish`); returns how many pieces."""
        return await self._blobs.remove_stale_pieces(older_than)

    async def remove(self, sha256: str) -> None:
        """Drop one blob, its file and every record of it."""
        async with self._blobs.exclusive():
            await self._drop(sha256)

    async def _drop(self, sha256: str) -> None:
        await self._blobs.remove(sha256)
        self._store.remove_blob(sha256)
        self._forget_extracted(sha256)

    async def _evict(self, incoming: int) -> int:
        """Delete least recently used blobs until `incoming` more bytes fit under the limit;
        returns how many. Call with the store lock held."""
        _, total = self._store.blob_stats()
        evicted = 0
        if total + incoming <= self.max_bytes:
            return evicted
        self.flush_touches()
        while victims := self._store.least_recently_used():
            for sha256, size in victims:
                await self._drop(sha256)
                total -= size
                evicted += 1
                log.info("evicted %s (%d bytes)", sha256, size)
                if self._metrics is not None:
                    self._metrics.evicted(size)
                if total + incoming <= self.max_bytes:
                    return evicted
        return evicted


class _Hasher:
    """A download's hashes, computed in order on a thread of its own (hashlib releases the
    GIL), while the event loop receives, writes and relays. Only the digests at the end are
    waited for, and at most a few chunks are queued."""

    def __init__(self, expected: dict[str, str]) -> None:
        self._hashers = {"sha256": hashlib.sha256()}
        for name in expected:
            if name not in self._hashers and name in hashlib.algorithms_available:
                self._hashers[name] = hashlib.new(name)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hash")
        self._queued: collections.deque[asyncio.Future[None]] = collections.deque()

    async def update(self, chunk: bytes) -> None:
        self._queued.append(asyncio.wrap_future(self._thread.submit(self._update, chunk)))
        while self._queued and (self._queued[0].done() or len(self._queued) > _HASH_QUEUE):
            await self._queued.popleft()

    def _update(self, chunk: bytes) -> None:
        for hasher in self._hashers.values():
            hasher.update(chunk)

    async def hexdigests(self) -> dict[str, str]:
        while self._queued:
            await self._queued.popleft()
        return {name: hasher.hexdigest() for name, hasher in self._hashers.items()}

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)


@asynccontextmanager
async def _from_upstream(spec: FileSpec) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
    async with spec.upstream.open_file(spec.url) as response:
        yield response.content_length, response.content.iter_any()


@asynccontextmanager
async def _following(
    blobs: S3Blobs, lock: RedisLock, holder: str, spec: FileSpec
) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
    """Another node's download as it progresses: its published pieces, then the rest
    from the stored file. Fails if that node fails or dies, or another takes over."""

    async def chunks() -> AsyncIterator[bytes]:
        offset = piece = 0
        while True:
            while piece < lock.pieces(holder):
                data = await blobs.read_piece(holder, piece)
                piece += 1
                offset += len(data)
                yield data
            current = lock.holder()
            if current is None:
                outcome = lock.outcome()
                stored = await blobs.open(spec.sha256) if spec.sha256 else None
                if outcome.startswith("ok") and stored is not None:
                    async for data in stored.chunks(offset, stored.size):
                        yield data
                    return
                if outcome or not lock.try_acquire():
                    raise DownloadFailed(f"the node downloading it stopped ({outcome or 'died'})")
                lock.unwant_pieces()
                # Its node died: take over, from upstream, past what was relayed already
                # (the whole is verified at the end, as always), and clear its pieces.
                log.info("taking over the download of %s at byte %d", redact(spec.url), offset)
                await blobs.delete_pieces(holder, piece)
                async with spec.upstream.open_file(spec.url) as response:
                    skip = offset
                    async for data in response.content.iter_any():
                        if skip >= len(data):
                            skip -= len(data)
                            continue
                        yield data[skip:]
                        skip = 0
                return
            if current != holder:
                raise DownloadFailed("the node downloading it was replaced")
            lock.want_pieces()
            await asyncio.sleep(_NODE_POLL_SECONDS)

    yield spec.size, chunks()


def _read_piece(part: Path, offset: int) -> bytes:
    with part.open("rb") as file:
        file.seek(offset)
        return file.read(PIECE_BYTES)


@asynccontextmanager
async def _from_store(blob: RemoteBlob) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
    """A blob another node stored, read back like an upstream body (and verified again)."""
    yield blob.size, blob.chunks(0, blob.size)


def _complete_from(download: Download, blob: Blob) -> None:
    """Finish `download` with a blob that is already stored."""
    with blob.file:
        download.started(os.dup(blob.file.fileno()), blob.size)
    download.progressed(blob.size)
    download.finished(None)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
