"""The METADATA of a wheel whose index offers none, whenever a client asks for it. Pages
advertise it for every such wheel (its hash once known, `true` before), and pip and uv fail
on a 404 for one, so it is always found, by whichever process (or node) is asked:

1. Known: the pair this process holds, else the store's (another process paired it a
   moment ago, before this one followed the store's log), and its stored blob.
2. The wheel is cached: its METADATA is extracted from it now.
3. Else it is read from the upstream with a few range requests (ranged_metadata.py).
4. From a host that sends no ranges, the wheel is downloaded whole, through the file cache
   (kept, as if a client had asked for it), and read.

Only a wheel that holds no readable METADATA (broken, hostile: wheelmeta.py's bounds) fails,
with NotReadable, and is paired as UNREADABLE so that no process advertises or reads it
again. Steps 2 to 4 run once per wheel: once in this process (every request waits for the
same task), and once across processes and nodes, under the store's lock for the wheel's
METADATA (a process that finds it held waits for the holder's outcome). The clients of this
process get the bytes as soon as they are read; then they are stored as extraction.py
stores any METADATA (the blob, then the pair), and the lock let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from typing import NamedTuple

from cachepi.filecache.cache import FileCache
from cachepi.filecache.download import Download, FileSpec
from cachepi.filecache.range_support import RangeSupport
from cachepi.filecache.ranged_metadata import read_metadata
from cachepi.redact import redact
from cachepi.store.protocols import (
    Lock,
    Locks,
    MetadataStore,
    Outcome,
    StoredBlob,
    StoreUnavailable,
)
from cachepi.types import DownloadFailed
from cachepi.upstream import NoRanges
from cachepi.wheelmeta import UNREADABLE, NotReadable

log = logging.getLogger(__name__)

# Lock keys: the wheel's URL after this, unlike any file's own key (its URL).
_LOCK_PREFIX = "metadata of "


class Found(NamedTuple):
    """A wheel's METADATA as found: read by this process (`data`), or stored by another
    (`sha256`)."""

    sha256: str | None
    data: bytes | None


class _Reading:
    """This process's work on one wheel's METADATA: `found` as soon as it is known (before
    it is stored: the first clients need not wait for that), `task` until it is stored."""

    def __init__(self) -> None:
        self.found: asyncio.Future[Found] = asyncio.get_running_loop().create_future()
        # Retrieved here, so that an outcome nobody awaits any more is not reported.
        self.found.add_done_callback(lambda done: done.cancelled() or done.exception())
        self.task: asyncio.Task[None] | None = None


class WheelMetadata:
    def __init__(
        self, files: FileCache, locks: Locks, store: MetadataStore, ranges: RangeSupport
    ) -> None:
        self._files = files
        self._extractions = files.extractions
        self._locks = locks
        self._store = store
        self._ranges = ranges
        self._running: dict[str, _Reading] = {}  # by wheel sha256
        self._big = asyncio.Lock()  # the turn of readings that hold much (ranged_metadata.py)

    async def get(self, wheel: FileSpec, client: str | None) -> StoredBlob | bytes:
        """The METADATA of `wheel` (whose sha256 the index gives): its stored blob, which the
        caller closes, or its bytes when read just now (or the cache would not keep them).
        `client`: the address that asked, whose bound on downloads the work counts against.
        Raises NotReadable, and as a download does: UpstreamError, UpstreamNotFound,
        DownloadFailed (also when another process failed at it), Busy."""
        assert wheel.sha256 is not None, "only a wheel the index gives a sha256 is paired"
        for _ in range(2):  # the blob stored may be gone by the time it is opened: once more
            if (blob := await self.stored(wheel)) is not None:
                return blob
            reading = self._running.get(wheel.sha256) or self._start(wheel, wheel.sha256, client)
            found = await asyncio.shield(reading.found)  # a client leaving stops no one
            if found.data is not None:
                return found.data
            if found.sha256 is not None and (blob := await self._open(wheel, found.sha256)):
                return blob
        raise DownloadFailed(f"the METADATA of {wheel.filename} was stored and is gone again")

    def _start(self, wheel: FileSpec, wheel_sha256: str, client: str | None) -> _Reading:
        reading = self._running[wheel_sha256] = _Reading()
        reading.task = asyncio.create_task(self._obtain(wheel, client, reading.found))
        reading.task.add_done_callback(functools.partial(self._ended, wheel_sha256, reading))
        return reading

    def _ended(self, wheel_sha256: str, reading: _Reading, task: asyncio.Task[None]) -> None:
        if self._running.get(wheel_sha256) is reading:
            del self._running[wheel_sha256]
        if not task.cancelled():
            task.exception()  # told to whoever awaited `found`

    async def close(self) -> None:
        """Cancel the work under way."""
        tasks = [reading.task for reading in self._running.values() if reading.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stored(self, wheel: FileSpec) -> StoredBlob | None:
        """The stored METADATA of `wheel` if a pair is known here or in the store (the
        caller closes it); never reads anything. Raises NotReadable when the pair says the
        wheel holds none."""
        assert wheel.sha256 is not None
        metadata_sha256 = self._extractions.known()[1].get(wheel.sha256)
        if metadata_sha256 is None:
            try:
                metadata_sha256 = self._store.extracted_metadata([wheel.sha256]).get(wheel.sha256)
            except StoreUnavailable:
                return None
        if metadata_sha256 == UNREADABLE:
            raise NotReadable(f"{wheel.filename} holds no readable METADATA")
        return None if metadata_sha256 is None else await self._open(wheel, metadata_sha256)

    async def _open(self, wheel: FileSpec, metadata_sha256: str) -> StoredBlob | None:
        """The stored blob `metadata_sha256` (counted as a use), if it is there."""
        return await self._files.cached(
            dataclasses.replace(wheel, hashes={"sha256": metadata_sha256})
        )

    async def _obtain(
        self, wheel: FileSpec, client: str | None, found: asyncio.Future[Found]
    ) -> None:
        """Read and store the METADATA under the wheel's lock, or wait for the process that
        does; `found` is told as soon as it is known."""
        lock = self._locks.lock(_LOCK_PREFIX + wheel.url)
        try:
            while not lock.try_acquire():
                outcome = await lock.wait_released()
                if outcome is not None and not outcome.ok:
                    raise DownloadFailed(outcome.reason)
                if outcome is not None and outcome.sha256 is not None:
                    found.set_result(Found(outcome.sha256, None))
                    return
                # The holder died, or stored nothing: try again, maybe as the holder.
            await self._lead(wheel, client, lock, found)
        except asyncio.CancelledError:
            found.cancel()  # shutdown
            raise
        except Exception as failure:
            if not found.done():
                found.set_exception(failure)
            raise
        finally:
            lock.close()

    async def _lead(
        self, wheel: FileSpec, client: str | None, lock: Lock, found: asyncio.Future[Found]
    ) -> None:
        assert wheel.sha256 is not None
        try:
            if (blob := await self.stored(wheel)) is not None:  # done meanwhile
                blob.close()
                found.set_result(Found(blob.sha256, None))
                lock.release(Outcome(True, sha256=blob.sha256, size=blob.size))
                return
            data = await self._read(wheel, client)
        except NotReadable as failure:
            log.warning("%s: %s", redact(wheel.url), failure)
            with contextlib.suppress(StoreUnavailable):  # else read again when asked
                self._extractions.unreadable(wheel.sha256)
            lock.release(Outcome(False, str(failure)))
            raise
        except BaseException as failure:
            lock.release(Outcome(False, str(failure) or type(failure).__name__))
            raise
        found.set_result(Found(None, data))  # served now; stored after
        metadata_sha256 = await self._keep(wheel, data)
        lock.release(Outcome(True, sha256=metadata_sha256, size=len(data)))

    async def _read(self, wheel: FileSpec, client: str | None) -> bytes:
        """The wheel's METADATA: from the cached wheel, from ranges, or from the whole."""
        filename = wheel.filename or ""
        assert wheel.sha256 is not None
        if (data := await self._extractions.read_cached(wheel.sha256, filename)) is not None:
            return data
        if self._ranges.serves(wheel.url):
            # A slot like a download's, let go before any whole download takes one.
            ticket = await self._files.slots.take(wheel.upstream.name, client)
            try:
                return await read_metadata(
                    wheel.upstream, wheel.url, filename, wheel.size, self._extractions.read,
                    self._big,
                )  # fmt: skip
            except NoRanges as refusal:
                self._ranges.refused(wheel.url, str(refusal))
            finally:
                ticket.release()
        found = await self._files.get(wheel)
        if isinstance(found, Download):
            while not found.done:
                await found.wait_changed()
        else:
            found.close()
        data = await self._extractions.read_cached(wheel.sha256, filename)
        if data is None:
            raise DownloadFailed(f"{redact(wheel.url)} did not end in the cache to be read")
        return data

    async def _keep(self, wheel: FileSpec, data: bytes) -> str | None:
        """Store the METADATA and its pair; its sha256, or None when the cache would not
        keep it (it is served from memory then)."""
        assert wheel.sha256 is not None
        try:
            return await self._extractions.keep(
                wheel.sha256, data, wheel.project, wheel.filename or ""
            )
        except (OSError, StoreUnavailable) as failure:
            log.error("cannot store the METADATA of %s: %s", redact(wheel.url), failure)
            return None
