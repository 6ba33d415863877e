"""Bounded memory: the server's resident memory (a real `cachepi serve` process, read from
/proc) while it serves a 1 GiB file (miss, then hit; and a miss 8 clients of two workers
share), a page of 20,000 files and 50,000 distinct projects. The figures are printed (run
with -s to see them)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from cachepi.store.protocols import PageRecord
from cachepi.store.sqlite import SqliteMetadata
from cachepi.upstream import PageResponse
from cachepi.upstream_pages import parse_and_encode
from tests.fakeupstream import Dist, FakeUpstream
from tests.fakeupstream.fixtures import FakeUpstreamFactory
from tests.fetching import JSON, JSON_TYPE
from tests.served import RssWatch, ServedProxy

pytestmark = pytest.mark.slow  # a real server, a 1 GiB file, 50,000 projects

MIB = 1024**2
GROWTH_LIMIT_MIB = 200
PIP_ACCEPT = {
    "Accept": "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.1, text/html;q=0.01"
}


async def started(
    upstream: FakeUpstream, tmp_path: Path, port: int, workers: int = 1
) -> ServedProxy:
    served = ServedProxy(upstream.url, tmp_path / "cache", port, workers=workers)
    await served.start()
    return served


async def baseline_kib(served: ServedProxy, warm: Callable[[], Awaitable[object]]) -> int:
    """Resident memory after the code paths under test ran once on something small."""
    await warm()
    await asyncio.sleep(0.2)
    return served.rss_kib()


def report(label: str, base_kib: int, peak_kib: int, seconds: float) -> str:
    line = (
        f"{label}: baseline {base_kib / 1024:.0f} MiB, peak {peak_kib / 1024:.0f} MiB, "
        f"growth {(peak_kib - base_kib) / 1024:.0f} MiB, {seconds:.1f} s"
    )
    print(line)
    return line


async def download_sha256(session: aiohttp.ClientSession, url: str) -> str:
    digest = hashlib.sha256()
    async with session.get(url) as response:
        assert response.status == 200
        async for chunk in response.content.iter_chunked(MIB):
            digest.update(chunk)
    return digest.hexdigest()


async def test_a_1_gib_file_miss_then_hit_keeps_memory_flat(
    fake_upstream_factory: FakeUpstreamFactory, tmp_path: Path, unused_tcp_port: int
) -> None:
    upstream = await fake_upstream_factory()
    (huge,) = upstream.add_project("huge", ["1.0"], big_mb=1024, sdist=False)
    (small,) = upstream.add_project("small", ["1.0"], big_mb=1, sdist=False)
    served = await started(upstream, tmp_path, unused_tcp_port)
    try:
        async with aiohttp.ClientSession() as session:

            async def warm() -> None:
                for _ in range(2):  # a miss, then a hit
                    url = f"{served.index_url}small/{small.filename}"
                    assert await download_sha256(session, url) == small.sha256

            base = await baseline_kib(served, warm)
            url = f"{served.index_url}huge/{huge.filename}"
            for label in ("1 GiB file, miss", "1 GiB file, hit"):
                watch = RssWatch(served)
                began = time.monotonic()
                assert await watch.during(download_sha256(session, url)) == huge.sha256
                report(label, base, watch.peak_kib, time.monotonic() - began)
                assert watch.peak_kib - base < GROWTH_LIMIT_MIB * 1024
        assert served.peak_kib() - base < GROWTH_LIMIT_MIB * 1024
    finally:
        await served.stop()


async def test_a_1_gib_miss_of_8_clients_over_two_workers_keeps_memory_flat(
    fake_upstream_factory: FakeUpstreamFactory, tmp_path: Path, unused_tcp_port: int
) -> None:
    """One worker downloads, the other follows its part file; each sends from it to its
    clients with sendfile."""
    upstream = await fake_upstream_factory()
    (huge,) = upstream.add_project("huge", ["1.0"], big_mb=1024, sdist=False)
    (small,) = upstream.add_project("small", ["1.0"], big_mb=1, sdist=False)
    served = await started(upstream, tmp_path, unused_tcp_port, workers=2)
    try:

        async def each(url: str, clients: int) -> list[str]:
            # A session each: new connections, spread over both workers.
            async def one() -> str:
                async with aiohttp.ClientSession() as session:
                    return await download_sha256(session, url)

            return await asyncio.gather(*(one() for _ in range(clients)))

        async def warm() -> None:
            url = f"{served.index_url}small/{small.filename}"
            assert await each(url, 8) == [small.sha256] * 8

        base = await baseline_kib(served, warm)
        watch = RssWatch(served)
        began = time.monotonic()
        digests = await watch.during(each(f"{served.index_url}huge/{huge.filename}", 8))
        assert digests == [huge.sha256] * 8
        report("1 GiB file, miss of 8 clients, 2 workers", base, watch.peak_kib,
               time.monotonic() - began)  # fmt: skip
        assert watch.peak_kib - base < GROWTH_LIMIT_MIB * 1024
        assert upstream.count(upstream.file_path(huge.filename)) == 1
    finally:
        await served.stop()


async def test_a_page_of_20000_files_keeps_memory_bounded(
    fake_upstream_factory: FakeUpstreamFactory, tmp_path: Path, unused_tcp_port: int
) -> None:
    upstream = await fake_upstream_factory()
    upstream.add_project("tiny", ["1.0"])
    for i in range(10_000):
        for filename in (f"manyfiles-0.{i}.tar.gz", f"manyfiles-0.{i}-py3-none-any.whl"):
            upstream.add_dist(Dist.from_bytes(filename, filename.encode()))
    served = await started(upstream, tmp_path, unused_tcp_port)
    variants = [
        PIP_ACCEPT,
        JSON | {"Accept-Encoding": "gzip"},
        JSON | {"Accept-Encoding": "zstd"},
        {"Accept": "text/html", "Accept-Encoding": "gzip"},
        {"Accept": "application/vnd.pypi.simple.v1+html"},
    ]
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:

            async def pages(project: str) -> None:
                for headers in variants:
                    async with session.get(served.index_url + project + "/", headers=headers) as r:
                        assert r.status == 200
                        await r.read()

            base = await baseline_kib(served, lambda: pages("tiny"))
            watch = RssWatch(served)
            began = time.monotonic()
            for _ in range(3):
                await watch.during(pages("manyfiles"))
            report("page of 20,000 files", base, watch.peak_kib, time.monotonic() - began)
        assert watch.peak_kib - base < GROWTH_LIMIT_MIB * 1024
    finally:
        await served.stop()


def seed_cached_pages(cache_dir: Path, upstream: FakeUpstream, names: list[str]) -> None:
    """Put the upstream's pages for `names` in the cache as cachepi itself stores them (its
    own parser and store, the page bodies as the upstream serves them), without the
    upstream round trip: 50,000 misses through two HTTP hops cost minutes, the same pages
    written here cost seconds. The server then serves every one of them over HTTP."""
    store = SqliteMetadata(cache_dir / "cachepi.sqlite3")
    now = time.time()
    try:
        for name in names:
            dist = upstream.dists(name)[0]
            body = json.dumps(
                {
                    "meta": {"api-version": "1.1"},
                    "name": name,
                    "versions": [dist.version],
                    "files": [
                        {
                            "filename": dist.filename,
                            "url": upstream.file_url(dist.filename),
                            "hashes": {"sha256": dist.sha256},
                            "size": dist.size,
                        }
                    ],
                }
            ).encode()
            etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
            response = PageResponse(200, body, JSON_TYPE, etag, None, f"{upstream.url}{name}/")
            _, encoded = parse_and_encode(name, response)
            store.put_page(upstream.url, name, PageRecord(now, etag, None, encoded))
    finally:
        store.close()


async def test_50000_cached_projects_keep_memory_bounded(
    fake_upstream_factory: FakeUpstreamFactory, tmp_path: Path, unused_tcp_port: int
) -> None:
    count = 50_000
    upstream = await fake_upstream_factory()
    names = [f"proj{i}" for i in range(count)]
    for i, name in enumerate(names):
        upstream.add_dist(Dist.from_bytes(f"{name}-1.0.tar.gz", b"%d" % i))
    began = time.monotonic()
    seed_cached_pages(tmp_path / "cache", upstream, names)
    seeded = time.monotonic() - began
    served = await started(upstream, tmp_path, unused_tcp_port)
    try:
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def pages(chosen: list[str]) -> None:
                queue = iter(chosen)

                async def worker() -> None:
                    for name in queue:
                        url = f"{served.index_url}{name}/"
                        async with session.get(url, headers=PIP_ACCEPT) as response:
                            assert response.status == 200, await response.text()
                            await response.read()

                await asyncio.gather(*(worker() for _ in range(32)))

            base = await baseline_kib(served, lambda: pages(names[:500]))
            watch = RssWatch(served, every=0.2)
            began = time.monotonic()
            await watch.during(pages(names[500:]))
            seconds = time.monotonic() - began
            async with session.get(served.index_url, headers=JSON) as response:
                assert response.status == 200
                assert len((await response.json(content_type=None))["projects"]) == count
            watch.peak_kib = max(watch.peak_kib, served.rss_kib())
            label = f"{count} cached projects (+ a {count}-name list)"
            report(label, base, watch.peak_kib, seconds)
            print(
                f"seeded {count} pages in {seeded:.1f} s; served {count - 500} distinct cached "
                f"pages at {(count - 500) / seconds:.0f}/s"
            )
        assert upstream.count_prefix("/simple/proj") == 0  # all of them came from the cache
        assert watch.peak_kib - base < GROWTH_LIMIT_MIB * 1024
    finally:
        await served.stop()
