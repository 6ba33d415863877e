"""The embedded default's blob store: content-addressed files in a local directory.

A blob's path comes from its sha256 only, never from a name an upstream or client chose.
New content is always written to a fresh temp file and renamed into place once verified, so a
path under `blobs/` holds complete, verified bytes or does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cachepi.store.protocols import StoreHealth

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class LocalBlob:
    """A stored blob, open: sent with sendfile, read for extraction and verification."""

    file: BinaryIO
    sha256: str
    size: int

    async def chunks(self, start: int, stop: int) -> AsyncIterator[bytes]:
        fd = self.file.fileno()
        while start < stop:
            data = await asyncio.to_thread(os.pread, fd, min(_CHUNK, stop - start), start)
            if not data:
                return
            start += len(data)
            yield data

    @contextlib.asynccontextmanager
    async def seekable(self) -> AsyncIterator[BinaryIO]:
        self.file.seek(0)
        yield self.file

    async def redirect_url(self) -> str | None:
        return None

    def close(self) -> None:
        self.file.close()


class DirectoryBlobs:
    kind = "local"
    lists_cheaply = True

    def __init__(self, root: Path) -> None:
        self._blobs = root / "blobs"
        self._tmp = root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self.health = StoreHealth()  # a local directory: nothing to watch

    @property
    def temp_dir(self) -> Path:
        return self._tmp

    async def open(self, sha256: str) -> LocalBlob | None:
        try:
            file = self._path(sha256).open("rb")
        except FileNotFoundError:
            return None
        return LocalBlob(file, sha256, os.fstat(file.fileno()).st_size)

    async def contains(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    async def sync(self, fd: int) -> None:
        # fsync takes long enough on big files to stall other requests: off the loop.
        await asyncio.to_thread(os.fsync, fd)

    async def put(self, fd: int, temp: Path, sha256: str) -> None:
        target = self._path(sha256)
        target.parent.mkdir(exist_ok=True)
        os.replace(temp, target)

    async def remove(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    async def listing(self) -> AsyncIterator[tuple[str, int]]:
        for subdir in self._blobs.iterdir():
            for entry in os.scandir(subdir):
                if SHA256_RE.match(entry.name):
                    yield entry.name, entry.stat().st_size

    def _path(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self._blobs / sha256[:2] / sha256

    def new_temp(self) -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="dl-")
        return fd, Path(name)

    def discard(self, temp: Path) -> None:
        temp.unlink(missing_ok=True)

    def clear_temp(self) -> int:
        removed = 0
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed
