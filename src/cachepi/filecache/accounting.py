"""What the file cache holds: records of stored blobs and their last use, and eviction of the
least recently used to stay under the byte limit, one process (or node) at a time.

The limit holds for stored blobs, downloads in progress and the cache's other files (the
rendered pages, which evict their own) together: a download reserves its room (under the
store-wide lock, counting every process's reservations) before its part file grows, evicting
what it must; what cannot get room is not written to the disk."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from cachepi.metrics import Metrics
from cachepi.store.protocols import (
    BlobStore,
    Lock,
    Locks,
    MetadataStore,
    NewBlob,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

# Last-use times are written in batches, at most this often.
_TOUCH_FLUSH_SECONDS = 5.0


class Accounting:
    def __init__(
        self,
        blobs: BlobStore,
        store: MetadataStore,
        locks: Locks,
        max_bytes: int,
        clock: Callable[[], float],
        metrics: Metrics | None = None,
        on_removed: Callable[[str], None] = lambda sha256: None,
        beside: Callable[[], int] = lambda: 0,
    ) -> None:
        """`on_removed(sha256)`: told of every blob removed (what derives from it goes).
        `beside()`: bytes the cache's other files take of `max_bytes`."""
        self._blobs = blobs
        self._beside = beside
        self._store = store
        self._locks = locks
        self.max_bytes = max_bytes
        self._clock = clock
        self._metrics = metrics
        self._on_removed = on_removed
        self._touched: dict[str, float] = {}
        self._last_flush = clock()

    def touch(self, sha256: str) -> None:
        """A use of `sha256`, for the eviction order."""
        now = self._clock()
        self._touched[sha256] = now
        if now - self._last_flush > _TOUCH_FLUSH_SECONDS:
            self.flush_touches()

    def flush_touches(self) -> None:
        """Write batched last-use times: one transaction per few seconds, not per hit."""
        if self._touched:
            try:
                self._store.touch_blobs(self._touched.items())
            except StoreUnavailable as failure:  # eviction order gets a little less exact
                log.warning("cannot record when files were last used: %s", failure)
            self._touched.clear()
        self._last_flush = self._clock()

    async def reserve(self, lock: Lock, size: int) -> bool:
        """Room in the cache for `size` bytes of the download under `lock` (held), besides
        the stored blobs and every other download in progress; evicts the least recently
        used blobs to make it. False, evicting nothing, when it cannot be had: the file is
        bigger than the cache or than what other downloads left, the lock does not allow
        storing, the store-wide lock or the store did not answer."""
        if size > self.max_bytes or not lock.storable:  # a cache size of 0: stream through
            return False
        try:
            async with self._locks.exclusive() as held:
                if not held:
                    return False
                others = self._locks.in_progress(but=lock)
                if others + size + self._beside() > self.max_bytes:
                    return False
                if await self._evict(others + size) < 0:  # could not make the room
                    return False
                lock.reserve(size)
                return True
        except (OSError, StoreUnavailable) as failure:
            log.warning("cannot reserve room in the cache: %s", failure)
            return False

    async def keep(
        self, fd: int, temp: Path, sha256: str, size: int, project: str | None,
        filename: str | None, storable: bool, lock: Lock | None = None,
    ) -> bool:  # fmt: skip
        """Make verified bytes (written to `temp` through `fd`) a blob, evicting others to
        make room; True if the cache now holds `sha256` (perhaps from before).
        `storable`: the lock the bytes were fetched under still allows storing them;
        `lock`: that lock, whose reservation the blob replaces."""
        if size > self.max_bytes or not storable:  # a cache size of 0: stream through only
            return False
        if os.fstat(fd).st_size != size:  # never store anything but the verified bytes
            raise OSError(f"the part file holds {os.fstat(fd).st_size} bytes, not {size}")
        await self._blobs.sync(fd)
        # One process (node) at a time evicts; counting and adding are atomic in the store.
        async with self._locks.exclusive() as held:
            if await self._blobs.contains(sha256):  # the same bytes came by another URL
                return True
            if held:  # otherwise the holder evicts, or the next store will
                await self._evict(size + self._locks.in_progress(but=lock))
            await self._blobs.put(fd, temp, sha256)
            self._store.add_blob(sha256, size, self._clock(), project, filename)
        return True

    async def match_records(self) -> tuple[int, int, int]:
        """Make the records agree with the stored blobs, then evict down to the limit;
        safe while other processes serve. Returns (files recorded, records dropped,
        files evicted)."""
        async with self._locks.exclusive() as held:
            _require(held)
            recorded = self._store.blobs()
            now = self._clock()
            added: list[NewBlob] = []
            async for sha256, size in self._blobs.listing():
                if recorded.pop(sha256, None) != size:
                    added.append(NewBlob(sha256, size, now))
            self._store.add_blobs(added)
            for sha256 in recorded:  # recorded, but the file is gone
                self._store.remove_blob(sha256)
                self._on_removed(sha256)
            evicted = await self._evict(self._locks.in_progress())
            return len(added), len(recorded), max(evicted, 0)

    async def remove(self, sha256: str) -> None:
        """Drop one blob, its file and every record of it."""
        async with self._locks.exclusive() as held:
            _require(held)
            await self._drop(sha256)

    async def _drop(self, sha256: str) -> None:
        await self._blobs.remove(sha256)
        self._store.remove_blob(sha256)
        self._on_removed(sha256)

    async def _evict(self, incoming: int) -> int:
        """Delete least recently used blobs until `incoming` more bytes (those of downloads
        in progress too) fit under the limit beside the other files; returns how many, or -1
        if they do not fit even with nothing left to evict. Call with the store lock held."""
        _, total = self._store.blob_stats()
        total += self._beside()
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
        return -1


def _require(held: bool) -> None:
    if not held:
        raise StoreUnavailable("another process holds the store lock; try again")
