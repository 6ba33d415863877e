"""The file cache: verified blobs, and single-flight streaming downloads.

A miss starts ONE download per file URL, however many clients, worker processes and nodes
ask: the holder of the file's lock downloads it from the upstream into its part file; every
other process follows the holder through the lock (store/protocols.py says how) into a part
file of its own, which its clients read as it grows. Every copy is verified against the
index's hashes before a client gets its last byte; the holder stores the file before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from cachepi.filecache.accounting import Accounting
from cachepi.filecache.download import Download, FileSpec
from cachepi.filecache.extraction import Extractions
from cachepi.filecache.transfer import transfer
from cachepi.metrics import Metrics
from cachepi.store import Stores
from cachepi.store.protocols import DONE, Lock, Outcome, StoredBlob, StoreUnavailable, read_back
from cachepi.types import SourceOpener
from cachepi.upstream import redact

log = logging.getLogger(__name__)


class FileCache:
    def __init__(
        self,
        stores: Stores,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self._blobs = stores.blobs
        self._store = stores.metadata
        self._locks = stores.locks
        self._metrics = metrics
        self._downloads: dict[str, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.accounting = Accounting(
            self._blobs, self._store, self._locks, max_bytes, clock, metrics, self._removed
        )
        self.extractions = Extractions(self._blobs, self._store, self.accounting, clock)

    def _removed(self, sha256: str) -> None:
        self.extractions.forget(sha256)

    async def open(self, reconcile: bool = True) -> None:
        """Load the state; with `reconcile` (one process, before any worker serves), first
        make the records agree with the store after whatever stopped the last process."""
        if reconcile:
            if removed := self._blobs.clear_temp():
                log.info("removed %d leftovers of unfinished downloads", removed)
            if self._blobs.lists_cheaply:
                await self.accounting.match_records()
        await self.extractions.load()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.accounting.flush_touches()

    def extracted(self) -> tuple[int, Mapping[str, str]]:
        """(generation, wheel sha256 -> METADATA sha256) of what pages may advertise."""
        return self.extractions.known()

    # -- hits -----------------------------------------------------------------------------

    async def cached(self, spec: FileSpec) -> StoredBlob | None:
        """The stored blob for `spec`, if we have it; counts as a use for eviction. A store
        that does not answer has nothing (the file then comes from upstream)."""
        try:
            sha256 = spec.sha256 or self._store.get_ref(spec.url)
            if sha256 is None:
                return None
            blob = await self._blobs.open(sha256)
        except StoreUnavailable:
            return None
        if blob is not None:
            self.accounting.touch(blob.sha256)
        return blob

    # -- misses ---------------------------------------------------------------------------

    async def get(self, spec: FileSpec) -> StoredBlob | Download:
        """The stored blob for `spec`, else its download (joined or started) once the
        upstream's headers are in. Check and start happen without an await in between, so
        two requests never start two downloads of one file."""
        if (blob := await self.cached(spec)) is not None:
            if spec.wheel_without_metadata and self.extractions.wanted(blob.sha256):
                self._spawn(
                    self.extractions.extract(blob.sha256, spec.wheel_without_metadata, spec.project)
                )
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
        """Download `download.spec` here, or follow whoever already does."""
        spec = download.spec
        lock = self._locks.lock(spec.url)
        try:
            if lock.try_acquire():
                await self._lead(download, lock)
                return
            source = await lock.follow(
                spec.size, functools.partial(self.cached, spec), functools.partial(_upstream, spec)
            )
            if source is None:  # the holder died: it is ours now
                await self._lead(download, lock)
            else:
                await self._fetch(download, lock, lambda: source, leading=False)
        except Exception as failure:  # the lock failed us: readers must not wait forever
            log.warning("download of %s failed: %s", redact(spec.url), failure)
            download.finished(failure)
        finally:
            self._downloads.pop(spec.url, None)
            lock.close()

    async def _lead(self, download: Download, lock: Lock) -> None:
        """Download under `lock`, held: from the upstream, unless another process stored
        the file meanwhile."""
        blob = await self.cached(download.spec)
        if blob is None:
            await self._fetch(download, lock, functools.partial(_upstream, download.spec, 0))
            return
        lock.release(DONE)  # stored just now by another process: read it from there
        await self._fetch(download, lock, functools.partial(read_back, blob), leading=False)

    async def _fetch(
        self, download: Download, lock: Lock, source: SourceOpener, leading: bool = True
    ) -> None:
        """Copy `source` into a part file that `download`'s readers follow, verify it, and
        store it if the lock is ours. Leading, the part file is the one other processes of
        this machine can find, and its progress is published for those that cannot."""
        spec = download.spec
        if leading:
            part = lock.part
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._spawn(lock.publish(download))
        else:
            fd, part = self._blobs.new_temp()
        error: BaseException | None = None
        try:
            sha256 = await transfer(download, fd, part, source)
        except Exception as failure:
            error = failure
            log.warning("download of %s failed: %s", redact(spec.url), failure)
            if self._metrics is not None:
                self._metrics.download_errors.labels(spec.upstream.name).inc()
        except BaseException as failure:  # cancelled at shutdown: readers must not hang
            error = failure
            raise
        else:
            # Stored (synced, renamed, recorded) before the clients' last byte: when a
            # download completes, the cache holds the file and its PEP 658 metadata.
            if lock.acquired and not download.spilled:  # we led it, or took it over
                await self._store_verified(download, fd, part, sha256, lock.storable)
        finally:
            download.finished(error)  # first: whatever fails below, no reader may hang
            os.close(fd)
            self._blobs.discard(part)  # a no-op once the part file became a blob
            if lock.acquired:  # followers of this machine read the part file: say if it is whole
                lock.release(_outcome(error, download.spilled))

    async def _store_verified(
        self, download: Download, fd: int, part: Path, sha256: str, storable: bool
    ) -> None:
        spec = download.spec
        try:
            stored = await self.accounting.keep(
                fd, part, sha256, download.written, spec.project, spec.filename, storable
            )
            if stored and spec.sha256 is None:
                self._store.put_ref(spec.url, sha256)
        except (OSError, StoreUnavailable) as failure:  # the bytes are good: clients got them
            log.error("cannot store %s in the cache: %s", redact(spec.url), failure)
            return
        if stored and spec.wheel_without_metadata:
            await self.extractions.extract(sha256, spec.wheel_without_metadata, spec.project)


def _outcome(error: BaseException | None, spilled: bool) -> Outcome:
    if error is not None:
        return Outcome(False, str(error))
    if spilled:
        return Outcome(False, "the disk would not take the file")
    return DONE


@contextlib.asynccontextmanager
async def _upstream(
    spec: FileSpec, skip: int = 0
) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
    """The upstream's body of `spec`, from byte `skip` on."""
    async with spec.upstream.open_file(spec.url) as (length, chunks):

        async def rest() -> AsyncIterator[bytes]:
            left = skip
            async for data in chunks:
                if left >= len(data):
                    left -= len(data)
                    continue
                yield data[left:]
                left = 0

        yield length, rest() if skip else chunks
