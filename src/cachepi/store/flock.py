"""The embedded default's locks: lock files (flock) shared by the worker processes of one
machine.

Within one process, work is shared through dictionaries of in-flight tasks; these locks make
sure two processes never do the same work (download one file, refresh one page) at once. A
lock dies with its process, so a killed worker never leaves a lock behind.

A lock file carries the holder's outcome: the holder writes it before releasing, and a
process that waited reads it from its own open descriptor. A download under a lock goes to
the part file beside it, which every other process follows as it grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from cachepi.store.protocols import Origin, Outcome, Progress, StoredLookup, read_back
from cachepi.types import DownloadFailed, Source

# Another process's lock has no event to await: it is polled this often.
_POLL_SECONDS = 0.002
# How long `exclusive` waits for the store-wide lock (held for milliseconds at a time).
_EXCLUSIVE_WAIT = 5.0
_CHUNK = 1024 * 1024


class FileLock:
    """One lock file, opened; `acquired` says whether this process holds it exclusively."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.acquired = False
        self._fd = -1

    @property
    def part(self) -> Path:
        return self.path.with_suffix(".part")

    def try_acquire(self) -> bool:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                self._replace_fd(fd)  # keep it: a waiter reads the outcome through it
                return False
            # The previous holder may have unlinked the path after we opened it: then our
            # lock is on a file nobody else will find. Start over on the current file.
            if _same_file(fd, self.path):
                self._replace_fd(fd)
                self.acquired = True
                return True
            os.close(fd)

    @property
    def storable(self) -> bool:
        return self.acquired  # a lock file is never lost while its process lives

    def _held_elsewhere(self) -> bool:
        """True while another process holds the file we opened."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return False

    async def wait_released(self) -> Outcome | None:
        while self._held_elsewhere():  # noqa: ASYNC110 - a lock elsewhere has no event
            await asyncio.sleep(_POLL_SECONDS)
        return self._outcome()

    def _outcome(self) -> Outcome | None:
        return Outcome.decode(os.pread(self._fd, 4096, 0).decode(errors="replace").strip())

    def release(self, outcome: Outcome | None = None) -> None:
        """Write the outcome for waiters, remove the path (a later arrival starts afresh),
        and unlock."""
        if self.acquired:
            # On a full disk this can fail: waiters then read nothing and take it as a failure.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, (outcome.encode() if outcome else "").encode(), 0)
            self.path.unlink(missing_ok=True)
            self.acquired = False
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing also drops the flock
            self._fd = -1

    def _replace_fd(self, fd: int) -> None:
        self.close()
        self._fd = fd

    async def publish(self, progress: Progress) -> None:
        """Nothing to do: every process of this machine reads the part file itself."""

    async def follow(self, size: int | None, stored: StoredLookup, origin: Origin) -> Source | None:
        while True:
            try:
                fd = os.open(self.part, os.O_RDONLY)
            except FileNotFoundError:
                if self._held_elsewhere():
                    await asyncio.sleep(_POLL_SECONDS)
                    continue
                # It ended before we saw its part file.
                ended = await ended_source(self._outcome(), stored)
                if ended is not None:
                    return ended
                if self.try_acquire():  # it died, or did not store the file: ours to do
                    return None
                continue  # another process took it first: follow that one
            return self._part_file(fd, size)

    @contextlib.asynccontextmanager
    async def _part_file(
        self, fd: int, size: int | None
    ) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        async def chunks() -> AsyncIterator[bytes]:
            position = 0
            while True:
                # The holder's state BEFORE the size: bytes written before it let go are
                # then certainly read.
                done = not self._held_elsewhere()
                end = os.fstat(fd).st_size
                while position < end:
                    data = os.pread(fd, min(_CHUNK, end - position), position)
                    position += len(data)
                    yield data
                if done:
                    outcome = self._outcome()
                    if outcome is None or not outcome.ok:
                        reason = outcome.reason if outcome else "the worker fetching it died"
                        raise DownloadFailed(reason)
                    return
                await asyncio.sleep(_POLL_SECONDS)

        try:
            yield size, chunks()
        finally:
            os.close(fd)


async def ended_source(outcome: Outcome | None, stored: StoredLookup) -> Source | None:
    """What a holder that ended left for a follower: its stored file read back like the
    upstream's body; DownloadFailed if it failed; None when there is neither (it died, or
    did not store the file): then the follower may do the work itself."""
    if outcome is None:
        return None
    if not outcome.ok:
        raise DownloadFailed(outcome.reason)
    blob = await stored()
    if blob is None:
        return None
    return read_back(blob)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


class FileLocks:
    """Lock files in one directory, named from any key (a URL, a page)."""

    def __init__(self, directory: Path, store_lock: Path) -> None:
        self.directory = directory
        self._store_lock = store_lock

    def lock(self, key: str) -> FileLock:
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        return FileLock(self.directory / f"{name}.lock")

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        fd = os.open(self._store_lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + _EXCLUSIVE_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        held = False
                        break
                    await asyncio.sleep(_POLL_SECONDS)
            yield held
        finally:
            os.close(fd)

    async def remove_abandoned(self, older_than: float) -> int:
        return remove_abandoned_files(self.directory, older_than)


def remove_abandoned_files(directory: Path, older_than: float) -> int:
    """Lock files (and their part files) that no process holds, and other temp files
    nobody touched for `older_than` seconds."""
    now = time.time()
    removed = 0
    for path in sorted(directory.iterdir()):
        if path.suffix == ".lock":
            lock = FileLock(path)
            if lock.try_acquire():  # nobody downloads it: its part file is a leftover
                if lock.part.exists():
                    lock.part.unlink(missing_ok=True)
                    removed += 1
                lock.release()
                removed += 1
            else:
                lock.close()
        elif now - path.stat().st_mtime > older_than and not (
            path.suffix == ".part" and path.with_suffix(".lock").exists()
        ):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
