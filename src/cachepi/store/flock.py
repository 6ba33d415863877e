"""The embedded default's locks: lock files (flock) shared by the worker processes of one
machine.

Within one process, work is shared through dictionaries of in-flight tasks; these locks make
sure two processes never do the same work (download one file, refresh one page) at once. A
lock dies with its process, so a killed worker never leaves a lock behind.

A lock file is one holding: its holder creates it (or finds a dead holder's and replaces
it), and removes it when it lets go, so no two holders ever share one. While held, it names
the holder's part file (a name of its own: a follower that read it can never open another
download's part file) and the bytes the holder reserved in the cache; once released, it
carries the holder's outcome, which a process that waited reads from its own open
descriptor. Every other process reads the holder's part file as it grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from cachepi.store.protocols import (
    Followed,
    Lock,
    Origin,
    Outcome,
    Progress,
    StoredLookup,
    read_back,
)
from cachepi.types import DownloadFailed

# Another process's lock has no event to await: it is polled this often.
_POLL_SECONDS = 0.002
# How long `exclusive` waits for the store-wide lock (held for milliseconds at a time).
_EXCLUSIVE_WAIT = 5.0
_CHUNK = 1024 * 1024
# What a held lock file says: its part file, and the bytes reserved (fixed width, so that a
# change rewrites the same bytes in place).
_HEADER_RE = re.compile(rb"held ([0-9a-f]{32}-[0-9a-f]{16}\.part) ([0-9]{20})\n")
# A part file that no held lock names is left alone this long (its holder may be about to
# name it), other temp files this long after their last write (they belong to no lock).
_UNNAMED_GRACE = 60.0
_TEMP_UNTOUCHED = 3600.0


class FileLock:
    """One lock file, opened; `acquired` says whether this process holds it exclusively."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.acquired = False
        self._fd = -1
        self._part: Path | None = None
        self._reserved = 0

    @property
    def part(self) -> Path:
        """The holder's part file, named once per holding; the name goes into the lock file
        before the file is created, so the part of a living holder is always named."""
        if self._part is None:
            self._part = self.path.with_name(f"{self.path.stem}-{secrets.token_hex(8)}.part")
            self._write_header()
        return self._part

    def reserve(self, size: int) -> None:
        self._reserved = size
        if self._part is None:
            _ = self.part  # names it, with the reservation
        else:
            self._write_header()

    def _write_header(self) -> None:
        if self.acquired and self._part is not None:
            header = f"held {self._part.name} {self._reserved:020d}\n".encode()
            os.pwrite(self._fd, header, 0)

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
            if not _same_file(fd, self.path):
                os.close(fd)
                continue
            if _remove_dead_holding(fd, self.path):  # a killed holder's: never reused
                os.close(fd)
                continue
            self._replace_fd(fd)
            self.acquired = True
            self._part, self._reserved = None, 0
            return True

    @property
    def storable(self) -> bool:
        return self.acquired  # a lock file is never lost while its process lives

    def _held_elsewhere(self) -> bool:
        """True while another process holds the file we opened."""
        return _held(self._fd)

    async def wait_released(self, until: Callable[[], bool] | None = None) -> Outcome | None:
        """The holder's outcome once it let go; None as soon as `until()` is true, if given
        (what was waited for came before the holder let go)."""
        while self._held_elsewhere():  # a lock elsewhere has no event: polled
            if until is not None and until():
                return None
            await asyncio.sleep(_POLL_SECONDS)
        return self._outcome()

    def _outcome(self) -> Outcome | None:
        return Outcome.decode(_read(self._fd).decode(errors="replace").strip())

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

    async def follow(
        self, size: int | None, stored: StoredLookup, origin: Origin
    ) -> Followed | None:
        while True:
            # The header first, then whether it is held: a header of a holder that is gone
            # (killed) is never followed.
            header = _header(_read(self._fd))
            if self._held_elsewhere():
                if header is not None:
                    try:
                        fd = os.open(self.path.with_name(header[0]), os.O_RDONLY)
                    except FileNotFoundError:  # not created yet, or already gone
                        pass
                    else:
                        return self._part_file(fd, size, header[0])
                await asyncio.sleep(_POLL_SECONDS)
                continue
            # It ended (or died) before we followed its part file.
            ended = await ended_source(self._outcome(), stored)
            if ended is not None:
                return ended
            if self.try_acquire():  # it died, or did not store the file: ours to do
                return None
            # Another process took it first: follow that one.

    def _part_file(self, fd: int, size: int | None, name: str) -> Followed:
        source: Followed

        @contextlib.asynccontextmanager
        async def opened() -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
            try:
                yield size, chunks()
            finally:
                os.close(fd)

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
                    source.vouched = outcome.verified
                    return
                await asyncio.sleep(_POLL_SECONDS)

        source = Followed(opened(), fd)
        return source


