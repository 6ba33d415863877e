"""The index cache in-process: FakeIndex upstreams, a FakeClock, the embedded stores.

TTLs, revalidation, negative caching, stale answers, single-flight, invalidation, the
two ways indexes combine, routing and the policy, without a socket or a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from cachepi.combine import Combine
from cachepi.index import IndexCache, Refused
from cachepi.policy import Policy, name_glob, parse_rule
from cachepi.routing import Route, Router
from cachepi.store import Stores
from cachepi.types import CacheResult
from cachepi.upstream import UpstreamError
from cachepi.upstream_pages import UpstreamPages
from tests.fakeupstream.dists import Dist, build_sdist, build_wheel
from tests.inprocess import FakeClock, FakeIndex, settle
from tests.inprocess_fixtures import clock, stores

TTL = 600
NEGATIVE_TTL = 60
DAY = 86400.0
LIB_1 = ["lib-1.0-py3-none-any.whl", "lib-1.0.tar.gz"]  # what the `pypi` fixture lists

CacheFactory = Callable[..., IndexCache]


@pytest.fixture
def make_cache(stores: Stores, clock: FakeClock) -> CacheFactory:
    def make(*indexes: FakeIndex, negative_ttl: int = NEGATIVE_TTL, **options: Any) -> IndexCache:
        pages = UpstreamPages(indexes, stores.metadata, stores.locks, negative_ttl, clock=clock)
        return IndexCache(pages, **options)

    return make


@pytest.fixture
def pypi(clock: FakeClock) -> FakeIndex:
    """`lib` 1.0 (a wheel and an sdist), uploaded a month ago."""
    index = FakeIndex("pypi", ttl=TTL)
    for dist in (build_wheel("lib", "1.0"), build_sdist("lib", "1.0")):
        index.add(dist, uploaded=clock.now - 30 * DAY)
    return index


def filenames(listing: Any) -> list[str]:
    return [file.filename for file in listing.project.files]


# -- freshness -------------------------------------------------------------------------------


async def test_a_fresh_page_costs_nothing_upstream(
    pypi: FakeIndex, make_cache: CacheFactory, clock: FakeClock
) -> None:
    cache = make_cache(pypi)
    first = await cache.listing("lib")
    clock.advance(TTL - 1)
    again = [await cache.listing("lib") for _ in range(3)]
    assert first is not None and first.cache is CacheResult.MISS
    assert filenames(first) == LIB_1
    assert [listing.cache for listing in again] == [CacheResult.HIT] * 3  # type: ignore[union-attr]
    assert pypi.count("lib/") == 1


async def test_a_fresh_page_survives_a_restart_in_the_store(
    pypi: FakeIndex, make_cache: CacheFactory
) -> None:
    await make_cache(pypi).listing("lib")
    restarted = await make_cache(pypi).listing("lib")  # a new process: memory is empty
    assert restarted is not None and filenames(restarted) == LIB_1
    assert restarted.cache is CacheResult.HIT and pypi.count("lib/") == 1


async def test_after_the_ttl_one_conditional_request_and_a_304_renew_the_page(
    pypi: FakeIndex, make_cache: CacheFactory, clock: FakeClock
) -> None:
    cache = make_cache(pypi)
    await cache.listing("lib")
    clock.advance(TTL)
    renewed = await cache.listing("lib")
    assert pypi.answers == [("lib/", 200), ("lib/", 304)]
    assert renewed is not None and renewed.cache is CacheResult.MISS
    assert filenames(renewed) == LIB_1
    clock.advance(TTL - 1)  # fresh again, counted from the 304
    assert (await cache.listing("lib")).cache is CacheResult.HIT  # type: ignore[union-attr]
    assert pypi.count("lib/") == 2


async def test_a_new_upload_appears_once_the_ttl_has_passed(
    pypi: FakeIndex, make_cache: CacheFactory, clock: FakeClock
) -> None:
    cache = make_cache(pypi)
    await cache.listing("lib")
    pypi.add(build_sdist("lib", "2.0"), uploaded=clock.now)
    clock.advance(TTL - 1)
    assert "lib-2.0.tar.gz" not in filenames(await cache.listing("lib"))
    clock.advance(1)
    updated = await cache.listing("lib")
    assert "lib-2.0.tar.gz" in filenames(updated)
    assert updated.project.versions == ["1.0", "2.0"]  # type: ignore[union-attr]
    assert pypi.answers[-1] == ("lib/", 200)


@pytest.mark.parametrize(("ttl", "remembered"), [(TTL, NEGATIVE_TTL), (30, 30)])
async def test_a_404_is_remembered_for_the_negative_ttl_capped_by_the_ttl(
    ttl: int, remembered: int, make_cache: CacheFactory, clock: FakeClock
) -> None:
    index = FakeIndex("pypi", ttl=ttl)
    cache = make_cache(index)
    assert await cache.listing("later") is None
    index.add(build_sdist("later", "1.0"))
    clock.advance(remembered - 1)
    assert await cache.listing("later") is None  # the 404 is still believed
    assert index.count("later/") == 1
    clock.advance(1)
    found = await cache.listing("later")
    assert found is not None and filenames(found) == ["later-1.0.tar.gz"]
    assert index.answers == [("later/", 404), ("later/", 200)]


# -- failures ------------------------------------------------------------------------------------


async def test_the_stale_copy_is_served_while_the_upstream_fails(
    pypi: FakeIndex, make_cache: CacheFactory, clock: FakeClock
) -> None:
    cache = make_cache(pypi)
    await cache.listing("lib")
    clock.advance(TTL)
    pypi.fail()
    stale = await cache.listing("lib")
    assert stale is not None
    assert (stale.stale, stale.unavailable, stale.cache) == (True, ("pypi",), CacheResult.STALE)
    assert filenames(stale) == LIB_1
    assert not pypi.health.healthy
    # A failure renews nothing: the next request asks again, and recovers.
    pypi.recover()
    recovered = await cache.listing("lib")
    assert recovered is not None
    assert (recovered.stale, recovered.unavailable, recovered.cache) == (
        False, (), CacheResult.MISS,
    )  # fmt: skip
    assert pypi.count("lib/") == 3 and pypi.answers[-1] == ("lib/", 304)


async def test_with_nothing_cached_a_failure_is_an_error_never_a_404(
    pypi: FakeIndex, make_cache: CacheFactory
) -> None:
    other = FakeIndex("other")  # answers 404 for lib
    cache = make_cache(pypi, other)
    pypi.fail(UpstreamError("pypi timed out", status=504))
    with pytest.raises(UpstreamError) as raised:
        await cache.listing("lib")
    assert raised.value.status == 504
    assert other.answers == [("lib/", 404)]
    pypi.recover()  # nothing was stored for pypi: it is asked at once
    assert filenames(await cache.listing("lib")) == LIB_1


@pytest.mark.parametrize("cached_before", [False, True], ids=["cold", "stale"])
async def test_concurrent_listings_cause_one_upstream_request(
    cached_before: bool, pypi: FakeIndex, make_cache: CacheFactory, clock: FakeClock
) -> None:
    cache = make_cache(pypi)
    if cached_before:
        await cache.listing("lib")
        clock.advance(TTL)
    pypi.hold()
    waiting = [asyncio.create_task(cache.listing("lib")) for _ in range(20)]
    await settle()
    assert not any(task.done() for task in waiting)  # all wait for the one request
    pypi.release()
    listings = await asyncio.gather(*waiting)
    assert pypi.count("lib/") == 1 + cached_before
    assert all(filenames(listing) == LIB_1 for listing in listings)


async def test_a_caller_giving_up_does_not_cancel_the_request_others_wait_for(
    pypi: FakeIndex, make_cache: CacheFactory
) -> None:
    cache = make_cache(pypi)
    pypi.hold()
    impatient = asyncio.create_task(cache.listing("lib"))
    patient = asyncio.create_task(cache.listing("lib"))
    await settle()
    impatient.cancel()
    await settle()
    pypi.release()
    assert filenames(await patient) == LIB_1
    assert impatient.cancelled()
    assert (await cache.listing("lib")).cache is CacheResult.HIT  # type: ignore[union-attr]
    assert pypi.count("lib/") == 1


async def test_invalidate_makes_the_next_request_revalidate_once(
    pypi: FakeIndex, make_cache: CacheFactory, clock: FakeClock
) -> None:
    cache = make_cache(pypi)
    await cache.listing("lib")
    for _ in range(3):
        cache.invalidate("lib")
    clock.advance(1)  # nowhere near the TTL
    assert (await cache.listing("lib")).cache is CacheResult.MISS  # type: ignore[union-attr]
    assert (await cache.listing("lib")).cache is CacheResult.HIT  # type: ignore[union-attr]
    assert pypi.answers == [("lib/", 200), ("lib/", 304)]


async def test_invalidate_is_not_undone_by_a_refresh_that_was_in_flight(
    pypi: FakeIndex, make_cache: CacheFactory, clock: FakeClock
) -> None:
    cache = make_cache(pypi)
    await cache.listing("lib")
    clock.advance(TTL)
    pypi.hold()
    refreshing = asyncio.create_task(cache.listing("lib"))  # its answer: 1.0 only
    await settle()
    pypi.add(build_sdist("lib", "2.0"))  # a release...
    cache.invalidate("lib")  # ...and the admin tells the cache to look again
    pypi.release()
    assert filenames(await refreshing) == LIB_1  # asked before: fine to be old
    clock.advance(1)
    assert "lib-2.0.tar.gz" in filenames(await cache.listing("lib"))


async def test_invalidate_reaches_another_worker_sharing_the_store(
    pypi: FakeIndex, make_cache: CacheFactory, clock: FakeClock
) -> None:
    worker, other = make_cache(pypi), make_cache(pypi)
    await worker.listing("lib")
    await other.listing("lib")
    assert pypi.count("lib/") == 1  # the other worker found the page in the store
    worker.invalidate("lib")
    clock.advance(1)  # workers look at the invalidation counter at most once a second
    assert (await other.listing("lib")).cache is CacheResult.MISS  # type: ignore[union-attr]
    assert pypi.answers == [("lib/", 200), ("lib/", 304)]


# -- combining indexes -------------------------------------------------------------------------


async def test_merge_lists_the_first_index_first_and_adds_what_later_ones_lack(
    pypi: FakeIndex, make_cache: CacheFactory
) -> None:
    mirror = FakeIndex("mirror")
    mirror.add(build_sdist("lib", "1.0"))  # the same file: listed once, from pypi
    mirror.add(build_sdist("lib", "2.0"))
    impostor = Dist.from_bytes("lib-1.0-py3-none-any.whl", b"other bytes, same name")
    mirror.add(impostor)  # a hash conflict: pypi's entry wins
    listing = await make_cache(pypi, mirror).listing("lib")
    assert listing is not None
    assert filenames(listing) == [
        "lib-1.0-py3-none-any.whl", "lib-1.0.tar.gz", "lib-2.0.tar.gz",
    ]  # fmt: skip
    assert [source.name for source in listing.sources] == ["pypi", "pypi", "mirror"]
    wheel, source = listing.find("lib-1.0-py3-none-any.whl")  # type: ignore[misc]
    assert source is pypi and wheel.hashes["sha256"] == build_wheel("lib", "1.0").sha256
    assert listing.project.versions == ["1.0", "2.0"]


async def test_first_does_not_ask_later_indexes_once_one_has_the_project(
    pypi: FakeIndex, make_cache: CacheFactory
) -> None:
    mirror = FakeIndex("mirror")
    mirror.add(build_sdist("lib", "2.0"))
    mirror.add(build_sdist("only-there", "1.0"))
    cache = make_cache(pypi, mirror, combine=Combine.FIRST)
    lib = await cache.listing("lib")
    assert filenames(lib) == LIB_1
    assert mirror.count("lib/") == 0
    elsewhere = await cache.listing("only-there")  # pypi says 404: the next index is asked
    assert elsewhere is not None and [s.name for s in elsewhere.sources] == ["mirror"]
    assert (pypi.answers, mirror.answers) == (
        [("lib/", 200), ("only-there/", 404)], [("only-there/", 200)],
    )  # fmt: skip


async def test_first_moves_on_when_the_first_index_fails_with_nothing_cached(
    pypi: FakeIndex, make_cache: CacheFactory
) -> None:
    """As the README says for every mode, an index failing does not fail the page: with
    "first" that means the next index answers for a project the failing one may have."""
    mirror = FakeIndex("mirror")
    mirror.add(build_sdist("lib", "66.0"))
    pypi.fail()
    listing = await make_cache(pypi, mirror, combine=Combine.FIRST).listing("lib")
    assert listing is not None and filenames(listing) == ["lib-66.0.tar.gz"]
    assert (listing.stale, listing.unavailable, listing.cache) == (
        False, ("pypi",), CacheResult.MISS,
    )  # fmt: skip


async def test_a_route_pins_a_project_to_its_index_and_the_other_is_never_asked(
    pypi: FakeIndex, make_cache: CacheFactory
) -> None:
    internal = FakeIndex("internal")
    internal.add(build_sdist("acme-tools", "1.0"))
    pypi.add(build_sdist("acme-tools", "99.0"))  # a public look-alike (dependency confusion)
    internal.add(build_sdist("lib", "6.6.6"))
    router = Router([Route((name_glob("acme-*"),), (1,))], default=(0,))
    cache = make_cache(pypi, internal, router=router)
    acme = await cache.listing("acme-tools")
    lib = await cache.listing("lib")
    assert filenames(acme) == ["acme_tools-1.0.tar.gz"]
    assert filenames(lib) == LIB_1
    assert (pypi.count("acme-tools/"), internal.count("lib/")) == (0, 0)


async def test_the_project_list_combines_names_under_the_routes_and_the_policy(
    pypi: FakeIndex, make_cache: CacheFactory
) -> None:
    internal = FakeIndex("internal")
    for name in ("zeta", "acme-tools", "evil"):
        pypi.add(build_sdist(name, "1.0"))
    for name in ("lib", "acme-tools", "acme-db"):
        internal.add(build_sdist(name, "1.0"))
    router = Router([Route((name_glob("acme-*"),), (1,))], default=(0, 1))
    policy = Policy(deny=(parse_rule("evil"),))
    cache = make_cache(pypi, internal, router=router, policy=policy)
    result = await cache.project_list()
    # pypi's acme-tools is not served (the route): it is listed where internal lists it.
    version, names = await cache.names(result)
    assert names.names() == ["lib", "zeta", "acme-tools", "acme-db"]
    assert version == result.version
    assert result.cache is CacheResult.MISS
    assert (await cache.project_list()).cache is CacheResult.HIT
    assert (pypi.count(""), internal.count("")) == (1, 1)


# -- the policy ----------------------------------------------------------------------------------


async def test_a_denied_project_is_refused_without_asking_upstream(
    pypi: FakeIndex, make_cache: CacheFactory
) -> None:
    cache = make_cache(pypi, policy=Policy(deny=(parse_rule("li*"),)))
    with pytest.raises(Refused, match="li\\*"):
        await cache.listing("lib")
    allowing = make_cache(pypi, policy=Policy(allow=(parse_rule("other"),)))
    with pytest.raises(Refused, match="allow list"):
        await allowing.listing("lib")
    assert pypi.count("lib/") == 0


async def test_a_denied_version_disappears_with_its_files(
    pypi: FakeIndex, make_cache: CacheFactory
) -> None:
    pypi.add(build_sdist("lib", "2.0"))
    listing = await make_cache(pypi, policy=Policy(deny=(parse_rule("lib>=2"),))).listing("lib")
    assert listing is not None
    assert filenames(listing) == LIB_1
    assert listing.project.versions == ["1.0"]
    assert "lib>=2" in listing.refused["lib-2.0.tar.gz"]


async def test_the_cooldown_hides_young_files_until_their_release_age(
    pypi: FakeIndex, make_cache: CacheFactory, clock: FakeClock
) -> None:
    uploaded = clock.now - 60
    pypi.add(build_wheel("lib", "2.0"), uploaded=uploaded)
    cooldown = TTL // 2  # the page stays fresh while the cooldown ends
    cache = make_cache(pypi, policy=Policy(min_release_age=cooldown))
    young = await cache.listing("lib")
    assert young is not None
    assert filenames(young) == LIB_1
    assert young.project.versions == ["1.0"]  # no version is listed without a file
    assert young.valid_until == uploaded + cooldown
    assert "cooldown of 5m" in young.refused["lib-2.0-py3-none-any.whl"]
    clock.advance(young.valid_until - clock.now - 1)
    assert filenames(await cache.listing("lib")) == filenames(young)
    clock.advance(1)
    ready = await cache.listing("lib")
    assert ready is not None and ready.refused == {}
    assert "lib-2.0-py3-none-any.whl" in filenames(ready)
    assert ready.project.versions == ["1.0", "2.0"]
    assert pypi.count("lib/") == 1  # screened again from the cached page


async def test_an_index_cooldown_overrides_the_global_one_for_its_files(
    pypi: FakeIndex, make_cache: CacheFactory, clock: FakeClock
) -> None:
    internal = FakeIndex("internal", min_release_age=0)  # our own uploads: no cooldown
    internal.add(build_sdist("lib", "2.0"), uploaded=clock.now - 60)
    cautious = FakeIndex("cautious", min_release_age=int(2 * DAY))
    cautious.add(build_sdist("lib", "1.5"), uploaded=clock.now - DAY - 120)
    pypi.add(build_sdist("lib", "3.0"), uploaded=clock.now - 60)  # the global cooldown
    policy = Policy(min_release_age=int(DAY))
    listing = await make_cache(pypi, internal, cautious, policy=policy).listing("lib")
    assert listing is not None
    assert filenames(listing) == [*LIB_1, "lib-2.0.tar.gz"]
    assert sorted(listing.refused) == ["lib-1.5.tar.gz", "lib-3.0.tar.gz"]
    assert listing.valid_until == clock.now + DAY - 120  # the first cooldown to end: 1.5's


async def test_a_quarantined_project_lists_no_files(
    pypi: FakeIndex, make_cache: CacheFactory
) -> None:
    mirror = FakeIndex("mirror")
    mirror.add(build_sdist("lib", "2.0"))
    pypi.quarantine("lib")
    listing = await make_cache(pypi, mirror).listing("lib")
    assert listing is not None and listing.quarantined
    assert (listing.project.files, listing.project.versions, listing.sources) == ([], [], ())


# -- what the dashboard sees ---------------------------------------------------------------------


async def test_cached_pages_report_freshness_as_the_cache_judges_it(
    pypi: FakeIndex, make_cache: CacheFactory, clock: FakeClock
) -> None:
    other = FakeIndex("other", ttl=2 * TTL)
    cache = make_cache(pypi, other)
    assert cache.cached_pages("lib") == []
    fetched_at = clock.now
    await cache.listing("lib")
    pages = {page.index: page for page in cache.cached_pages("lib")}
    assert {name: (p.fetched_at, p.fresh, p.files) for name, p in pages.items()} == {
        "pypi": (fetched_at, True, 2),
        "other": (fetched_at, True, None),  # a 404, fresh for the negative TTL
    }
    clock.advance(NEGATIVE_TTL)
    assert {p.index: p.fresh for p in cache.cached_pages("lib")} == {"pypi": True, "other": False}
    clock.advance(TTL)
    assert {p.index: p.fresh for p in cache.cached_pages("lib")} == {"pypi": False, "other": False}
    cache.invalidate("lib")
    assert [p.fresh for p in cache.cached_pages("lib")] == [False, False]


__all__ = ["clock", "stores"]  # fixtures, for pytest
