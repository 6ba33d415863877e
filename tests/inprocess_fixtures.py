"""Fixtures and helpers the in-process tests share: a fake clock, the embedded stores in
tmp_path, file caches made on them (closed at teardown), and reading an answer whole.

Import the fixtures into a test module to use them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from cachepi.filecache import Download, DownloadLimits, FileCache
from cachepi.store import Stores
from cachepi.store.protocols import StoredBlob
from tests.inprocess import FakeClock, local_stores

FileCacheFactory = Callable[..., Awaitable[FileCache]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    stores = local_stores(tmp_path)
    yield stores
    stores.close()


@pytest.fixture
async def make_file_cache(stores: Stores, clock: FakeClock) -> AsyncIterator[FileCacheFactory]:
    """Open file caches on `stores` with `clock`; every one is closed at teardown."""
    opened: list[FileCache] = []

    async def make(max_bytes: int = 1 << 30, limits: DownloadLimits | None = None) -> FileCache:
        cache = FileCache(stores, max_bytes, clock=clock, limits=limits)
        await cache.open()
        opened.append(cache)
        return cache

    yield make
    for cache in opened:
        await cache.close()


async def read(answer: StoredBlob | Download) -> bytes:
    """All the bytes of a stored blob (closed after) or of a download."""
    if isinstance(answer, Download):
        return b"".join([chunk async for chunk in answer.chunks()])
    try:
        return b"".join([chunk async for chunk in answer.chunks(0, answer.size)])
    finally:
        answer.close()