async def ended_source(outcome: Outcome | None, stored: StoredLookup) -> Followed | None:
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


def _read(fd: int) -> bytes:
    return os.pread(fd, 4096, 0)


def _header(content: bytes) -> tuple[str, int] | None:
    """(part file name, bytes reserved) from a held lock file's content."""
    match = _HEADER_RE.match(content)
    return None if match is None else (match[1].decode(), int(match[2]))


def _held(fd: int) -> bool:
    """True while a process holds the lock file open at `fd` (not through `fd`)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _remove_dead_holding(fd: int, path: Path) -> bool:
    """With the lock of `path` had through `fd`: if a holder wrote to it, that holder died
    holding it (a released lock file is gone from its path). Remove its part file and the
    lock file, and say so."""
    content = _read(fd)
    if not content:
        return False
    if (header := _header(content)) is not None:
        path.with_name(header[0]).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    return True


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

    def in_progress(self, but: Lock | None = None) -> int:
        """What the downloads of every process hold or reserved: for each held lock file
        that names a part file, the larger of its reservation and the part file's size."""
        return sum(
            max(reserved, size)
            for path, reserved, size in _holdings(self.directory)
            if not (isinstance(but, FileLock) and path == but.path)
        )

    async def remove_abandoned(self, older_than: float) -> int:
        return remove_abandoned_files(self.directory, older_than)

    def sweep(self) -> int:
        return remove_abandoned_files(self.directory, _TEMP_UNTOUCHED, _UNNAMED_GRACE)


_HELD: list[int] = []  # descriptors held for the life of the process: see hold_cache


def hold_cache(directory: Path) -> bool:
    """Hold the cache in `directory` as one of its servers, for as long as this process and
    the workers it forks live; whether no other server holds it. Only a cache's sole
    server may treat what it finds in `tmp/` as leftovers: another server's downloads run
    there (two servers on one cache, on two ports, is how a blue/green restart goes)."""
    fd = os.open(directory / "serving.lock", os.O_RDWR | os.O_CREAT, 0o644)
    _HELD.append(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        alone = True
    except BlockingIOError:
        alone = False
    fcntl.flock(fd, fcntl.LOCK_SH)  # lets the next server start, and learn it is not alone
    return alone


def _holdings(directory: Path) -> list[tuple[Path, int, int]]:
    """(lock file, bytes reserved, part file size) of every lock held with a part file."""
    found = []
    for entry in os.scandir(directory):
        if not entry.name.endswith(".lock"):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            # The header before the holder: one that let go meanwhile is not counted.
            header = _header(_read(fd))
            if header is None or not _held(fd):
                continue
            name, reserved = header
            try:
                size = os.stat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                size = 0
            found.append((Path(entry.path), reserved, size))
        finally:
            os.close(fd)
    return found


def remove_abandoned_files(
    directory: Path, older_than: float, parts_older_than: float | None = None
) -> int:
    """Lock files that no process holds (with the part files they name), and files nobody
    touched for `older_than` seconds (`parts_older_than` for part files no held lock
    names)."""
    now = time.time()
    parts_older_than = older_than if parts_older_than is None else parts_older_than
    removed = 0
    named = set()
    for path in sorted(directory.iterdir()):
        if path.suffix != ".lock":
            continue
        lock = FileLock(path)
        if lock.try_acquire():  # nobody holds it: what it names was removed with it
            lock.release()
            removed += 1
            continue
        header = _header(_read(lock._fd))
        lock.close()
        if header is not None:
            named.add(header[0])
    for path in directory.iterdir():
        if path.suffix == ".lock" or path.name in named:
            continue
        age = parts_older_than if path.suffix == ".part" else older_than
        with contextlib.suppress(FileNotFoundError):
            if now - path.stat().st_mtime > age:
                path.unlink()
                removed += 1
    return removed
