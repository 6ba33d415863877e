"""Copy a source's bytes to where a download's readers read them (a Sink), hashing them on
the way, and check the length and hashes the index gave. A transfer that fails before its
first byte is retried.

The event loop only takes bytes in: two threads of the transfer's own hash and write them
side by side, a batch at a time (whatever arrived while they did the previous batch), and
readers learn of bytes once they are written (all but the last, which waits until the whole
file verified). A batch is bounded: the source waits while the threads are behind, so a
transfer holds a few batches of memory however fast its upstream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Protocol

from cachepi.filecache.download import Download
from cachepi.types import DownloadFailed, SourceOpener

log = logging.getLogger(__name__)

# What the loop gathers while the thread does the previous batch, before it waits for it.
_BATCH_BYTES = 4 * 1024 * 1024


class Sink(Protocol):
    """Where a transfer puts a download's bytes for its readers."""

    async def open(self, size: int | None) -> int | None:
        """The source's headers are in (`size`: its length, when known). A descriptor the
        readers read the bytes through as they are written, or None: they may not go to
        the disk, relay them from memory. Asked once, also when a transfer is retried."""

    async def room(self, end: int) -> bool:
        """Whether the file may grow to `end` bytes; False: no more bytes go to the disk."""

    def write(self, chunks: Sequence[bytes]) -> int:
        """On the transfer's writing thread: put `chunks` after what was written; returns
        the bytes written, fewer than given when the disk refused them (then no more go to
        it)."""


async def transfer(download: Download, source: SourceOpener, sink: Sink) -> str:
    """Copy the body from `source` into `sink`; returns its sha256. A passing failure is
    retried while no byte has been received."""
    opened: list[int | None] = []
    return await download.spec.upstream.retrying(
        lambda: _transfer_once(download, source, sink, opened),
        safe=lambda: download.received == 0,
    )


async def _transfer_once(
    download: Download, source: SourceOpener, sink: Sink, opened: list[int | None]
) -> str:
    spec = download.spec
    copier = _Copier(download, sink, spec.hashes)
    try:
        async with source() as (length, chunks):
            size = _expected_size(spec.size, length)
            if not opened:
                opened.append(await sink.open(size))
                download.started(opened[0], size)
            async for chunk in chunks:
                download.received += len(chunk)
                if size is not None and download.received > size:
                    # Never more than was said: that much was reserved on the disk.
                    raise DownloadFailed(f"the upstream sent more than the {size} bytes it said")
                await copier.add(chunk)
        digests = await copier.finish()
    finally:
        await copier.close()
    for expected in (spec.size, download.size):
        if expected is not None and expected != download.written:
            raise DownloadFailed(
                f"got {download.written} bytes, the index or upstream said {expected}"
            )
    for name, expected_digest in spec.hashes.items():
        if name in digests and digests[name] != expected_digest.lower():
            raise DownloadFailed(f"{name} mismatch: the upstream sent different bytes")
    return digests["sha256"]


def _expected_size(listed: int | None, length: int | None) -> int | None:
    """The file's size as the index and the upstream's headers say; both must agree."""
    if listed is not None and length is not None and listed != length:
        raise DownloadFailed(f"the upstream says {length} bytes, the index said {listed}")
    return listed if listed is not None else length


class _Batch:
    """Bytes handed to the threads at once, and what became of them."""

    def __init__(self, chunks: list[bytes], size: int, to_disk: bool) -> None:
        self.chunks = chunks
        self.size = size
        self.to_disk = to_disk
        self.written = 0
        self.told = False  # whether readers were told of the bytes written


