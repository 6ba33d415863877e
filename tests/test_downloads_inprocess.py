"""Work nobody asked for, and disk nobody granted, in-process: FakeIndex files paced so the
test sees a download mid-way, a FakeClock, the embedded stores.

A download whose clients all left stops unless it will be kept; one that will be kept runs
on. Every download reserves its room in the cache before its part file grows (the whole
size, or in steps when unknown); what gets no room streams through memory and is not kept.
Downloads per index and per client are bounded: beyond, a miss waits, then is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest

from cachepi.filecache import Busy, Claim, Download, DownloadLimits, sinks
from cachepi.filecache.limits import Slots
from cachepi.store import Stores
from cachepi.store.protocols import StoredBlob
from cachepi.types import DownloadFailed
from cachepi.upstream import UpstreamError
from tests.fakeupstream.dists import Dist
from tests.inprocess import FakeIndex, settle
from tests.inprocess_fixtures import FileCacheFactory, clock, make_file_cache, stores
from tests.test_file_cache_inprocess import leftovers, sdist, spec_for, stored


class PacedIndex(FakeIndex):
    """A FakeIndex whose file bodies come one chunk per `pace` seconds, that can leave the
    length out, and that records how much of each body it handed out and whether the
    reader let go before the end."""

    def __init__(self, pace: float = 0.005, chunk: int = 16 * 1024, length: bool = True) -> None:
        super().__init__("pypi", chunk=chunk)
        self.pace = pace
        self.length = length
        self.handed: dict[str, int] = {}
        self.abandoned: set[str] = set()

    @contextlib.asynccontextmanager
    async def open_file(self, url: str) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        path = url.removeprefix(self.url)
        self.requests[path] += 1
        data = self.files[url]
        self.handed[url] = 0
        await self._transit()  # held by hold(), until release()

        async def chunks() -> AsyncIterator[bytes]:
            try:
                for start in range(0, len(data), self._chunk):
                    piece = data[start : start + self._chunk]
                    self.handed[url] += len(piece)
                    yield piece
                    await asyncio.sleep(self.pace)
            except GeneratorExit:
                self.abandoned.add(url)
                raise

        body = chunks()
        try:
            yield (len(data) if self.length else None), body
        finally:
            if self.handed[url] < len(data):
                self.abandoned.add(url)
            await body.aclose()


MIB = 1024 * 1024


async def first_bytes(claim: StoredBlob | Claim) -> bytes:
    assert isinstance(claim, Claim)
    async with contextlib.aclosing(claim.chunks()) as chunks:
        return await anext(chunks)


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - the conditions are plain state
            await asyncio.sleep(0.005)


def temp_bytes(stores: Stores) -> int:
    return sum(p.stat().st_size for p in stores.blobs.temp_dir.iterdir())


# -- work nobody asked for -------------------------------------------------------------------


@pytest.mark.parametrize("max_bytes", [0, 100_000], ids=["cache-0", "bigger-than-the-cache"])
async def test_a_download_whose_clients_left_stops_when_it_will_not_be_kept(
    max_bytes: int, stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    index = PacedIndex()
    cache = await make_file_cache(max_bytes)
    dist = sdist(1_000_000)
    spec = spec_for(index, dist)  # type: ignore[arg-type]
    async with cache.serve(spec, "192.0.2.1") as first, cache.serve(spec, "192.0.2.2") as second:
        assert isinstance(first, Claim) and isinstance(second, Claim)
        assert first.download is second.download  # one download for both
        assert await first_bytes(first) == dist.read_bytes()[: len(await first_bytes(second))]
    await until(lambda: spec.url in index.abandoned and cache.downloading == 0)
    assert index.handed[spec.url] < dist.size // 2
    assert await stored(stores) == {} and leftovers(stores) == []
    # The next client starts afresh, and gets all of it.
    async with cache.serve(spec, "192.0.2.1") as again:
        assert isinstance(again, Claim)
        body = b"".join([chunk async for chunk in again.chunks()])
    assert body == dist.read_bytes() and index.count(f"blob-x/{dist.filename}") == 2


async def test_a_download_that_will_be_kept_runs_on_when_its_clients_left(
    stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    index = PacedIndex(pace=0.001)
    cache = await make_file_cache()
    dist = sdist(500_000)
    spec = spec_for(index, dist)  # type: ignore[arg-type]
    async with cache.serve(spec, "192.0.2.1") as client:
        await first_bytes(client)
    await until(lambda: cache.downloading == 0)
    assert index.abandoned == set() and index.handed[spec.url] == dist.size
    assert await stored(stores) == {dist.sha256: dist.size}
    async with cache.serve(spec, "192.0.2.1") as hit:  # the next client: from the cache
        assert not isinstance(hit, Claim)
    assert index.count(f"blob-x/{dist.filename}") == 1


async def test_a_client_that_leaves_before_the_headers_stops_an_unkept_download(
    stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    index = PacedIndex()
    cache = await make_file_cache(0)
    dist = sdist(300_000)
    spec = spec_for(index, dist)  # type: ignore[arg-type]
    index.hold()
    waiting = asyncio.create_task(cache.serve(spec, "192.0.2.1").__aenter__())
    await settle()
    waiting.cancel()  # the client hung up while the upstream was silent
    with pytest.raises(asyncio.CancelledError):
        await waiting
    index.release()
    await until(lambda: cache.downloading == 0)
    assert index.handed.get(spec.url, 0) < dist.size and leftovers(stores) == []


# -- disk ------------------------------------------------------------------------------------


async def test_in_progress_downloads_count_against_the_cache_size(
    stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    index = PacedIndex(pace=0.002)
    cache = await make_file_cache(max_bytes=100_000)
    a, b = sdist(60_000, "a"), sdist(60_000, "b")
    peak = 0

    async def read(dist: Dist) -> bytes:
        nonlocal peak
        async with cache.serve(spec_for(index, dist), None) as claim:  # type: ignore[arg-type]
            assert isinstance(claim, Claim)
            body = b""
            async for chunk in claim.chunks():
                body += chunk
                blobs = sum(size for _, size in stores.metadata.blobs().items())
                peak = max(peak, blobs + temp_bytes(stores))
            return body

    bodies = await asyncio.gather(read(a), read(b))
    assert bodies == [a.read_bytes(), b.read_bytes()]
    # Only one of them had room: the other streamed through memory and was not kept.
    assert len(await stored(stores)) == 1
    assert peak <= 100_000 and leftovers(stores) == []


async def test_a_reservation_evicts_the_least_recently_used_to_make_room(
    stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    index = PacedIndex(pace=0)
    cache = await make_file_cache(max_bytes=100_000)
    old, new = sdist(60_000, "old"), sdist(60_000, "new")
    for dist in (old, new):
        async with cache.serve(spec_for(index, dist), None) as claim:  # type: ignore[arg-type]
            assert isinstance(claim, Claim)
            assert b"".join([c async for c in claim.chunks()]) == dist.read_bytes()
    assert await stored(stores) == {new.sha256: new.size}


async def test_a_download_of_unknown_size_reserves_as_it_grows_and_streams_on_past_the_room(
    stores: Stores, make_file_cache: FileCacheFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sinks, "GROWTH_BYTES", 64 * 1024)
    index = PacedIndex(pace=0.001, length=False)
    cache = await make_file_cache(max_bytes=200_000)
    big = sdist(1_000_000)
    spec = spec_for(index, big, size=None)  # type: ignore[arg-type]
    peak = 0
    async with cache.serve(spec, None) as claim:
        assert isinstance(claim, Claim)
        body = b""
        async for chunk in claim.chunks():
            body += chunk
            peak = max(peak, temp_bytes(stores))
    assert body == big.read_bytes()
    assert 0 < peak <= 200_000  # it started on disk, and stopped growing there
    assert await stored(stores) == {} and leftovers(stores) == []


async def test_a_part_file_goes_to_the_disk_as_it_grows_and_one_that_cannot_is_not_kept(
    stores: Stores, make_file_cache: FileCacheFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Synced in steps, so that little is left to sync before the last byte; a sync that
    fails (the disk gave up on the bytes written) is a disk that refuses them: the rest goes
    on from memory, whole, and the file is not kept."""
    monkeypatch.setattr(sinks, "SYNC_BYTES", 64 * 1024)
    synced: list[int] = []
    monkeypatch.setattr(sinks.os, "fdatasync", lambda fd: synced.append(os.fstat(fd).st_size))
    index = PacedIndex(pace=0.001)
    cache = await make_file_cache()
    kept, refused = sdist(1_000_000, "kept"), sdist(1_000_000, "refused")
    async with cache.serve(spec_for(index, kept), None) as claim:
        assert isinstance(claim, Claim)
        assert b"".join([c async for c in claim.chunks()]) == kept.read_bytes()
    # Each sync runs beside the writes: it sees what was written by then.
    assert len(synced) >= 4 and synced == sorted(synced) and synced[0] < kept.size // 2

    def fails(fd: int) -> None:
        if os.fstat(fd).st_size > 300_000:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sinks.os, "fdatasync", fails)
    async with cache.serve(spec_for(index, refused), None) as claim:
        assert isinstance(claim, Claim)
        assert b"".join([c async for c in claim.chunks()]) == refused.read_bytes()
        assert claim.download.spilled
    await until(lambda: cache.downloading == 0)
    assert await stored(stores) == {kept.sha256: kept.size} and leftovers(stores) == []


