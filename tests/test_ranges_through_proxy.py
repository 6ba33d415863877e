"""Ranges passed through (web/upstream_ranges.py): a range of a file the proxy does not hold
is the upstream's range, not the start of a whole download; the whole file comes when a
client asks for all of it (or half of it or more). HEAD never downloads. Upstream bytes
are counted by the fake upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.cachedir import blobs_on_disk
from tests.conftest import ProxyFactory
from tests.fakeupstream import Dist
from tests.fakeupstream.metered import MeteredUpstream
from tests.fetching import Reply, fetch
from tests.proxy import RunningProxy

KIB, MIB = 1024, 1024 * 1024


@pytest_asyncio.fixture(params=[True, False], ids=["sizes", "no-sizes"])
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[MeteredUpstream]:
    """An index that gives files' sizes (PEP 700), or one that does not (the proxy asks the
    upstream with a HEAD then)."""
    async with MeteredUpstream(pep700=request.param) as up:
        yield up


def url(proxy: RunningProxy, dist: Dist) -> str:
    return f"{proxy.index_url}{dist.project}/{dist.filename}"


async def ranged(proxy: RunningProxy, dist: Dist, spec: str, **headers: str) -> Reply:
    return await fetch(url(proxy, dist), headers={"Range": spec, **headers})


def gets(upstream: MeteredUpstream, dist: Dist) -> list[str | None]:
    """The Range header of each GET of the file the upstream answered."""
    return [
        r.headers.get("Range")
        for r in upstream.requests_to(upstream.file_path(dist.filename), "GET")
    ]


async def test_a_small_range_is_the_upstreams_and_nothing_is_downloaded(
    upstream: MeteredUpstream, proxy_factory: ProxyFactory
) -> None:
    (big,) = upstream.add_project("big", ["1.0"], big_mb=30, sdist=False)
    data = big.read_bytes()
    proxy = await proxy_factory(upstream)
    for spec, (start, stop) in [
        ("bytes=-16384", (big.size - 16384, big.size)),
        ("bytes=1000-1999", (1000, 2000)),
        (f"bytes={big.size - 100}-", (big.size - 100, big.size)),
    ]:
        reply = await ranged(proxy, big, spec)
        assert (reply.status, reply.body) == (206, data[start:stop])
        assert reply.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{big.size}"
        assert reply.headers["Accept-Ranges"] == "bytes"
        assert reply.headers["ETag"] == f'"{big.sha256}"'
    assert gets(upstream, big) == [
        f"bytes={big.size - 16384}-{big.size - 1}", "bytes=1000-1999",
        f"bytes={big.size - 100}-{big.size - 1}",
    ]  # fmt: skip
    assert upstream.sent("/files/*", "GET") < 20 * KIB
    assert blobs_on_disk(proxy.settings.cache_dir) == {}
    # The client that installs it asks for all of it: downloaded, kept, verified.
    whole = await fetch(url(proxy, big))
    assert (whole.status, whole.sha256) == (200, big.sha256)
    assert blobs_on_disk(proxy.settings.cache_dir) == {big.sha256: big.size}
    upstream.reset_counts()
    reply = await ranged(proxy, big, "bytes=10-19")
    assert (reply.status, reply.body) == (206, data[10:20])
    assert upstream.requests == []


async def test_head_never_downloads(upstream: MeteredUpstream, proxy_factory: ProxyFactory) -> None:
    (big,) = upstream.add_project("big", ["1.0"], big_mb=4, sdist=False)
    proxy = await proxy_factory(upstream)
    for _ in range(2):
        head = await fetch(url(proxy, big), method="HEAD", headers={"Range": "bytes=0-9"})
        assert head.headers["Content-Length"] == "10" and head.status == 206
    assert gets(upstream, big) == []
    assert upstream.count(upstream.file_path(big.filename), "HEAD") <= 1  # size known, or once


async def test_half_the_file_or_more_is_served_from_its_whole_download(
    upstream: MeteredUpstream, proxy_factory: ProxyFactory
) -> None:
    (big,) = upstream.add_project("big", ["1.0"], big_mb=4, sdist=False)
    proxy = await proxy_factory(upstream)
    half = big.size // 2 + 1
    reply = await ranged(proxy, big, f"bytes=-{half}")
    assert (reply.status, reply.body) == (206, big.read_bytes()[-half:])
    assert gets(upstream, big) == [None]
    assert blobs_on_disk(proxy.settings.cache_dir) == {big.sha256: big.size}


async def test_a_range_joins_the_download_running_here(
    upstream: MeteredUpstream, proxy_factory: ProxyFactory
) -> None:
    (big,) = upstream.add_project("big", ["1.0"], big_mb=4, sdist=False)
    upstream.throttle(upstream.file_path(big.filename), 8 * MIB)
    proxy = await proxy_factory(upstream)
    whole = asyncio.create_task(fetch(url(proxy, big)))
    await upstream.wait_for_requests(upstream.file_path(big.filename))
    await asyncio.sleep(0.05)
    reply = await ranged(proxy, big, "bytes=-100")
    assert (reply.status, reply.body) == (206, big.read_bytes()[-100:])
    assert (await whole).sha256 == big.sha256
    assert gets(upstream, big) == [None]


async def test_if_range_with_another_tag_gets_the_whole_file(
    upstream: MeteredUpstream, proxy_factory: ProxyFactory
) -> None:
    (wheel,) = upstream.add_project("lib", ["1.0"], sdist=False)
    proxy = await proxy_factory(upstream)
    reply = await ranged(proxy, wheel, "bytes=0-9", **{"If-Range": '"another"'})
    assert (reply.status, reply.sha256) == (200, wheel.sha256)
    assert gets(upstream, wheel) == [None]


async def test_from_a_host_without_ranges_a_range_comes_from_the_whole_file(
    proxy_factory: ProxyFactory,
) -> None:
    async with MeteredUpstream(ranges=False) as upstream:
        one, two = (
            upstream.add_project(name, ["1.0"], big_mb=1, sdist=False)[0] for name in ("a", "b")
        )
        proxy = await proxy_factory(upstream)
        for dist in (one, two):
            reply = await ranged(proxy, dist, "bytes=-100")
            assert (reply.status, reply.body) == (206, dist.read_bytes()[-100:])
        # One range asked (a 200 came back, cut off), then whole files only.
        assert gets(upstream, one) == [f"bytes={one.size - 100}-{one.size - 1}", None]
        assert gets(upstream, two) == [None]
        assert set(blobs_on_disk(proxy.settings.cache_dir)) == {one.sha256, two.sha256}


async def test_an_upstream_that_breaks_off_a_range_breaks_off_the_clients(
    upstream: MeteredUpstream, proxy_factory: ProxyFactory
) -> None:
    (big,) = upstream.add_project("big", ["1.0"], big_mb=4, sdist=False)
    proxy = await proxy_factory(upstream)
    await fetch(url(proxy, big), method="HEAD")  # the length, where the index gives none
    upstream.reset(upstream.file_path(big.filename), after_bytes=1000, times=1)
    with pytest.raises(aiohttp.ClientPayloadError):
        await ranged(proxy, big, "bytes=0-99999")
    reply = await ranged(proxy, big, "bytes=0-99999")  # the next one is whole
    assert (reply.status, reply.body) == (206, big.read_bytes()[:100_000])
    # The first answer ended as a 206 cut short, not as an error raised mid-body.
    assert [s.status for s in proxy.seen if s.method == "GET"] == [206, 206]
