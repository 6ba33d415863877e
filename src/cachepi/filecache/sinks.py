"""Where a download's bytes go for its readers (transfer.Sink): the leader's part file, room
reserved in the cache before it grows; a follower's copy; or nothing at all, when the bytes
are in a file on this machine already (another worker's part file, a stored blob). Room is
asked for on the event loop; bytes are written on the transfer's writing thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from cachepi.filecache.accounting import Accounting
from cachepi.filecache.transfer import write_chunks
from cachepi.store.protocols import BlobStore, Lock

log = logging.getLogger(__name__)

# A download of unknown size reserves room in the cache in steps of this many bytes.
GROWTH_BYTES = 16 * 1024 * 1024
# The holder's part file goes to the disk in steps of this many bytes as it grows, so that
# the sync before the clients' last byte has little left to do.
SYNC_BYTES = 64 * 1024 * 1024
# Those syncs run here, through a descriptor of their own, while the transfer's writing
# thread goes on writing: on its thread, a step's sync (~25 ms for 64 MiB) held up the
# writes, and with them the upstream (bench/results/notes.md). A descriptor of its own
# also leaves the sync's error to the final fsync on the part file's (each open file sees
# a writeback error once), so a file that failed to sync is never kept.
_SYNCS = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="sync")


def _sync(fd: int) -> None:
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


class PartFile:
    """The lock holder's part file, which the other processes of this machine follow. Its
    room in the cache is reserved before a byte is written: the whole size when known, in
    steps as it grows when not. Without room (the file cannot fit, the cache has no space
    left for it, the lock does not allow storing) nothing goes to the disk: the bytes are
    relayed from memory and the lock is let go at once, so that other processes fetch the
    file themselves rather than wait for a part file that will not come."""

    keeps = True

    def __init__(
        self,
        lock: Lock,
        accounting: Accounting,
        url: str,
        on_open: Callable[[], object],
        listed_size: int | None = None,
    ) -> None:
        """`url`: redacted, for the log; `on_open()`: the part file is there. With the
        size the index gave, the room is reserved at once, while the upstream is asked."""
        self._lock = lock
        self._accounting = accounting
        self._url = url
        self._on_open = on_open
        self.fd = -1
        self.path: Path | None = None
        self._reserved = 0
        self._written = 0
        self._synced = 0
        self._syncing: concurrent.futures.Future[None] | None = None
        self._early: tuple[int, asyncio.Task[bool]] | None = None
        if listed_size is not None:
            reserving = asyncio.ensure_future(accounting.reserve(lock, listed_size))
            self._early = listed_size, reserving

    async def open(self, size: int | None) -> int | None:
        want = size if size is not None else GROWTH_BYTES
        if self._early is not None and self._early[0] == want:
            room = await self._early[1]
        else:
            room = await self._accounting.reserve(self._lock, want)
        if not room:
            log.info("%s does not fit in the cache now: relaying it from memory", self._url)
            self._lock.release()
            return None
        self._reserved = want
        self.path = self._lock.part
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._on_open()
        return os.open(self.path, os.O_RDONLY)

    async def room(self, end: int) -> bool:
        if end > self._reserved:
            grown = end + GROWTH_BYTES
            if not await self._accounting.reserve(self._lock, grown):
                log.warning(
                    "%s outgrew the room left in the cache at %d bytes: relaying the rest from "
                    "memory, it will not be cached", self._url, self._written,
                )  # fmt: skip
                return False
            self._reserved = grown
        return True

    def write(self, chunks: Sequence[bytes]) -> int:
        # A step that failed to sync is a disk that refuses the bytes: from this batch on,
        # they go on from memory.
        written, error = 0, self._sync_failure()
        if error is None:
            written, error = write_chunks(self.fd, chunks)
            self._written += written
        if error is None and self._syncing is None and self._written - self._synced >= SYNC_BYTES:
            assert self.path is not None  # it was opened
            try:
                self._syncing = _SYNCS.submit(_sync, os.open(self.path, os.O_RDONLY))
            except OSError as failure:  # this batch then goes on from memory too
                error, written = failure, 0
            self._synced = self._written
        if error is not None:
            log.error(
                "cannot store %s (%s): disk full or unwritable; relaying it from memory, it "
                "will not be cached", self._url, error.strerror or error,
            )  # fmt: skip
        return written

    def _sync_failure(self) -> OSError | None:
        """What the last step's sync failed with, once it ended; None meanwhile."""
        syncing = self._syncing
        if syncing is None or not syncing.done():
            return None
        self._syncing = None
        failure = syncing.exception()
        if failure is None or isinstance(failure, OSError):
            return failure
        raise failure

    def close(self, blobs: BlobStore) -> None:
        """The part file's descriptor closes; a sync still running keeps its own."""
        if self._early is not None:
            self._early[1].cancel()  # if the upstream failed first; its lock goes anyway
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path is not None:
            blobs.discard(self.path)  # a no-op once the part file became a blob


class TempCopy:
    """A follower's own copy in a temp file, for bytes that are nowhere on this machine (an
    object store's, another node's). The holder's reservation stands for it."""

    keeps = True

    def __init__(self, blobs: BlobStore, url: str) -> None:
        """`url`: redacted, for the log."""
        self._url = url
        self.fd, self.path = blobs.new_temp()

    async def open(self, size: int | None) -> int | None:
        return os.open(self.path, os.O_RDONLY)

    async def room(self, end: int) -> bool:
        return True

    def write(self, chunks: Sequence[bytes]) -> int:
        written, error = write_chunks(self.fd, chunks)
        if error is not None:
            log.error(
                "cannot copy %s (%s): disk full or unwritable; relaying it from memory",
                self._url, error.strerror or error,
            )  # fmt: skip
        return written

    def close(self, blobs: BlobStore) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path is not None:
            blobs.discard(self.path)


class InPlace:
    """Bytes that are in a file on this machine already, at the same offsets: readers read
    that file; nothing is written."""

    keeps = False
    fd = -1
    path: Path | None = None

    def __init__(self, file: int) -> None:
        self._file = file

    async def open(self, size: int | None) -> int | None:
        return os.dup(self._file)

    async def room(self, end: int) -> bool:
        return True

    def write(self, chunks: Sequence[bytes]) -> int:
        return sum(len(chunk) for chunk in chunks)

    def close(self, blobs: BlobStore) -> None:
        """The file is not ours."""


Sink = PartFile | TempCopy | InPlace
