"""One download, fanned out: any number of readers follow the part file it writes.

Readers get the bytes written so far as spans of that file (for sendfile), or as bytes. A
reader's last byte is withheld until the whole file verified, so no client ever completes
a transfer of wrong bytes. A download that may not use the disk (the file will not be kept:
it cannot fit in the cache, or the disk refuses its bytes) goes on from a bounded window in
memory instead, paced by the slowest reader.

Clients hold a claim on the download they read (`join`); when the last one lets go, the
download's owner is told (`on_idle`) and may stop it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import os
import weakref
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import BinaryIO

from cachepi.types import DownloadFailed
from cachepi.upstream import Index

_CHUNK = 256 * 1024
# What a download may hold in memory when it cannot use the disk: up to this much, while
# all of this process's downloads hold less than _MEMORY_BYTES together; any one may always
# hold _MIN_WINDOW_BYTES.
_WINDOW_BYTES = 8 * 1024 * 1024
_MEMORY_BYTES = 64 * 1024 * 1024
_MIN_WINDOW_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes a reader may send straight from the file they were written to: `size` bytes
    from `offset` of `file` (the download's, open while the download is referenced; its
    position is every reader's, so read it only at an offset)."""

    file: BinaryIO
    offset: int
    size: int


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

    # Bytes the memory windows of this process's downloads hold (until every reader is past
    # them, or gone).
    memory_held = 0

    def __init__(self, spec: FileSpec) -> None:
        self.spec = spec
        self.size: int | None = spec.size
        # Bytes that came from the source, and bytes handed on to readers.
        self.received = 0
        self.written = 0
        self._state = _State.RUNNING
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self._headers = asyncio.Event()
        self._started = False
        self._file: BinaryIO | None = None
        # Without the disk (from the start, or once it refused the part file), bytes from
        # `_disk_end` on are relayed from a bounded window in memory, paced by the slowest
        # reader.
        self._disk_end: int | None = None
        self._window: collections.deque[bytes] = collections.deque()
        self._window_start = 0
        self._window_bytes = 0
        self._positions: dict[object, int] = {}
        self._consumed = asyncio.Event()
        # Clients holding a claim, and whether anyone ever did (a download nobody claims
        # is never idle: it runs to its end).
        self.clients = 0
        self._claimed = False
        self.on_idle: Callable[[Download], None] = lambda download: None

    # -- the writer's side ------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def started(self, read_fd: int | None, size: int | None) -> None:
        """The source's headers are in: its bytes will be readable through `read_fd` (owned
        from now on; closed with the last reference, and valid after the file is renamed or
        unlinked), or, with None, only from memory. Called again when a transfer is retried:
        what the first call set stays."""
        if self._started:
            if read_fd is not None:
                os.close(read_fd)
            return
        self._started = True
        if read_fd is None:
            self.spill()
        else:
            self._file = open(read_fd, "rb", buffering=0)  # noqa: SIM115 - closed below
            weakref.finalize(self, self._file.close)
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
        if self._disk_end is None:
            self._disk_end = self._window_start = self.written
            if self._claimed and not self.clients:
                self.on_idle(self)

    async def relay(self, data: bytes) -> None:
        """Hand on bytes the disk would not take, once every reader made room for them."""
        while self._window and self._too_much(len(data)):
            self._trim()
            if self._too_much(len(data)):
                await self._consumed.wait()  # this download's readers must read first
                self._consumed.clear()
        self._window.append(data)
        self._window_bytes += len(data)
        Download.memory_held += len(data)

    def _too_much(self, more: int) -> bool:
        mine = self._window_bytes + more
        if mine > _WINDOW_BYTES:
            return True
        return mine > _MIN_WINDOW_BYTES and Download.memory_held + more > _MEMORY_BYTES

    def _trim(self) -> None:
        """Drop window chunks that every reader is past."""
        slowest = min(self._positions.values(), default=self.written)
        while self._window and self._window_start + len(self._window[0]) <= slowest:
            dropped = self._window.popleft()
            self._window_start += len(dropped)
            self._window_bytes -= len(dropped)
            Download.memory_held -= len(dropped)

    def _free_window(self) -> None:
        """The download ended and no reader is left: its window goes."""
        if self.done and not self._positions and self._window:
            Download.memory_held -= self._window_bytes
            self._window.clear()
            self._window_bytes = 0

    def _piece(self, position: int, available: int, largest: int) -> bytes | Span:
        """What comes from `position` on, up to `available` and at most `largest` bytes: a
        span of the part file, or bytes from the window."""
        if self._disk_end is None or position < self._disk_end:
            limit = available if self._disk_end is None else min(available, self._disk_end)
            assert self._file is not None
            return Span(self._file, position, min(limit - position, largest))
        if position < self._window_start:
            raise DownloadFailed("these bytes are gone from memory (the file is not on disk)")
        offset = self._window_start
        for data in self._window:
            if offset + len(data) > position:
                return data[position - offset : min(available, position + largest) - offset]
            offset += len(data)
        raise AssertionError("a position below `available` is always in the window")

    @property
    def done(self) -> bool:
        return self._state is not _State.RUNNING

    @property
    def joinable(self) -> bool:
        """Whether a new reader can still get every byte from this download: it runs, and
        none of its bytes are gone from memory yet."""
        return not self.done and (self._disk_end is None or self._window_start == 0)

    async def wait_changed(self) -> None:
        """Until more bytes arrived or the download ended."""
        await self._changed.wait()

    def finished(self, error: BaseException | None) -> None:
        if self._state is not _State.RUNNING:
            return
        self._state = _State.FAILED if error else _State.DONE
        self._error = _without_frames(error)
        self._headers.set()
        self._notify()
        self._free_window()

    # -- the readers' side ------------------------------------------------------------------

    def join(self) -> Claim:
        """A client's claim on this download: it keeps the download wanted, and byte 0 in
        memory, until the client starts reading. Close it when the client is done."""
        return Claim(self)

    def _leave(self) -> None:
        self.clients -= 1
        if not self.clients:
            self.on_idle(self)

    async def wait_started(self) -> None:
        """Return once the source sent its headers; raise if it failed before that."""
        await self._headers.wait()
        if self._state is _State.FAILED and not self._started:
            if isinstance(self._error, Exception):
                raise self._error
            raise DownloadFailed("download cancelled")

    async def pieces(
        self, start: int = 0, end: int | None = None, me: object | None = None,
        largest: int = _CHUNK,
    ) -> AsyncGenerator[bytes | Span, None]:  # fmt: skip
        """The bytes [start, end) as they arrive, as spans of the part file where they are
        on the disk, each at most `largest` bytes.

        A reader's final byte is withheld until the whole file verified, and DownloadFailed
        is raised if it does not: no client ever completes a transfer of unverified bytes,
        not even of a range.
        """
        position = start
        me = object() if me is None else me
        self._positions[me] = position
        try:
            while end is None or position < end:
                if self._state is _State.FAILED:
                    raise DownloadFailed(str(self._error) or "the download was stopped")
                done = self._state is _State.DONE
                available = self.written if end is None else min(self.written, end)
                if not done:
                    available = min(available, self.written - 1, (end or self.written) - 1)
                if position < available:
                    piece = self._piece(position, available, largest)
                    position += len(piece) if isinstance(piece, bytes) else piece.size
                    self._positions[me] = position
                    if self._window:
                        self._trim()
                    self._consumed.set()
                    yield piece
                elif done:
                    return
                else:
                    await self._changed.wait()
        finally:
            self._positions.pop(me, None)
            self._consumed.set()
            self._free_window()

    async def chunks(
        self, start: int = 0, end: int | None = None, me: object | None = None
    ) -> AsyncGenerator[bytes, None]:
        """`pieces`, all as bytes."""
        async with contextlib.aclosing(self.pieces(start, end, me)) as pieces:
            async for piece in pieces:
                yield piece if isinstance(piece, bytes) else _read_span(piece)


