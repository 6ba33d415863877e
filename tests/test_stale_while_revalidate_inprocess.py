"""Stale-while-revalidate and refresh-ahead in-process: FakeIndex upstreams (held to stand
for a slow one), a FakeClock, the embedded stores.

A held upstream makes "answered without waiting" exact: an answer that waited for the
revalidation could not be there before the upstream is released.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cachepi.combine import Combine
from cachepi.freshness import refresh_margin
from cachepi.index import IndexCache
from cachepi.metrics import Metrics, Snapshot
from cachepi.store import Stores
from cachepi.types import CacheResult
from cachepi.upstream import PageResponse
from cachepi.upstream_pages import PAUSE_AFTER_FAILURE, UpstreamPages
from tests.fakeupstream.dists import build_sdist, build_wheel
from tests.inprocess import FakeClock, FakeIndex, settle
from tests.inprocess_fixtures import clock, stores

TTL = 600
NEGATIVE_TTL = 60
BOUND = 86400
DAY = 86400.0
LIB_1 = ["lib-1.0-py3-none-any.whl", "lib-1.0.tar.gz"]
LIB_2 = [*LIB_1, "lib-2.0.tar.gz"]
AHEAD = TTL - refresh_margin(TTL)  # the age from which a request refreshes ahead: 480 s


class Made:
    """The caches `make` opened, closed (their background refreshes cancelled) at teardown."""

    def __init__(self, stores: Stores, clock: FakeClock) -> None:
        self.stores, self.clock = stores, clock
        self.pages: list[UpstreamPages] = []

    def __call__(
        self, *indexes: FakeIndex, bound: float = BOUND, metrics: Metrics | None = None,
        offline: bool = False, **options: Any,
    ) -> IndexCache:  # fmt: skip
        pages = UpstreamPages(
            indexes, self.stores.metadata, self.stores.locks, NEGATIVE_TTL, clock=self.clock,
            metrics=metrics, offline=offline, stale_while_revalidate=bound,
        )  # fmt: skip
        self.pages.append(pages)
        return IndexCache(pages, **options)


@pytest.fixture
async def make(stores: Stores, clock: FakeClock) -> AsyncIterator[Made]:
    made = Made(stores, clock)
    yield made
    for pages in made.pages:
        await pages.close()


@pytest.fixture
def pypi(clock: FakeClock) -> FakeIndex:
    """`lib` 1.0 (a wheel and an sdist), uploaded a month ago."""
    index = FakeIndex("pypi", ttl=TTL)
    for dist in (build_wheel("lib", "1.0"), build_sdist("lib", "1.0")):
        index.add(dist, uploaded=clock.now - 30 * DAY)
    return index


def filenames(listing: Any) -> list[str]:
    return [file.filename for file in listing.project.files]


def degradation(listing: Any) -> tuple[bool, tuple[str, ...], CacheResult]:
    return listing.stale, listing.unavailable, listing.cache


def counted(metrics: Metrics, trigger: str, outcome: str) -> float:
    """The background refreshes `metrics` counted with these labels."""
    text = metrics.exposition(Snapshot(0, 0, 0, ())).decode()
    line = f'cachepi_page_background_refreshes_total{{outcome="{outcome}",trigger="{trigger}"}} '
    found = [row for row in text.splitlines() if row.startswith(line)]
    return float(found[0].removeprefix(line)) if found else 0.0


async def all_answered(tasks: list[asyncio.Task[Any]]) -> list[Any]:
    """The results of `tasks`, which must all have ended without any time passing."""
    await settle()
    assert all(task.done() for task in tasks), "some answers waited for the upstream"
    return [task.result() for task in tasks]


# -- stale while revalidating ----------------------------------------------------------------


async def test_a_stale_page_is_answered_at_once_marked_while_one_revalidation_runs(
    pypi: FakeIndex, make: Made, clock: FakeClock
) -> None:
    metrics = Metrics(clock)
    cache = make(pypi, metrics=metrics)
    await cache.listing("lib")
    clock.advance(TTL)
    pypi.add(build_sdist("lib", "2.0"))
    pypi.hold()  # the revalidation takes as long as the test wants
    answers = await all_answered([asyncio.create_task(cache.listing("lib")) for _ in range(20)])
    assert all(filenames(listing) == LIB_1 for listing in answers)
    assert {degradation(listing) for listing in answers} == {(True, (), CacheResult.STALE)}
    assert pypi.count("lib/") == 2  # the first fetch, and ONE revalidation for 20 requests
    pypi.release()
    await make.pages[0].wait_background()
    assert pypi.answers == [("lib/", 200), ("lib/", 200)]
    after = await cache.listing("lib")
    assert filenames(after) == LIB_2
    assert degradation(after) == (False, (), CacheResult.HIT)  # fresh, from the revalidation
    assert pypi.count("lib/") == 2
    assert counted(metrics, "stale", "ok") == 1


async def test_a_page_state_and_the_project_list_are_answered_stale_the_same_way(
    pypi: FakeIndex, make: Made, clock: FakeClock
) -> None:
    cache = make(pypi)
    await cache.page("lib")
    await cache.names(await cache.project_list())
    clock.advance(TTL + 1)
    pypi.add(build_sdist("other", "1.0"))
    pypi.hold()
    state, listed = await all_answered(
        [asyncio.create_task(cache.page("lib")), asyncio.create_task(cache.project_list())]
    )
    assert (state.stale, state.cache) == (True, CacheResult.STALE)
    assert (listed.stale, listed.unavailable, listed.cache) == (True, (), CacheResult.STALE)
    assert (await cache.names(listed))[1].names() == ["lib"]
    assert (pypi.count("lib/"), pypi.count("")) == (2, 2)
    pypi.release()
    await make.pages[0].wait_background()
    fresh = await cache.project_list()
    assert (fresh.stale, fresh.cache) == (False, CacheResult.HIT)
    assert (await cache.names(fresh))[1].names() == ["lib", "other"]


async def test_two_workers_sharing_the_store_ask_the_upstream_once(
    pypi: FakeIndex, make: Made, clock: FakeClock
) -> None:
    worker, other = make(pypi), make(pypi)
    await worker.listing("lib")
    await other.listing("lib")
    clock.advance(TTL)
    pypi.hold()
    stale = await all_answered([asyncio.create_task(w.listing("lib")) for w in (worker, other)])
    assert [listing.stale for listing in stale] == [True, True]
    pypi.release()
    for pages in make.pages:  # the other worker's refresh waited for the lock, then read
        await pages.wait_background()  # the store
    assert pypi.count("lib/") == 2
    for w in (worker, other):
        assert degradation(await w.listing("lib")) == (False, (), CacheResult.HIT)


async def test_a_failing_revalidation_keeps_the_stale_copy(
    pypi: FakeIndex, make: Made, clock: FakeClock
) -> None:
    metrics = Metrics(clock)
    cache = make(pypi, metrics=metrics)
    await cache.listing("lib")
    clock.advance(TTL)
    pypi.fail()
    first = await cache.listing("lib")
    await make.pages[0].wait_background()
    assert (filenames(first), degradation(first)) == (LIB_1, (True, (), CacheResult.STALE))
    assert counted(metrics, "stale", "failed") == 1
    clock.advance(60)
    again = await cache.listing("lib")  # still stale: served, and revalidated again
    await make.pages[0].wait_background()
    assert (filenames(again), again.stale) == (LIB_1, True)
    assert pypi.count("lib/") == 3
    pypi.recover()
    clock.advance(PAUSE_AFTER_FAILURE)  # a failed refresh pauses the next one this long
    await cache.listing("lib")
    await make.pages[0].wait_background()
    assert degradation(await cache.listing("lib")) == (False, (), CacheResult.HIT)
    assert (pypi.count("lib/"), pypi.answers[-1]) == (4, ("lib/", 304))
    assert (counted(metrics, "stale", "failed"), counted(metrics, "stale", "ok")) == (2, 1)


async def test_an_error_in_a_background_refresh_is_logged_and_counted_never_lost(
    pypi: FakeIndex,
    make: Made,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics(clock)
    cache = make(pypi, metrics=metrics)
    await cache.listing("lib")
    clock.advance(TTL)

    async def broken(path: str, *validators: str | None) -> PageResponse:
        raise RuntimeError("a bug, not an upstream failure")

    monkeypatch.setattr(pypi, "fetch_page", broken)
    with caplog.at_level(logging.ERROR):
        stale = await cache.listing("lib")
        await make.pages[0].wait_background()
        gc.collect()  # an exception nobody took would be reported now
        await settle()
    assert (filenames(stale), stale.stale) == (LIB_1, True)
    assert counted(metrics, "stale", "error") == 1
    messages = [record.getMessage() for record in caplog.records]
    assert "refreshing 'lib' in the background failed" in messages
    assert not any("never retrieved" in message for message in messages)


async def test_past_the_bound_the_page_is_waited_for(
    pypi: FakeIndex, make: Made, clock: FakeClock
) -> None:
    cache = make(pypi, bound=3600)
    await cache.listing("lib")
    clock.advance(TTL + 3600)
    pypi.hold()
    waiting = asyncio.create_task(cache.listing("lib"))
    await settle()
    assert not waiting.done()
    pypi.release()
    assert degradation(await waiting) == (False, (), CacheResult.MISS)


async def test_an_invalidated_page_is_waited_for_whatever_the_bound(
    pypi: FakeIndex, make: Made, clock: FakeClock
) -> None:
    cache = make(pypi)
    await cache.listing("lib")
    pypi.add(build_sdist("lib", "2.0"))
    cache.invalidate("lib")
    pypi.hold()
    waiting = asyncio.create_task(cache.listing("lib"))
    await settle()
    assert not waiting.done()
    pypi.release()
    assert filenames(await waiting) == LIB_2


async def test_a_404_is_never_answered_stale(make: Made, clock: FakeClock) -> None:
    index = FakeIndex("pypi", ttl=TTL)
    cache = make(index)
    assert await cache.listing("later") is None
    index.add(build_sdist("later", "1.0"))  # it appears upstream
    clock.advance(NEGATIVE_TTL)
    index.hold()
    waiting = asyncio.create_task(cache.listing("later"))
    await settle()
    assert not waiting.done()  # the 404 is not served while it is asked again
    index.release()
    found = await waiting
    assert found is not None and filenames(found) == ["later-1.0.tar.gz"]


async def test_a_bound_of_zero_keeps_waiting_and_never_refreshes_ahead(
    pypi: FakeIndex, make: Made, clock: FakeClock
) -> None:
    cache = make(pypi, bound=0)
    await cache.listing("lib")
    clock.advance(TTL - 1)  # in the refresh-ahead window, were there one
    assert degradation(await cache.listing("lib")) == (False, (), CacheResult.HIT)
    await settle()
    assert pypi.count("lib/") == 1
    clock.advance(1)
    pypi.hold()
    waiting = asyncio.create_task(cache.listing("lib"))
    await settle()
    assert not waiting.done()
    pypi.release()
    assert degradation(await waiting) == (False, (), CacheResult.MISS)


async def test_an_index_with_ttl_zero_is_always_waited_for(make: Made, clock: FakeClock) -> None:
    index = FakeIndex("private", ttl=0)
    index.add(build_sdist("lib", "1.0"))
    cache = make(index)
    await cache.listing("lib")
    index.add(build_sdist("lib", "2.0"))
    assert filenames(await cache.listing("lib")) == ["lib-1.0.tar.gz", "lib-2.0.tar.gz"]
    await make.pages[0].wait_background()
    assert index.count("lib/") == 2


async def test_each_index_goes_stale_by_its_own_ttl(
    pypi: FakeIndex, make: Made, clock: FakeClock
) -> None:
    quick = FakeIndex("quick", ttl=60)
    quick.add(build_sdist("lib", "0.9"))
    cache = make(pypi, quick)
    await cache.listing("lib")
    clock.advance(60)
    quick.hold()
    pypi.hold()  # not asked: still fresh, not even near its expiry
    (stale,) = await all_answered([asyncio.create_task(cache.listing("lib"))])
    assert degradation(stale) == (True, (), CacheResult.STALE)
    assert (pypi.count("lib/"), quick.count("lib/")) == (1, 2)
    quick.release()
    pypi.release()


async def test_with_first_a_stale_index_that_has_the_project_still_ends_the_search(
    pypi: FakeIndex, make: Made, clock: FakeClock
) -> None:
    mirror = FakeIndex("mirror")
    mirror.add(build_sdist("lib", "9.0"))
    cache = make(pypi, mirror, combine=Combine.FIRST)
    await cache.listing("lib")
    clock.advance(TTL)
    pypi.hold()
    (stale,) = await all_answered([asyncio.create_task(cache.listing("lib"))])
    assert (filenames(stale), stale.stale) == (LIB_1, True)
    assert mirror.count("lib/") == 0
    pypi.release()


async def test_offline_nothing_is_refreshed(pypi: FakeIndex, make: Made, clock: FakeClock) -> None:
    await make(pypi).listing("lib")
    offline = make(pypi, offline=True)
    for advance in (AHEAD, TTL, 2 * DAY):
        clock.advance(advance)
        assert degradation(await offline.listing("lib")) == (False, (), CacheResult.HIT)
    await make.pages[1].wait_background()
    assert pypi.count("lib/") == 1


# -- refreshing ahead --------------------------------------------------------------------------


async def test_a_page_asked_for_near_its_expiry_is_refreshed_once_ahead_of_it(
    pypi: FakeIndex, make: Made, clock: FakeClock
) -> None:
    metrics = Metrics(clock)
    cache = make(pypi, metrics=metrics)
    await cache.listing("lib")
    clock.advance(AHEAD - 1)
    assert degradation(await cache.listing("lib")) == (False, (), CacheResult.HIT)
    await settle()
    assert pypi.count("lib/") == 1  # not yet near its expiry
    clock.advance(1)
    pypi.add(build_sdist("lib", "2.0"))
    pypi.hold()
    answers = await all_answered([asyncio.create_task(cache.listing("lib")) for _ in range(10)])
    # Fresh still, so not marked: the refresh is ahead of the expiry.
    assert {degradation(listing) for listing in answers} == {(False, (), CacheResult.HIT)}
    assert all(filenames(listing) == LIB_1 for listing in answers)
    assert pypi.count("lib/") == 2  # one refresh, and it did ask: the page was still fresh
    pypi.release()
    await make.pages[0].wait_background()
    clock.advance(TTL - AHEAD)  # where the first fetch would have expired
    refreshed = await cache.listing("lib")
    assert (filenames(refreshed), degradation(refreshed)) == (
        LIB_2, (False, (), CacheResult.HIT),
    )  # fmt: skip
    assert pypi.count("lib/") == 2
    assert counted(metrics, "ahead", "ok") == 1


async def test_a_hot_page_never_goes_stale_and_is_refreshed_once_per_window(
    pypi: FakeIndex, make: Made, clock: FakeClock
) -> None:
    """Asked for every 45 s for ten TTLs: every answer is fresh (a hit), and the upstream
    is asked once each time the page enters the last part of its TTL."""
    cache = make(pypi)
    await cache.listing("lib")
    fetched_at, expected = clock.now, 1
    for _ in range(10 * TTL // 45):
        clock.advance(45)
        listing = await cache.listing("lib")
        assert degradation(listing) == (False, (), CacheResult.HIT), clock.now - fetched_at
        await make.pages[0].wait_background()
        if clock.now - fetched_at >= AHEAD:
            fetched_at, expected = clock.now, expected + 1
        assert pypi.count("lib/") == expected
    assert expected > 10  # refreshed every 495 s or so


async def test_a_hot_404_is_refreshed_ahead_too_so_a_new_project_shows_at_its_expiry(
    make: Made, clock: FakeClock
) -> None:
    index = FakeIndex("pypi", ttl=TTL)
    cache = make(index)
    assert await cache.listing("later") is None
    clock.advance(NEGATIVE_TTL - refresh_margin(NEGATIVE_TTL))
    index.add(build_sdist("later", "1.0"))
    assert await cache.listing("later") is None  # the 404, fresh still; refreshed behind
    await make.pages[0].wait_background()
    found = await cache.listing("later")
    assert found is not None and found.cache is CacheResult.HIT
    assert index.answers == [("later/", 404), ("later/", 200)]


# -- shutdown ----------------------------------------------------------------------------------


async def test_close_cancels_a_background_refresh_and_lets_its_lock_go(
    pypi: FakeIndex, make: Made, clock: FakeClock
) -> None:
    cache = make(pypi)
    await cache.listing("lib")
    clock.advance(TTL)
    pypi.hold()
    assert (await cache.listing("lib")).stale  # type: ignore[union-attr]
    await settle()
    await make.pages[0].close()  # returns: the held refresh was cancelled
    pypi.release()
    restarted = make(pypi)  # the lock was released: a new refresh is not held up
    assert degradation(await restarted.listing("lib")) == (True, (), CacheResult.STALE)
    await make.pages[1].wait_background()
    assert degradation(await restarted.listing("lib")) == (False, (), CacheResult.HIT)


__all__ = ["clock", "stores"]  # fixtures, for pytest
