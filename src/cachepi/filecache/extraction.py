"""PEP 658 for indexes without it: the METADATA of cached wheels, extracted once, stored as
a blob of its own, and paired with its wheel so that pages can advertise it (so is the
METADATA of wheels not cached, read with range requests: wheel_metadata.py).

Every process (and node) sees the pairs through the metadata store, picked up at most a
second late, pair by pair (the store's log of EXTRACTED changes names the wheels whose pair
came or went); a removed blob takes its pairing with it (either side).

Extraction is background work, never on a client's path: `schedule` starts it and returns.
Attempts run one at a time on a thread of their own (a wheel is hostile input: reading one
may take a fraction of a second, and must not hold up the threads that parse and render
pages), at most `QUEUED` waiting; more are dropped, to be asked again by a later hit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
from collections.abc import Callable, Mapping

from cachepi.filecache.accounting import Accounting
from cachepi.filecache.transfer import write_all
from cachepi.store.protocols import EXTRACTED, BlobStore, MetadataStore, StoreUnavailable
from cachepi.store.shared_map import SharedMap
from cachepi.wheelmeta import UNREADABLE, Archive, NotReadable, read_wheel_metadata

log = logging.getLogger(__name__)

# Attempts running or waiting for their turn; more are not started (a later hit asks again).
QUEUED = 32


class Extractions:
    def __init__(
        self,
        blobs: BlobStore,
        store: MetadataStore,
        accounting: Accounting,
        clock: Callable[[], float],
    ) -> None:
        self._blobs = blobs
        self._store = store
        self._accounting = accounting
        # wheel sha256 -> METADATA sha256 (or UNREADABLE), in every process.
        self._pairs = SharedMap(store, EXTRACTED, lambda k: store.extracted_metadata(k), clock)
        # Wheels being read now: a cache hit does not start another reading (a big wheel
        # is costly to open, more so from S3).
        self._working: set[str] = set()
        # One attempt at a time (opening a wheel from S3 copies it whole), on one thread.
        self._turn = asyncio.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        self._pairs.load()

    def wanted(self, wheel_sha256: str) -> bool:
        """Whether extracting from this wheel is worth starting now."""
        return not (
            wheel_sha256 in self._pairs.current
            or wheel_sha256 in self._working
            or len(self._working) >= QUEUED
        )

    def known(self) -> tuple[int, Mapping[str, str]]:
        """(generation, wheel sha256 -> METADATA sha256, or UNREADABLE) of what may be
        advertised."""
        return self._pairs.known()

    def schedule(self, wheel_sha256: str, filename: str, project: str | None) -> None:
        """Extract in the background, if wanted; returns at once. The task is ours: `close`
        cancels it."""
        if not self.wanted(wheel_sha256):
            return
        self._working.add(wheel_sha256)
        task = asyncio.create_task(self._attempt(wheel_sha256, filename, project))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def extract(self, wheel_sha256: str, filename: str, project: str | None) -> None:
        """Store a cached wheel's METADATA as a blob of its own and remember the pair (if
        wanted; returns when done)."""
        if not self.wanted(wheel_sha256):
            return
        self._working.add(wheel_sha256)
        await self._attempt(wheel_sha256, filename, project)

    async def drain(self) -> None:
        """Wait for every scheduled extraction to end."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Cancel the scheduled extractions and stop the thread."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _attempt(self, wheel_sha256: str, filename: str, project: str | None) -> None:
        try:
            await self._extract(wheel_sha256, filename, project)
        except (OSError, StoreUnavailable) as failure:  # a missed optimisation, no more
            log.error("cannot store the METADATA of %s: %s", filename, failure)
        except Exception:  # background work: nobody awaits it to hear of a bug
            log.exception("extracting the METADATA of %s failed", filename)
        finally:
            self._working.discard(wheel_sha256)

    async def read(self, file: Archive, filename: str) -> bytes | None:
        """`read_wheel_metadata` on the extraction thread (what it raises, such as a read
        over ranges asking for more, passes through)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="cachepi-extract"
            )
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, read_wheel_metadata, file, filename)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread reads `file`: it must end before the file is closed. It is bounded
            # (wheelmeta.py), so this is short.
            await asyncio.wait([future])
            raise

    async def _extract(self, wheel_sha256: str, filename: str, project: str | None) -> None:
        try:
            data = await self.read_cached(wheel_sha256, filename)
        except NotReadable as failure:
            log.warning("%s", failure)
            self.unreadable(wheel_sha256)
            return
        if data is not None and wheel_sha256 not in self._pairs.current:
            await self.keep(wheel_sha256, data, project, filename)

    async def read_cached(self, wheel_sha256: str, filename: str) -> bytes | None:
        """The METADATA of the cached wheel `wheel_sha256`, None when it is not cached.
        Raises NotReadable when it holds none readable."""
        async with self._turn:
            wheel = await self._blobs.open(wheel_sha256)
            if wheel is None:
                return None
            try:
                async with wheel.seekable() as file:
                    data = await self.read(file, filename)
            finally:
                wheel.close()
        if data is None:
            raise NotReadable(f"{filename} holds no readable METADATA")
        return data

    async def keep(
        self, wheel_sha256: str, data: bytes, project: str | None, filename: str
    ) -> str | None:
        """Store `data`, the METADATA of the wheel `wheel_sha256` (named `filename`), as a
        blob of its own and pair them for every process: its sha256, or None when the cache
        would not keep it. The wheel need not be cached: its sha256 names its bytes, so the
        pair holds whether or not they are here. Raises OSError and StoreUnavailable."""
        metadata_sha256 = hashlib.sha256(data).hexdigest()
        fd, temp = self._blobs.new_temp()
        try:
            write_all(fd, data)
            stored = await self._accounting.keep(
                fd, temp, metadata_sha256, len(data), project, filename + ".metadata", True
            )
        finally:
            os.close(fd)
            self._blobs.discard(temp)
        if not stored:
            return None
        # The blob first: a pair any process sees names a stored blob.
        self._store.put_extracted_metadata(wheel_sha256, metadata_sha256)
        self._pairs.add({wheel_sha256: metadata_sha256})
        return metadata_sha256

    def unreadable(self, wheel_sha256: str) -> None:
        """The wheel `wheel_sha256` holds no readable METADATA: remembered by every process
        (as long as its blob, if it has one). Raises StoreUnavailable."""
        self._store.put_extracted_metadata(wheel_sha256, UNREADABLE)
        self._pairs.add({wheel_sha256: UNREADABLE})

    def forget(self, sha256: str) -> None:
        """A removed blob took its pairing with it (either side) in the store, which logged
        that for every process: this one too takes it in at its next look (for all the blobs
        an eviction removes at once)."""
        self._pairs.stale()