class BreakingIndex(PacedIndex):
    """A PacedIndex whose bodies break off after `after` bytes."""

    def __init__(self, after: int) -> None:
        super().__init__(pace=0.001)
        self.after = after

    @contextlib.asynccontextmanager
    async def open_file(self, url: str) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        async with super().open_file(url) as (length, body):

            async def breaking() -> AsyncIterator[bytes]:
                async for chunk in body:
                    if self.handed[url] > self.after:
                        raise UpstreamError(f"{url}: upstream broke off the transfer")
                    yield chunk

            yield length, breaking()


async def test_a_transfer_that_fails_while_its_part_file_syncs_never_holds_up_the_loop(
    stores: Stores, make_file_cache: FileCacheFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync runs on a thread of its own, through a descriptor of its own: a transfer
    that fails meanwhile ends without waiting for it, and nothing holds up other work."""
    monkeypatch.setattr(sinks, "SYNC_BYTES", 64 * 1024)
    # A sync that takes 2 s: waited for on the loop, a tick would take at least that.
    monkeypatch.setattr(sinks.os, "fdatasync", lambda fd: time.sleep(2.0))
    index = BreakingIndex(after=300_000)
    cache = await make_file_cache()
    longest = 0.0

    async def tick() -> None:
        nonlocal longest
        began = time.monotonic()
        try:
            while True:
                await asyncio.sleep(0.01)
                longest = max(longest, time.monotonic() - began)
                began = time.monotonic()
        finally:  # also a wait it was cancelled in
            longest = max(longest, time.monotonic() - began)

    ticking = asyncio.create_task(tick())
    try:
        async with cache.serve(spec_for(index, sdist(1_000_000)), None) as claim:
            assert isinstance(claim, Claim)
            with pytest.raises(DownloadFailed):
                async for _ in claim.chunks():
                    pass
        await until(lambda: cache.downloading == 0)
    finally:
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)
    assert longest < 1.0, longest  # far from 2 s, whatever else the machine runs
    assert await stored(stores) == {} and leftovers(stores) == []


async def test_an_unknown_size_that_fits_is_stored(
    stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    index = PacedIndex(pace=0, length=False)
    cache = await make_file_cache()
    dist = sdist(300_000)
    spec = spec_for(index, dist, size=None)  # type: ignore[arg-type]
    async with cache.serve(spec, None) as claim:
        assert isinstance(claim, Claim)
        assert b"".join([c async for c in claim.chunks()]) == dist.read_bytes()
    assert await stored(stores) == {dist.sha256: dist.size}


async def test_an_upstream_that_sends_more_than_it_said_is_cut_off(
    stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    index = PacedIndex(pace=0, length=False)
    cache = await make_file_cache()
    dist = sdist(100_000)
    longer = dist.read_bytes() + b"x" * 50_000
    index.add(dist, served=longer)
    spec = spec_for(index, dist, hashes={})  # type: ignore[arg-type]
    async with cache.serve(spec, None) as claim:
        assert isinstance(claim, Claim)
        with pytest.raises(Exception, match="more than the 100000 bytes"):
            async for _ in claim.chunks():
                pass
    assert index.handed[spec.url] <= 100_000 + index._chunk
    assert await stored(stores) == {} and leftovers(stores) == []


# -- bounds ----------------------------------------------------------------------------------


async def test_slots_bound_per_index_and_per_client_and_refuse_after_the_wait() -> None:
    slots = Slots(DownloadLimits(per_index=2, per_client=1, wait=0.05, retry_after=7))
    first = slots.try_take("pypi", "192.0.2.1")
    assert first is not None
    assert slots.try_take("pypi", "192.0.2.1") is None  # that client's bound
    second = slots.try_take("pypi", "192.0.2.2")
    assert second is not None
    assert slots.try_take("pypi", "192.0.2.3") is None  # the index's bound
    assert slots.try_take("other", "192.0.2.4") is not None  # another index
    with pytest.raises(Busy) as refused:
        await slots.take("pypi", "192.0.2.3")
    assert refused.value.retry_after == 7 and "pypi" in str(refused.value)
    waiting = asyncio.create_task(slots.take("pypi", "192.0.2.3"))
    await settle()
    first.release()
    ticket = await asyncio.wait_for(waiting, 1)  # a freed slot goes to the waiter
    assert slots.running("pypi") == 2
    ticket.release()
    second.release()
    assert slots.running("pypi") == 0


async def test_a_miss_beyond_the_bound_waits_then_is_refused_but_joins_cost_nothing(
    stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    index = PacedIndex(pace=0.01)
    cache = await make_file_cache(limits=DownloadLimits(per_index=1, per_client=0, wait=0.1))
    a, b = sdist(400_000, "a"), sdist(400_000, "b")
    spec_a, spec_b = spec_for(index, a), spec_for(index, b)  # type: ignore[arg-type]
    async with cache.serve(spec_a, "192.0.2.1"), cache.serve(spec_a, "192.0.2.2") as joined:
        assert isinstance(joined, Claim)  # the same download: no slot needed
        with pytest.raises(Busy):
            async with cache.serve(spec_b, "192.0.2.3"):
                pass
    assert index.count(f"blob-b/{b.filename}") == 0
    await until(lambda: cache.downloading == 0)
    async with cache.serve(spec_b, "192.0.2.3") as claim:  # room again
        assert isinstance(claim, Claim)


async def test_downloads_relaying_from_memory_share_a_bounded_budget(
    stores: Stores, make_file_cache: FileCacheFactory
) -> None:
    """Many downloads that cannot use the disk, each with a client that stopped reading:
    together they hold about 64 MiB, not 8 MiB each."""
    index = PacedIndex(pace=0, chunk=256 * 1024)
    cache = await make_file_cache(max_bytes=0)
    files = [sdist(6 * 1024 * 1024, f"m{n}") for n in range(24)]
    async with contextlib.AsyncExitStack() as stack:
        claims = [
            await stack.enter_async_context(cache.serve(spec_for(index, dist), None))  # type: ignore[arg-type]
            for dist in files
        ]
        await asyncio.sleep(0.3)  # nobody reads: every window fills up
        held = sum(c.download._window_bytes for c in claims if isinstance(c, Claim))
        assert held == Download.memory_held
        assert held <= 64 * MIB + 24 * MIB, held  # not 8 MiB each
        for claim in claims:  # and they all go on when their clients read
            assert isinstance(claim, Claim)
            async with contextlib.aclosing(claim.chunks()) as chunks:
                assert len(b"".join([c async for c in chunks])) == 6 * MIB
    await until(lambda: cache.downloading == 0)
    assert Download.memory_held == 0


__all__ = ["clock", "make_file_cache", "stores"]  # fixtures, for pytest