def _read_span(span: Span) -> bytes:
    data = os.pread(span.file.fileno(), span.size, span.offset)
    if len(data) != span.size:  # a part file is never cut short: never send less than said
        raise DownloadFailed(f"the part file ended at {span.offset + len(data)} bytes")
    return data


class Claim:
    """One client's hold on a download (see `Download.join`)."""

    def __init__(self, download: Download) -> None:
        self.download = download
        self._open = True
        download.clients += 1
        download._claimed = True
        download._positions[self] = 0  # the window keeps byte 0 until this client reads

    @property
    def size(self) -> int | None:
        return self.download.size

    def chunks(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        return self.download.chunks(start, end, self)

    def pieces(
        self, start: int = 0, end: int | None = None, largest: int = _CHUNK
    ) -> AsyncGenerator[bytes | Span, None]:
        return self.download.pieces(start, end, self, largest)

    def close(self) -> None:
        if self._open:
            self._open = False
            self.download._positions.pop(self, None)
            self.download._consumed.set()
            self.download._free_window()
            self.download._leave()


def _without_frames(error: BaseException | None) -> BaseException | None:
    """`error` (and what it came from) without its traceback: the frames of the download's
    own code hold the download, so a kept traceback makes a cycle, and the part file it
    holds open (its disk space, on a full disk) would go only with a garbage collection.
    Readers raise it anew; where it happened was logged when it happened."""
    seen: set[int] = set()
    link = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return error
