"""Upstream 404s are remembered for the negative TTL, then forgotten: every name ever asked
for left a record behind (10,000 random names, 10,000 rows, kept forever)."""

from __future__ import annotations

import dataclasses
import random
import string
import time
from pathlib import Path

import pytest

from cachepi import maintenance
from cachepi.index import IndexCache
from cachepi.store import DATABASE, Stores
from cachepi.store.protocols import PageRecord
from cachepi.store.sqlite import SqliteMetadata
from cachepi.upstream_pages import UpstreamPages
from tests.fakeupstream.dists import build_wheel
from tests.inprocess import FakeClock, FakeIndex
from tests.inprocess_fixtures import clock, stores
from tests.proxy import settings_for

NEGATIVE_TTL = 60


@pytest.fixture
def pypi() -> FakeIndex:
    index = FakeIndex("pypi", ttl=600)
    index.add(build_wheel("lib", "1.0"))
    return index


def random_names(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(string.ascii_lowercase, k=12)) for _ in range(count)]


def stored_names(stores: Stores) -> int:
    return len(stores.metadata.page_keys("", 1_000_000))


@pytest.mark.slow  # ~4 s
async def test_10000_names_nobody_has_leave_a_bounded_number_of_records(
    pypi: FakeIndex, stores: Stores, clock: FakeClock
) -> None:
    pages = UpstreamPages([pypi], stores.metadata, stores.locks, NEGATIVE_TTL, clock=clock)
    cache = IndexCache(pages)
    assert await cache.listing("lib") is not None
    rate = 10  # names a second: 600 within the negative TTL
    most = 0
    for number, name in enumerate(random_names(10_000)):
        assert await cache.listing(name) is None
        clock.advance(1 / rate)
        if number % 100 == 0:
            most = max(most, stored_names(stores))
    assert pypi.count("") == 0 and sum(pypi.requests.values()) == 10_001  # one GET each
    # At most the names of a negative TTL and of a sweep interval (60 s) are kept.
    assert most <= rate * (NEGATIVE_TTL + 60 + 2), most
    assert stored_names(stores) <= rate * (NEGATIVE_TTL + 60 + 2)
    # A while later, the next request sweeps what is left; the page that exists stays.
    clock.advance(NEGATIVE_TTL + 60)
    assert await cache.listing("lib") is not None
    assert stored_names(stores) == 1
    assert stores.metadata.get_page(pypi.url, "lib") is not None


async def test_a_404_is_still_remembered_for_the_negative_ttl(
    pypi: FakeIndex, stores: Stores, clock: FakeClock
) -> None:
    pages = UpstreamPages([pypi], stores.metadata, stores.locks, NEGATIVE_TTL, clock=clock)
    cache = IndexCache(pages)
    assert await cache.listing("nothing") is None
    for _ in range(NEGATIVE_TTL - 1):
        clock.advance(1)
        assert await cache.listing("other") is None  # traffic: sweeps get their chance
        assert await cache.listing("nothing") is None
    assert pypi.count("nothing/") == 1  # answered from the record all along
    clock.advance(2)
    assert await cache.listing("nothing") is None
    assert pypi.count("nothing/") == 2


async def test_offline_stored_404s_are_the_answer_and_stay(
    pypi: FakeIndex, stores: Stores, clock: FakeClock
) -> None:
    online = UpstreamPages([pypi], stores.metadata, stores.locks, NEGATIVE_TTL, clock=clock)
    assert await IndexCache(online).listing("nothing") is None
    offline = UpstreamPages(
        [pypi], stores.metadata, stores.locks, NEGATIVE_TTL, clock=clock, offline=True
    )
    cache = IndexCache(offline)
    for _ in range(5):
        clock.advance(NEGATIVE_TTL)
        assert await cache.listing("nothing") is None
    assert pypi.count("nothing/") == 1
    assert stores.metadata.get_page(pypi.url, "nothing") is not None


async def test_gc_forgets_404s_older_than_the_negative_ttl(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    url = "https://pypi.test/simple/"
    store = SqliteMetadata(cache_dir / DATABASE)
    now = time.time()
    for age, name in [(3600, "old"), (NEGATIVE_TTL + 5, "stale"), (5, "recent")]:
        store.put_page(url, name, PageRecord(now - age, None, None, None))
    store.put_page(url, "page", PageRecord(now - 3600, '"e"', None, b"body"))
    store.close()
    settings = settings_for(cache_dir, (url, 600), negative_ttl=NEGATIVE_TTL)
    done = await maintenance.gc(settings)
    assert done.missing_pages == 2
    offline = await maintenance.gc(dataclasses.replace(settings, negative_ttl=0, offline=True))
    assert offline.missing_pages == 0
    store = SqliteMetadata(cache_dir / DATABASE)
    assert store.page_keys("", 10) == ["page", "recent"]
    store.close()


__all__ = ["clock", "stores"]  # fixtures, for pytest
