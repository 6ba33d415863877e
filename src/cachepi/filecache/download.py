"""One download, fanned out: any number of readers follow the part file it writes.

A reader's last byte is withheld until the whole file verified, so no client ever completes
a transfer of wrong bytes. When the disk refuses the part file, the download goes on from a
bounded window in memory, paced by the slowest reader.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import os
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from cachepi.types import DownloadFailed
from cachepi.upstream import Index

_CHUNK = 256 * 1024
# What a download may hold in memory when the disk refuses its bytes.
_WINDOW_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileSpec:
    """What to fetch and how to check it: from the index entry that listed the file."""

    url: str
    hashes: dict[str, str]
    size: int | None
    upstream: Index
    # The wheel's filename when its index offers no PEP 658 metadata: extract it once cached.
    wheel_without_metadata: str | None = None
    # What the file is, for the dashboard, `cachepi stats` and `cachepi purge PROJECT`.
    project: str | None = None
    filename: str | None = None

    @property
    def sha256(self) -> str | None:
        return self.hashes.get("sha256")


class _State(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Download:
    """One transfer into a part file that any number of readers follow as it grows."""

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

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
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