class _Copier:
    """A download's bytes, hashed and (unless it relays from memory) written in order on two
    threads of their own, one batch at a time, while the loop gathers the next batch."""

    def __init__(self, download: Download, sink: Sink, expected: dict[str, str]) -> None:
        self._download = download
        self._sink = sink
        self._hashers = {"sha256": hashlib.sha256()}
        for name in expected:
            if name not in self._hashers and name in hashlib.algorithms_available:
                self._hashers[name] = hashlib.new(name)
        # hashlib and os.write let go of the GIL while they work.
        self._hashing = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hash")
        self._writing = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="write")
        self._gathered: list[bytes] = []
        self._gathered_bytes = 0
        self._busy: tuple[_Batch, list[asyncio.Future[None]]] | None = None
        self._running: list[concurrent.futures.Future[None]] = []  # the last batch's work

    async def add(self, chunk: bytes) -> None:
        self._gathered.append(chunk)
        self._gathered_bytes += len(chunk)
        # Idle threads take what there is at once (readers get bytes soon); busy ones get a
        # bigger batch next.
        if (
            self._busy is None
            or all(work.done() for work in self._busy[1])
            or self._gathered_bytes >= _BATCH_BYTES
        ):
            await self._hand_on()

    async def finish(self) -> dict[str, str]:
        """Every byte hashed and handed on: the hex digests."""
        await self._hand_on()
        await self._settle()
        return {name: hasher.hexdigest() for name, hasher in self._hashers.items()}

    async def close(self) -> None:
        """Once the threads are done with the batch they have: the sink's file is theirs
        until then. Waited for off the loop (a write may be syncing), unless cancelled."""
        try:
            for running in self._running:
                with contextlib.suppress(Exception):  # raised where it was awaited, if at all
                    await asyncio.wrap_future(running)
        finally:
            for threads in (self._hashing, self._writing):
                threads.shutdown(wait=True, cancel_futures=True)

    async def _hand_on(self) -> None:
        """The gathered bytes to the threads, once they are done with the previous batch; to
        the readers from memory too, when the disk takes no more."""
        await self._settle()
        if not self._gathered:
            return
        download = self._download
        batch = _Batch(self._gathered, self._gathered_bytes, not download.spilled)
        self._gathered, self._gathered_bytes = [], 0
        if batch.to_disk and not await self._sink.room(download.written + batch.size):
            download.spill()
            batch.to_disk = False
        self._running = [self._hashing.submit(self._hash, batch)]
        if batch.to_disk:
            self._running.append(self._writing.submit(self._write, batch))
        work = [asyncio.wrap_future(running) for running in self._running]
        if batch.to_disk:
            work[-1].add_done_callback(lambda _: self._tell(batch))
        self._busy = batch, work
        if not batch.to_disk:  # while it is hashed
            await self._relay(batch.chunks, 0)

    def _hash(self, batch: _Batch) -> None:
        for chunk in batch.chunks:
            for hasher in self._hashers.values():
                hasher.update(chunk)

    def _write(self, batch: _Batch) -> None:
        batch.written = self._sink.write(batch.chunks)

    def _tell(self, batch: _Batch) -> None:
        """Readers learn of the bytes written as soon as they are, once."""
        if batch.to_disk and not batch.told:
            batch.told = True
            self._download.progressed(batch.written)

    async def _settle(self) -> None:
        """Wait for the threads' batch; what the disk refused of it goes on from memory."""
        if self._busy is None:
            return
        batch, work = self._busy
        self._busy = None
        for done in work:
            await done
        self._tell(batch)
        if batch.to_disk and batch.written < batch.size:
            self._download.spill()
            await self._relay(batch.chunks, batch.written)

    async def _relay(self, chunks: list[bytes], skip: int) -> None:
        """`chunks` but their first `skip` bytes, to the readers from memory."""
        for chunk in chunks:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            data = chunk[skip:] if skip else chunk
            skip = 0
            await self._download.relay(data)
            self._download.progressed(len(data))


def write_all(fd: int, data: bytes) -> None:
    _, error = write_chunks(fd, (data,))
    if error is not None:
        raise error


def write_chunks(fd: int, chunks: Sequence[bytes]) -> tuple[int, OSError | None]:
    """Write `chunks` at `fd`'s position: the bytes written, and what stopped it if it did
    not write them all."""
    written = 0
    for chunk in chunks:
        view = memoryview(chunk)
        try:
            while view:
                count = os.write(fd, view)
                written += count
                view = view[count:]
        except OSError as error:
            return written, error
    return written, None
