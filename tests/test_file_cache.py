"""The file cache: one download per file, streamed to everyone, verified, evicted LRU."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest
from yarl import URL

from tests.cachedir import blobs_on_disk, leftovers
from tests.conftest import ProxyFactory
from tests.fakeupstream import Dist, FakeUpstream
from tests.proxy import RunningProxy


def blobs(proxy: RunningProxy) -> dict[str, int]:
    return blobs_on_disk(proxy.settings.cache_dir)


def file_url(proxy: RunningProxy, dist: Dist) -> str:
    return f"{proxy.index_url}{dist.project}/{dist.filename}"


async def fetch(
    session: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    async with session.get(url, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


async def test_concurrent_clients_share_one_upstream_download(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    (big,) = fake_upstream.add_project("bigpkg", ["1.0"], big_mb=20, sdist=False)
    # Slow enough that all 20 clients arrive while the download is still running.
    fake_upstream.throttle(fake_upstream.file_path(big.filename), 40 * 1024**2)
    proxy = await proxy_factory(fake_upstream)
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(fetch(session, file_url(proxy, big)) for _ in range(20)))
    assert fake_upstream.count(fake_upstream.file_path(big.filename)) == 1
    for status, _, body in results:
        assert status == 200
        assert hashlib.sha256(body).hexdigest() == big.sha256
    assert blobs(proxy) == {big.sha256: big.size}
    assert leftovers(proxy.settings.cache_dir) == []


async def test_clients_receive_bytes_before_the_download_ends(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    (big,) = fake_upstream.add_project("slowpkg", ["1.0"], big_mb=2, sdist=False)
    fake_upstream.throttle(fake_upstream.file_path(big.filename), 1024**2)  # ~2 s in all
    proxy = await proxy_factory(fake_upstream)
    async with (
        aiohttp.ClientSession() as session,
        session.get(file_url(proxy, big)) as response,
    ):
        assert response.headers["Content-Length"] == str(big.size)
        first = await asyncio.wait_for(response.content.readexactly(64 * 1024), 1.0)
        rest = await response.read()
    assert hashlib.sha256(first + rest).hexdigest() == big.sha256


async def test_corrupted_upstream_bytes_are_not_stored_and_the_client_transfer_fails(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    (dist,) = fake_upstream.add_project("badpkg", ["1.0"], big_mb=1, sdist=False)
    fake_upstream.corrupt(fake_upstream.file_path(dist.filename))
    proxy = await proxy_factory(fake_upstream)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            await fetch(session, file_url(proxy, dist))
        assert blobs(proxy) == {}
        assert leftovers(proxy.settings.cache_dir) == []
        # Once the upstream is healthy again, the file downloads and verifies.
        fake_upstream.clear()
        status, _, body = await fetch(session, file_url(proxy, dist))
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == dist.sha256
    assert blobs(proxy) == {dist.sha256: dist.size}


async def test_upstream_reset_mid_body_fails_the_client_and_stores_nothing(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    (dist,) = fake_upstream.add_project("resetpkg", ["1.0"], big_mb=1, sdist=False)
    fake_upstream.reset(fake_upstream.file_path(dist.filename), after_bytes=100_000)
    proxy = await proxy_factory(fake_upstream)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            await fetch(session, file_url(proxy, dist))
    assert blobs(proxy) == {}


async def test_eviction_keeps_the_cache_under_its_limit_and_drops_the_least_recently_used(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    dists = [
        fake_upstream.add_project(f"pkg{i}", ["1.0"], big_mb=1, sdist=False)[0] for i in range(5)
    ]
    limit = 3 * max(d.size for d in dists)  # room for three files, not four
    proxy = await proxy_factory(fake_upstream, cache_size=limit)
    async with aiohttp.ClientSession() as session:
        for dist in dists[:3]:
            assert (await fetch(session, file_url(proxy, dist)))[0] == 200
        # Use the first file again: now the second is the least recently used.
        await asyncio.sleep(0.01)
        assert (await fetch(session, file_url(proxy, dists[0])))[0] == 200
        for dist in dists[3:]:
            await asyncio.sleep(0.01)
            assert (await fetch(session, file_url(proxy, dist)))[0] == 200
    stored = blobs(proxy)
    assert sum(stored.values()) <= limit
    assert set(stored) == {dists[0].sha256, dists[3].sha256, dists[4].sha256}


async def test_eviction_state_survives_a_restart(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    dists = [
        fake_upstream.add_project(f"pkg{i}", ["1.0"], big_mb=1, sdist=False)[0] for i in range(3)
    ]
    limit = 2 * max(d.size for d in dists)
    proxy = await proxy_factory(fake_upstream, cache_size=limit)
    async with aiohttp.ClientSession() as session:
        for dist in dists[:2]:
            await fetch(session, file_url(proxy, dist))
            await asyncio.sleep(0.01)
        await proxy.stop()
        restarted = await proxy_factory(fake_upstream, cache_size=limit)
        await fetch(session, file_url(restarted, dists[2]))
    assert set(blobs(restarted)) == {dists[1].sha256, dists[2].sha256}


async def test_cache_size_zero_streams_without_storing(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream, cache_size=0)
    dist = fake_upstream.dists("lib")[0]
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            status, _, body = await fetch(session, file_url(proxy, dist))
            assert (status, body) == (200, dist.read_bytes())
    assert fake_upstream.count(fake_upstream.file_path(dist.filename)) == 2
    assert blobs(proxy) == {}
    assert leftovers(proxy.settings.cache_dir) == []


async def test_cached_file_head_and_ranges(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    dist = fake_upstream.dists("lib")[0]
    data = dist.read_bytes()
    url = file_url(proxy, dist)
    async with aiohttp.ClientSession() as session:
        await fetch(session, url)  # now cached
        fake_upstream.reset_counts()
        async with session.head(url) as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(len(data))
            assert response.headers["Accept-Ranges"] == "bytes"
            assert response.headers["Cache-Control"] == "max-age=365000000, immutable"
        status, headers, body = await fetch(session, url, Range="bytes=10-19")
        assert (status, body) == (206, data[10:20])
        assert headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        status, headers, body = await fetch(session, url, Range="bytes=-100")
        assert (status, body) == (206, data[-100:])
        status, headers, _ = await fetch(session, url, Range=f"bytes={len(data)}-")
        assert (status, headers["Content-Range"]) == (416, f"bytes */{len(data)}")
    assert fake_upstream.requests == []


async def test_range_on_a_file_not_yet_cached(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    dist = fake_upstream.dists("lib")[0]
    data = dist.read_bytes()
    async with aiohttp.ClientSession() as session:
        status, headers, body = await fetch(session, file_url(proxy, dist), Range="bytes=-50")
    assert (status, body) == (206, data[-50:])
    assert headers["Content-Range"] == f"bytes {len(data) - 50}-{len(data) - 1}/{len(data)}"


async def test_metadata_file_is_served_byte_identical(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    wheel = next(d for d in fake_upstream.dists("app") if d.is_wheel)
    async with aiohttp.ClientSession() as session:
        status, headers, body = await fetch(session, file_url(proxy, wheel) + ".metadata")
    assert (status, body) == (200, wheel.metadata)
    assert "Content-Encoding" not in headers


async def test_unlisted_file_is_404_and_hostile_filenames_400_without_upstream_requests(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    async with aiohttp.ClientSession() as session:
        assert (await fetch(session, f"{proxy.index_url}lib/lib-9.9-py3-none-any.whl"))[0] == 404
        fake_upstream.reset_counts()
        for bad in ("..%2F..%2Fetc%2Fpasswd", "%2e%2e", ".hidden", "a%00b.whl"):
            # encoded=True: send the path exactly as written, no client-side normalizing
            async with session.get(URL(f"{proxy.index_url}lib/{bad}", encoded=True)) as response:
                assert response.status in (400, 404), bad
    assert fake_upstream.requests == []


async def test_range_of_a_file_that_fails_verification_never_completes(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """A range of half the file or more is served from the whole file's download, whose
    last byte waits for all of it to verify (a smaller range is passed through from the
    upstream, unverified: test_ranges_through_proxy.py)."""
    (dist,) = fake_upstream.add_project("badrange", ["1.0"], big_mb=1, sdist=False)
    fake_upstream.corrupt(fake_upstream.file_path(dist.filename))  # the byte in the middle
    proxy = await proxy_factory(fake_upstream)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            await fetch(session, file_url(proxy, dist), Range=f"bytes=-{dist.size * 3 // 4}")
    assert blobs(proxy) == {}
