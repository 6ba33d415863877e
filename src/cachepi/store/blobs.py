"""Content-addressed blob store in a local directory.

A blob's path comes from its sha256 only, never from a name an upstream or client chose.
New content is always written to a fresh temp file and renamed into place once verified, so a
path under `blobs/` holds complete, verified bytes or does not exist.

The async methods (`open`, `contains`, `put`, `delete`, `scan`, `exclusive`) are what the file
cache uses, and what the S3 store (s3.py) offers too; the temp directory is always local.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cachepi.store.metadata import StoreHealth

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Blob:
    """A stored, verified file, already open (so eviction cannot pull it away between
    lookup and send): the caller sends it and closes `file`."""

    file: BinaryIO
    sha256: str
    size: int


class BlobStore:
    kind = "local"

    def __init__(self, root: Path) -> None:
        self._root = root
        self._blobs = root / "blobs"
        self._tmp = root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self.health = StoreHealth()  # a local directory: nothing to watch

    @property
    def temp_dir(self) -> Path:
        """Where unfinished work lives: temp and part files, and locks (see locks.py)."""
        return self._tmp

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        """Hold the store-wide lock: one process at a time counts, evicts and adds blobs.
        Held for milliseconds, so a blocking flock is fine. Yields whether it is held."""
        fd = os.open(self._root / "store.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        finally:
            os.close(fd)

    async def open(self, sha256: str) -> Blob | None:
        try:
            file = self.path(sha256).open("rb")
        except FileNotFoundError:
            return None
        return Blob(file, sha256, os.fstat(file.fileno()).st_size)

    def local_path(self, sha256: str) -> Path | None:
        """Where a blob's bytes can be read as a file (for METADATA extraction)."""
        return self.path(sha256)

    async def contains(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def sync(self, fd: int) -> None:
        """Make bytes written through `fd` durable before they are `put`: after a crash a
        blob is whole or absent. Slow enough on a big file to stall the event loop: off it."""
        await asyncio.to_thread(os.fsync, fd)

    async def put(self, fd: int, temp: Path, sha256: str) -> None:
        """Make the verified, synced bytes in `temp` the blob `sha256`."""
        self.commit(temp, sha256)

    async def remove(self, sha256: str) -> None:
        self.delete(sha256)

    async def remove_stale_pieces(self, older_than: float) -> int:
        """Nothing to do: a local download is followed through its part file."""
        return 0

    async def listing(self) -> AsyncIterator[tuple[str, int]]:
        for item in self.scan():
            yield item

    def path(self, sha256: str) -> Path:
        if not _SHA256_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self._blobs / sha256[:2] / sha256

    def new_temp(self) -> tuple[int, Path]:
        """A new, empty temp file: (open fd for writing, its path)."""
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="dl-")
        return fd, Path(name)

    def commit(self, temp: Path, sha256: str) -> Path:
        """Make a complete, verified temp file the blob for `sha256`. The caller fsyncs it
        first (slow: keep it off the event loop), so after a crash the blob is whole or
        absent."""
        target = self.path(sha256)
        target.parent.mkdir(exist_ok=True)
        os.replace(temp, target)
        return target

    @staticmethod
    def discard(temp: Path) -> None:
        temp.unlink(missing_ok=True)

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def clear_temp(self) -> int:
        """Remove leftovers of downloads a previous process did not finish."""
        removed = 0
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def scan(self) -> Iterator[tuple[str, int]]:
        """Every blob on disk as (sha256, size)."""
        for subdir in self._blobs.iterdir():
            for entry in os.scandir(subdir):
                if _SHA256_RE.match(entry.name):
                    yield entry.name, entry.stat().st_size
