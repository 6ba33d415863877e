"""Stale-while-revalidate under load and races: many pages gone stale at once (after an
outage, a fleet's whole working set) through a real proxy and a slow fake upstream, and an
invalidation while a background refresh is under way (in-process, FakeIndex held)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from cachepi.index import IndexCache
from cachepi.store import Stores
from cachepi.types import CacheResult
from cachepi.upstream import UpstreamError
from cachepi.upstream_pages import PAUSE_AFTER_FAILURE, UpstreamPages
from cachepi.web.keys import INDEX_CACHE
from tests.conftest import ProxyFactory
from tests.fakeupstream import FakeUpstream
from tests.fakeupstream.dists import build_sdist
from tests.fetching import fetch
from tests.inprocess import FakeClock, FakeIndex, settle
from tests.inprocess_fixtures import clock, stores
from tests.test_metrics import scrape

TTL = 600


async def test_pages_gone_stale_at_once_leave_connections_to_clients_that_wait(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """40 stale pages asked for at once, an upstream that takes 0.5 s a page and 4 page
    connections: before, 40 background refreshes took every connection, and a project
    nobody had asked for yet waited behind them past the page deadline (a 504), as did
    the refreshes at the back of the queue (failed, the upstream told unhealthy). Now at
    most half the connections refresh in the background; the rest of the stale pages are
    answered stale and refreshed by later requests."""
    names = [f"p{i}" for i in range(40)]
    for name in [*names, "new"]:
        fake_upstream.add_project(name, [], wheel=False, sdist=False)
    proxy = await proxy_factory((fake_upstream.url, 1), upstream_connections=4, page_timeout=3.0)
    async with aiohttp.ClientSession() as session:

        async def status(name: str) -> tuple[int, bool]:
            async with session.get(f"{proxy.index_url}{name}/") as reply:
                await reply.read()
                return reply.status, reply.headers.get("X-Cachepi-Stale") == "1"

        assert {await status(name) for name in names} == {(200, False)}
        await asyncio.sleep(1.1)  # past the TTL: all stale
        fake_upstream.delay("/simple/*", 0.5)
        assert set(await asyncio.gather(*(status(name) for name in names))) == {(200, True)}
        # Behind the refreshes, it would wait past its 3 s page deadline: a 504.
        assert await status("new") == (200, False)
        assert fake_upstream.peak_concurrency("/simple/") <= 4
        await proxy.app[INDEX_CACHE].pages.wait_background()
    metrics = await scrape(proxy.url)
    refreshes = "cachepi_page_background_refreshes_total"
    assert metrics.value(refreshes, trigger="stale", outcome="ok") == 2
    assert metrics.value(refreshes, trigger="stale", outcome="deferred") == 38
    assert metrics.value(refreshes, trigger="stale", outcome="failed") == 0
    health = await fetch(proxy.url + "/health")
    assert b'"ok"' in health.body


# -- invalidated while refreshed in the background --------------------------------------------


@pytest.fixture
async def pages(stores: Stores, clock: FakeClock) -> AsyncIterator[list[UpstreamPages]]:
    made: list[UpstreamPages] = []
    yield made
    for each in made:
        await each.close()


def worker(
    index: FakeIndex, stores: Stores, clock: FakeClock, made: list[UpstreamPages]
) -> IndexCache:
    pages = UpstreamPages(
        [index], stores.metadata, stores.locks, 60, clock=clock, stale_while_revalidate=86400
    )
    made.append(pages)
    return IndexCache(pages)


@pytest.mark.parametrize("by_other_worker", [False, True])
async def test_an_answer_that_predates_an_invalidation_is_never_taken_as_fresh(
    stores: Stores, clock: FakeClock, pages: list[UpstreamPages], by_other_worker: bool
) -> None:
    """A stale page's background refresh is under way (the upstream answered with what it
    had then, but slowly); the page changes upstream and an admin invalidates it, in this
    worker or another; then the old answer lands. It must not be stored as fresh: the next
    request waits for the upstream, and gets the new page."""
    index = FakeIndex("pypi", ttl=TTL)
    index.add(build_sdist("lib", "1.0"))
    cache = worker(index, stores, clock, pages)
    other = worker(index, stores, clock, pages) if by_other_worker else cache
    assert await cache.listing("lib") is not None
    clock.advance(TTL)
    index.hold()
    stale = await cache.listing("lib")
    assert stale is not None and stale.cache is CacheResult.STALE
    await settle()  # the background refresh asked, with the page as it was
    index.add(build_sdist("lib", "2.0"))
    other.invalidate("lib")
    clock.advance(1.5)  # the other worker's invalidation is seen within a second
    index.release()
    await pages[0].wait_background()
    after = await cache.listing("lib")
    assert after is not None
    assert [f.filename for f in after.project.files] == ["lib-1.0.tar.gz", "lib-2.0.tar.gz"]
    assert after.cache is CacheResult.MISS


__all__ = ["clock", "stores"]  # fixtures, for pytest


# -- an upstream that refuses at once ---------------------------------------------------------


async def test_a_refusing_upstream_is_asked_again_after_a_pause_not_on_every_request(
    stores: Stores, clock: FakeClock, pages: list[UpstreamPages]
) -> None:
    """An upstream that refuses a page at once (a 401 once a private index's credentials
    expired, a 403, an unreadable page: nothing worth retrying) was asked again, and the
    failure logged twice, by the first request after each failed background refresh: one
    hot stale page made 391 upstream requests and 782 warnings in 2 s. Now the page is
    answered stale without asking for a few seconds after a failure."""
    index = FakeIndex("pypi", ttl=TTL)
    index.add(build_sdist("lib", "1.0"))
    cache = worker(index, stores, clock, pages)
    assert await cache.listing("lib") is not None
    clock.advance(TTL)
    index.fail(UpstreamError(f"{index.url}lib/: upstream answered 401", 502))
    for _ in range(20):
        listing = await cache.listing("lib")
        assert listing is not None and listing.cache is CacheResult.STALE
        await pages[0].wait_background()
        clock.advance(0.1)
    assert index.count("lib/") == 2  # the first fetch, and one refresh that failed
    clock.advance(PAUSE_AFTER_FAILURE)
    index.recover()
    assert (await cache.listing("lib")).cache is CacheResult.STALE  # type: ignore[union-attr]
    await pages[0].wait_background()
    assert index.count("lib/") == 3
    assert (await cache.listing("lib")).cache is CacheResult.HIT  # type: ignore[union-attr]
