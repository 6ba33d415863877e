"""Cross-process locks on lock files (flock), for workers sharing one cache directory.

Within one process, work is shared through dictionaries of in-flight tasks; these locks make
sure two processes never do the same work (download one file, refresh one page) at once. A
lock dies with its process, so a killed worker never leaves a lock behind.

A lock file carries the holder's outcome: the holder writes it before releasing, and a
process that waited reads it from its own open descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
from pathlib import Path

_POLL_SECONDS = 0.002


class LockFile:
    """One lock file, opened; `acquired` says whether this process holds it exclusively."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.acquired = False
        self._fd = -1

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never waits."""
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
        """Whether work done under this lock may be stored (see store/redis.py's)."""
        return self.acquired

    def held_elsewhere(self) -> bool:
        """True while another process holds the file we opened."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return False

    async def wait_released(self) -> str:
        """Wait until the holder lets go; return the outcome it wrote ("" if it died)."""
        # Another process's lock has no event to await: poll it.
        while self.held_elsewhere():  # noqa: ASYNC110
            await asyncio.sleep(_POLL_SECONDS)
        return self.outcome()

    def outcome(self) -> str:
        return os.pread(self._fd, 4096, 0).decode(errors="replace").strip()

    def release(self, outcome: str = "") -> None:
        """Write the outcome for waiters, remove the path (a later arrival starts afresh),
        and unlock."""
        if self.acquired:
            # On a full disk this can fail: waiters then read "" and take it as a failure.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, outcome.encode(), 0)
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


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


class Locks:
    """Lock files in one directory, named from any key (a URL, a page)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def lock(self, key: str) -> LockFile:
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        return LockFile(self.directory / f"{name}.lock")
