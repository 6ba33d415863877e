"""Copy a source's bytes into a download's part file, hashing them on the way, and check the
length and hashes the index gave. A transfer that fails before its first byte is retried."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import logging
import os
from pathlib import Path

from cachepi.filecache.download import Download
from cachepi.types import DownloadFailed, SourceOpener
from cachepi.upstream import redact

log = logging.getLogger(__name__)

# Chunks a download may have waiting for its hashing thread.
_HASH_QUEUE = 16


async def transfer(download: Download, fd: int, part: Path, source: SourceOpener) -> str:
    """Copy the body from `source` into `fd` (the part file at `part`); returns its
    sha256. A passing failure is retried while no byte has been received."""
    return await download.spec.upstream.retrying(
        lambda: _transfer_once(download, fd, part, source),
        safe=lambda: download.received == 0,
    )


async def _transfer_once(download: Download, fd: int, part: Path, source: SourceOpener) -> str:
    spec = download.spec
    hasher = _Hasher(spec.hashes)
    try:
        async with source() as (length, chunks):
            download.started(os.open(part, os.O_RDONLY), length)
            async for chunk in chunks:
                download.received += len(chunk)
                await hasher.update(chunk)
                if not download.spilled:
                    try:
                        write_all(fd, chunk)
                    except OSError as error:
                        log.error(
                            "cannot store %s (%s): disk full or unwritable; relaying it "
                            "from memory, it will not be cached",
                            redact(spec.url),
                            error.strerror or error,
                        )
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
