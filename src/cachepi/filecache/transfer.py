"""Copy a source's bytes to where a download's readers read them (a Sink), hashing them on
the way, and check the length and hashes the index gave. A transfer that fails before its
first byte is retried."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import logging
import os
from typing import Protocol

from cachepi.filecache.download import Download
from cachepi.types import DownloadFailed, SourceOpener

log = logging.getLogger(__name__)

# Chunks a download may have waiting for its hashing thread.
_HASH_QUEUE = 16


class Sink(Protocol):
    """Where a transfer puts a download's bytes for its readers."""

    async def open(self, size: int | None) -> int | None:
        """The source's headers are in (`size`: its length, when known). A descriptor the
        readers read the bytes through as they are written, or None: they may not go to
        the disk, relay them from memory. Asked once, also when a transfer is retried."""

    async def write(self, data: bytes) -> bool:
        """Put `data` after what was written; False: no more bytes go to the disk."""


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
    hasher = _Hasher(spec.hashes)
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
                await hasher.update(chunk)
                if not download.spilled and not await sink.write(chunk):
                    download.spill()
                if download.spilled:
                    await download.relay(chunk)
                download.progressed(len(chunk))
        digests = await hasher.hexdigests()
    finally:
        hasher.close()
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


class _Hasher:
    """A download's hashes, computed in order on a thread of its own (hashlib releases the
    GIL), while the event loop receives, writes and relays. Only the digests at the end are
    waited for, and at most a few chunks are queued."""

    def __init__(self, expected: dict[str, str]) -> None:
        self._hashers = {"sha256": hashlib.sha256()}
        for name in expected:
            if name not in self._hashers and name in hashlib.algorithms_available:
                self._hashers[name] = hashlib.new(name)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hash")
        self._queued: collections.deque[asyncio.Future[None]] = collections.deque()

    async def update(self, chunk: bytes) -> None:
        self._queued.append(asyncio.wrap_future(self._thread.submit(self._update, chunk)))
        while self._queued and (self._queued[0].done() or len(self._queued) > _HASH_QUEUE):
            await self._queued.popleft()

    def _update(self, chunk: bytes) -> None:
        for hasher in self._hashers.values():
            hasher.update(chunk)

    async def hexdigests(self) -> dict[str, str]:
        while self._queued:
            await self._queued.popleft()
        return {name: hasher.hexdigest() for name, hasher in self._hashers.items()}

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
