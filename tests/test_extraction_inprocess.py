"""Extracting METADATA from cached wheels is background work: scheduled (the caller goes on at
once), one attempt at a time on a thread of its own (never the default pool that parses and
renders pages), a bounded queue, and hostile wheels refused without costing memory."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, BinaryIO

import pytest

from cachepi.filecache import FileCache, FileSpec, extraction
from cachepi.store import Stores
from cachepi.wheelmeta import UNREADABLE
from tests.fakeupstream.dists import Dist, build_wheel
from tests.hostile_wheels import bomb_wheel, many_entries_wheel, peak_rss, peak_rss_reset
from tests.inprocess import FakeClock, FakeIndex, settle
from tests.inprocess_fixtures import read, stores


@pytest.fixture
def index() -> FakeIndex:
    return FakeIndex("pypi")


@pytest.fixture
async def cache(stores: Stores) -> AsyncIterator[FileCache]:
    cache = FileCache(stores, 1 << 30, clock=FakeClock())
    await cache.open()
    yield cache
    await cache.extractions.close()
    await cache.close()
    stores.close()


def spec_for(index: FakeIndex, dist: Dist, *, extract: bool) -> FileSpec:
    """The spec of `dist` from an index without PEP 658 metadata; `extract`: as the file
    cache gives it (extracted once stored), else not (for tests that schedule it)."""
    url = index.add(dist, metadata=False)
    return FileSpec(
        url, {"sha256": dist.sha256}, dist.size, index,
        dist.filename if extract else None, dist.project, dist.filename,
    )  # fmt: skip


async def store(cache: FileCache, index: FakeIndex, dist: Dist) -> None:
    """Cache `dist` without extracting anything from it."""
    assert await read(await cache.get(spec_for(index, dist, extract=False))) == dist.read_bytes()


async def test_schedule_returns_at_once_and_the_pair_follows(
    cache: FileCache, index: FakeIndex
) -> None:
    wheel = build_wheel("lib", "1.0")
    await store(cache, index, wheel)
    cache.extractions.schedule(wheel.sha256, wheel.filename, "lib")
    assert cache.extractions.known()[1] == {}  # nothing happened yet: the caller went on
    assert not cache.extractions.wanted(wheel.sha256)  # one attempt at a time per wheel
    cache.extractions.schedule(wheel.sha256, wheel.filename, "lib")  # a no-op
    await cache.extractions.drain()
    assert cache.extractions.known()[1] == {wheel.sha256: wheel.metadata_sha256}


async def test_a_zip_bomb_is_served_whole_but_not_extracted_and_memory_stays_flat(
    cache: FileCache, index: FakeIndex, stores: Stores
) -> None:
    """A 6.7 MB wheel whose METADATA claims 1 KiB and inflates to 1 GiB: extracting it took
    over 2 GiB of memory. The client gets the wheel's bytes; nothing is advertised for it."""
    bomb = bomb_wheel("lib", "1.0")
    spec = spec_for(index, bomb, extract=True)
    if not peak_rss_reset():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    before = peak_rss()
    assert await read(await cache.get(spec)) == bomb.read_bytes()
    await cache.extractions.drain()
    for _ in range(5):  # hits: not tried again
        assert await read(await cache.get(spec)) == bomb.read_bytes()
        await settle()
    await cache.extractions.drain()
    assert peak_rss() - before < 50 * 1024**2
    assert cache.extractions.known()[1] == {bomb.sha256: UNREADABLE}  # advertised as none
    assert stores.metadata.blobs() == {bomb.sha256: bomb.size}  # the wheel, no METADATA blob


class RecordingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The default executor, noting what runs on it."""

    def __init__(self) -> None:
        super().__init__(4)
        self.ran: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.ran.append(getattr(fn, "__name__", repr(fn)))
        self.ran += [getattr(arg, "__name__", "") for arg in args]
        return super().submit(fn, *args, **kwargs)


async def test_extractions_run_one_at_a_time_off_the_default_pool_with_a_bounded_queue(
    cache: FileCache, index: FakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = [build_wheel(f"lib{i}", "1.0") for i in range(extraction.QUEUED + 8)]
    for wheel in wheels:
        await store(cache, index, wheel)
    running, most, threads = 0, 0, set()
    lock = threading.Lock()
    real = extraction.read_wheel_metadata

    def slow_read(file: BinaryIO, filename: str) -> bytes | None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threads.add(threading.current_thread().name)
        time.sleep(0.002)
        try:
            return real(file, filename)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(extraction, "read_wheel_metadata", slow_read)
    pool = RecordingExecutor()
    asyncio.get_running_loop().set_default_executor(pool)
    for wheel in wheels:
        cache.extractions.schedule(wheel.sha256, wheel.filename, wheel.project)
    dropped = wheels[extraction.QUEUED :]
    assert not any(cache.extractions.wanted(w.sha256) for w in wheels)  # busy or full
    await cache.extractions.drain()
    pairs = cache.extractions.known()[1]
    assert set(pairs) == {w.sha256 for w in wheels[: extraction.QUEUED]}
    assert all(cache.extractions.wanted(w.sha256) for w in dropped)  # asked again later
    assert most == 1
    assert len(threads) == 1 and threads.pop().startswith("cachepi-extract")
    assert "slow_read" not in pool.ran and "read_wheel_metadata" not in pool.ran


async def test_an_archive_of_too_many_entries_costs_a_bounded_moment(
    cache: FileCache, index: FakeIndex
) -> None:
    """A 200,000-entry wheel whose end record claims 5 (so the directory is scanned up to
    the bound): zipfile parsed every entry first, over a second a time."""
    crowd = many_entries_wheel("lib", "1.0", 200_000, claimed_entries=5)
    await store(cache, index, crowd)
    started = time.perf_counter()
    await cache.extractions.extract(crowd.sha256, crowd.filename, "lib")
    assert time.perf_counter() - started < 1
    assert cache.extractions.known()[1] == {crowd.sha256: UNREADABLE}
    assert not cache.extractions.wanted(crowd.sha256)  # remembered: hits do not try again


async def test_closing_cancels_scheduled_extractions(cache: FileCache, index: FakeIndex) -> None:
    wheels = [build_wheel(f"lib{i}", "1.0") for i in range(3)]
    for wheel in wheels:
        await store(cache, index, wheel)
        cache.extractions.schedule(wheel.sha256, wheel.filename, wheel.project)
    await cache.extractions.close()
    await cache.extractions.drain()  # nothing left running
    assert len(cache.extractions.known()[1]) < 3


__all__ = ["stores"]  # fixtures, for pytest
