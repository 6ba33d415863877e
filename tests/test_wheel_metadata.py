"""PEP 658 metadata for every wheel of an index that offers none: advertised on pages
(`true`, then its hash), and always served, read from a few ranges of the upstream's wheel
(never the whole wheel), or, from a host without ranges, from the whole wheel downloaded
once; whichever process (or proxy sharing the cache) is asked. Bytes are counted by the fake
upstream."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.cachedir import blobs_on_disk
from tests.conftest import ProxyFactory
from tests.fakeupstream import Dist, build_wheel
from tests.fakeupstream.metered import MeteredUpstream
from tests.fetching import fetch, get_json
from tests.hostile_wheels import bomb_wheel
from tests.proxy import RunningProxy

KIB = 1024


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[MeteredUpstream]:
    """An index without PEP 658 and without PEP 700 upload times (api-version 1.0)."""
    async with MeteredUpstream(pep700=False) as up:
        yield up


def metadata_url(proxy: RunningProxy, wheel: Dist) -> str:
    return f"{proxy.index_url}{wheel.project}/{wheel.filename}.metadata"


def file_requests(upstream: MeteredUpstream) -> list[tuple[str, str | None, int | None]]:
    """(method, Range, status) of every request for a file."""
    return [
        (r.method, r.headers.get("Range"), r.status)
        for r in upstream.requests
        if r.path.startswith("/files/")
    ]


async def advertised(proxy: RunningProxy, project: str) -> dict[str, object]:
    page = await get_json(f"{proxy.index_url}{project}/")
    return {f["filename"]: f.get("core-metadata") for f in json.loads(page.body)["files"]}


async def stored(proxy: RunningProxy, wheel: Dist) -> None:
    """Until the METADATA the first client got is stored and paired (after its answer)."""
    async with asyncio.timeout(5):
        while (await advertised(proxy, wheel.project)).get(wheel.filename) is True:  # noqa: ASYNC110 - nothing to await instead
            await asyncio.sleep(0.01)


async def test_a_big_wheels_metadata_costs_a_few_ranges_and_is_then_advertised(
    upstream: MeteredUpstream, proxy_factory: ProxyFactory
) -> None:
    (big, sdist) = upstream.add_project("big", ["1.0"], big_mb=30, core_metadata=False)
    proxy = await proxy_factory(upstream)
    assert await advertised(proxy, "big") == {big.filename: True, sdist.filename: None}
    html = await fetch(f"{proxy.index_url}big/")
    assert b'data-core-metadata="true" data-dist-info-metadata="true"' in html.body
    reply = await fetch(metadata_url(proxy, big))
    assert (reply.status, reply.body) == (200, big.metadata)
    assert reply.headers["ETag"] == f'"{big.metadata_sha256}"'
    # The wheel's last 16 KiB hold its end record, directory and METADATA: one range.
    assert file_requests(upstream) == [("GET", "bytes=-16384", 206)]
    assert upstream.sent("/files/*") < 20 * KIB
    await stored(proxy, big)
    assert await advertised(proxy, "big") == {
        big.filename: {"sha256": big.metadata_sha256}, sdist.filename: None,
    }  # fmt: skip
    assert big.sha256 not in blobs_on_disk(proxy.settings.cache_dir)  # the wheel is not kept
    upstream.reset_counts()
    again = await fetch(metadata_url(proxy, big))
    assert (again.status, again.body) == (200, big.metadata)
    assert file_requests(upstream) == []


async def test_a_big_central_directory_takes_a_range_of_its_own(
    upstream: MeteredUpstream, proxy_factory: ProxyFactory
) -> None:
    (wheel,) = upstream.add_project(
        "scipyish", ["1.0"], big_mb=20, modules=3000, core_metadata=False, sdist=False
    )
    proxy = await proxy_factory(upstream)
    reply = await fetch(metadata_url(proxy, wheel))
    assert (reply.status, reply.body) == (200, wheel.metadata)
    requests = file_requests(upstream)
    assert 2 <= len(requests) <= 3 and {status for _, _, status in requests} == {206}
    end = wheel.read_bytes()[-22:]
    directory = int.from_bytes(end[12:16], "little")
    assert directory > 200 * KIB
    assert upstream.sent("/files/*") < directory + 64 * KIB


async def test_clients_asking_at_once_share_one_reading(
    upstream: MeteredUpstream, proxy_factory: ProxyFactory
) -> None:
    (wheel,) = upstream.add_project("lib", ["1.0"], big_mb=2, core_metadata=False, sdist=False)
    upstream.delay(upstream.file_path(wheel.filename), 0.2)
    proxy = await proxy_factory(upstream)
    replies = await asyncio.gather(*(fetch(metadata_url(proxy, wheel)) for _ in range(10)))
    assert {(r.status, r.body) for r in replies} == {(200, wheel.metadata)}
    assert len(file_requests(upstream)) == 1


async def test_another_proxy_on_the_cache_serves_what_one_read_at_once(
    upstream: MeteredUpstream, proxy_factory: ProxyFactory
) -> None:
    """Two servers (two workers, or nodes) on one cache: the second learns of the first's
    pairs up to a second late, and a client that got a page advertising the hash from one
    asks the other for the file right away. It must have it (it was a 404)."""
    (wheel,) = upstream.add_project("lib", ["1.0"], core_metadata=False, sdist=False)
    first, second = await proxy_factory(upstream), await proxy_factory(upstream)
    assert await advertised(second, "lib") == {wheel.filename: True}  # before: nothing known
    reply = await fetch(metadata_url(first, wheel))
    assert (reply.status, reply.body) == (200, wheel.metadata)
    await stored(first, wheel)
    assert await advertised(first, "lib") == {wheel.filename: {"sha256": wheel.metadata_sha256}}
    upstream.reset_counts()
    reply = await fetch(metadata_url(second, wheel))
    assert (reply.status, reply.body) == (200, wheel.metadata)
    assert file_requests(upstream) == []


async def test_a_cached_wheels_metadata_is_read_from_it(
    upstream: MeteredUpstream, proxy_factory: ProxyFactory
) -> None:
    (wheel,) = upstream.add_project("lib", ["1.0"], core_metadata=False, sdist=False)
    proxy = await proxy_factory(upstream)
    assert (await fetch(f"{proxy.index_url}lib/{wheel.filename}")).status == 200
    upstream.reset_counts()
    reply = await fetch(metadata_url(proxy, wheel))
    assert (reply.status, reply.body) == (200, wheel.metadata)
    assert file_requests(upstream) == []


async def test_from_a_host_without_ranges_the_wheel_is_downloaded_once_and_kept(
    proxy_factory: ProxyFactory,
) -> None:
    async with MeteredUpstream(pep700=False, ranges=False) as upstream:
        wheels = [
            upstream.add_project(name, ["1.0"], big_mb=1, core_metadata=False, sdist=False)[0]
            for name in ("one", "two")
        ]
        proxy = await proxy_factory(upstream)
        for wheel in wheels:
            reply = await fetch(metadata_url(proxy, wheel))
            assert (reply.status, reply.body) == (200, wheel.metadata)
        ranged = [r for r in file_requests(upstream) if r[1] is not None]
        assert ranged == [("GET", "bytes=-16384", 200)]  # asked once, then whole files only
        assert [r for r in file_requests(upstream) if r[1] is None] == [("GET", None, 200)] * 2
        upstream.reset_counts()
        for wheel in wheels:  # the wheels were kept
            reply = await fetch(f"{proxy.index_url}{wheel.project}/{wheel.filename}")
            assert (reply.status, reply.sha256) == (200, wheel.sha256)
        assert file_requests(upstream) == []


async def test_a_wheel_without_readable_metadata_is_a_clear_502_once_read(
    upstream: MeteredUpstream, proxy_factory: ProxyFactory
) -> None:
    bomb = upstream.add_dist(bomb_wheel("bomb", "1.0"), core_metadata=False)
    proxy = await proxy_factory(upstream)
    assert await advertised(proxy, "bomb") == {bomb.filename: True}
    reply = await fetch(metadata_url(proxy, bomb))
    assert reply.status == 502 and b"no readable METADATA" in reply.body, reply.body
    # Its METADATA claims 1 KiB (and inflates to 1 GiB): read to a byte past the claim, of
    # 6.7 MB of wheel.
    assert upstream.sent("/files/*") < 128 * KIB
    assert await advertised(proxy, "bomb") == {bomb.filename: None}
    upstream.reset_counts()
    assert (await fetch(metadata_url(proxy, bomb))).status == 502
    assert file_requests(upstream) == []


async def test_head_reads_nothing_and_a_wheel_without_sha256_is_not_advertised(
    upstream: MeteredUpstream, proxy_factory: ProxyFactory
) -> None:
    (wheel,) = upstream.add_project("lib", ["1.0"], core_metadata=False, sdist=False)
    proxy = await proxy_factory(upstream)
    head = await fetch(metadata_url(proxy, wheel), method="HEAD")
    assert head.status == 200 and "Content-Length" not in head.headers
    assert file_requests(upstream) == []
    await fetch(metadata_url(proxy, wheel))
    await stored(proxy, wheel)
    head = await fetch(metadata_url(proxy, wheel), method="HEAD")
    assert head.headers["Content-Length"] == str(len(wheel.metadata or b""))
    assert head.headers["ETag"] == f'"{wheel.metadata_sha256}"'


async def test_metadata_of_a_wheel_the_index_gives_no_hash_for_is_not_advertised(
    proxy_factory: ProxyFactory,
) -> None:
    from tests.fakeupstream.hostile import HostileUpstream

    wheel = build_wheel("nohash", "1.0")
    async with HostileUpstream() as index:
        index.project("nohash", [(wheel.filename, index.at(f"/files/{wheel.filename}"), None)])
        index.serve(f"/files/{wheel.filename}", wheel.read_bytes(), "application/octet-stream")
        proxy = await proxy_factory((index.url, 600))
        assert await advertised(proxy, "nohash") == {wheel.filename: None}
        assert (await fetch(metadata_url(proxy, wheel))).status == 404


@pytest.mark.parametrize("format", ["json", "html"])
async def test_the_metadata_served_is_the_wheels_own_byte_for_byte(
    format: str, proxy_factory: ProxyFactory
) -> None:
    async with MeteredUpstream(format=format, pep700=False) as upstream:  # type: ignore[arg-type]
        dists = upstream.add_project(
            "lib", ["1.0", "2.0"], deps=["dep>=1"], requires_python=">=3.8", core_metadata=False
        )
        proxy = await proxy_factory(upstream)
        for wheel in (d for d in dists if d.is_wheel):
            reply = await fetch(metadata_url(proxy, wheel))
            assert hashlib.sha256(reply.body).hexdigest() == wheel.metadata_sha256
