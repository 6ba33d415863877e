"""`cachepi serve --workers N`: N processes, one port, one cache, no duplicated work; the
port is one server's alone, and the workers die with their supervisor."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from tests.clients import isolated_env
from tests.fakeupstream import FakeUpstream
from tests.fetching import fetch
from tests.served import ServedProxy, running
from tests.test_metrics import scrape

JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}


def pids_that_answered(served: ServedProxy) -> set[str]:
    return {m[1] for line in served.log if (m := re.search(r"pid=<?(\d+)>? \"GET /index/", line))}


@pytest_asyncio.fixture
async def two_workers(
    fake_upstream: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> AsyncIterator[ServedProxy]:
    served = ServedProxy(fake_upstream.url, tmp_path / "cache", unused_tcp_port, workers=2)
    await served.start()
    try:
        yield served
    finally:
        await served.stop()


async def get(url: str, **headers: str) -> tuple[int, bytes]:
    # A session per request: a new connection each time, so both workers get requests.
    reply = await fetch(url, headers=headers)
    return reply.status, reply.body


async def test_one_upstream_download_for_clients_spread_over_workers(
    two_workers: ServedProxy, fake_upstream: FakeUpstream
) -> None:
    (big,) = fake_upstream.add_project("bigpkg", ["1.0"], big_mb=20, sdist=False)
    fake_upstream.throttle(fake_upstream.file_path(big.filename), 40 * 1024**2)
    url = f"{two_workers.index_url}bigpkg/{big.filename}"
    results = await asyncio.gather(*(get(url) for _ in range(20)))
    assert fake_upstream.count(fake_upstream.file_path(big.filename)) == 1
    assert all(s == 200 and hashlib.sha256(b).hexdigest() == big.sha256 for s, b in results)
    assert fake_upstream.count("/simple/bigpkg/") == 1
    assert len(pids_that_answered(two_workers)) == 2


async def test_a_failed_download_fails_clients_of_every_worker(
    two_workers: ServedProxy, fake_upstream: FakeUpstream
) -> None:
    (dist,) = fake_upstream.add_project("badpkg", ["1.0"], big_mb=4, sdist=False)
    fake_upstream.throttle(fake_upstream.file_path(dist.filename), 8 * 1024**2)
    fake_upstream.corrupt(fake_upstream.file_path(dist.filename))
    url = f"{two_workers.index_url}badpkg/{dist.filename}"
    # Connections land on either worker as the kernel likes: ask until both answered.
    for _ in range(5):
        results = await asyncio.gather(*(get(url) for _ in range(8)), return_exceptions=True)
        assert all(isinstance(r, aiohttp.ClientPayloadError) for r in results), results
        if len(pids_that_answered(two_workers)) == 2:
            break
    assert len(pids_that_answered(two_workers)) == 2
    assert not list((two_workers.cache_dir / "blobs").rglob(dist.sha256))


async def test_page_refresh_and_invalidation_are_shared(
    two_workers: ServedProxy, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.delay("/simple/lib/", 0.3)
    pages = await asyncio.gather(*(get(two_workers.index_url + "lib/", **JSON) for _ in range(20)))
    assert {status for status, _ in pages} == {200}
    assert fake_upstream.count("/simple/lib/") == 1
    async with (
        aiohttp.ClientSession() as session,
        session.delete(two_workers.base + "/cache/lib") as response,
    ):
        assert response.status == 200
    await asyncio.sleep(1.2)  # workers look for invalidations once a second
    await asyncio.gather(*(get(two_workers.index_url + "lib/", **JSON) for _ in range(20)))
    assert fake_upstream.count("/simple/lib/") == 2


def answered(served: ServedProxy, path: str, since: int) -> set[str]:
    """The workers (pids) that answered GET `path` in log lines from `since` on."""
    pattern = re.compile(rf'pid=<?(\d+)>? "GET {re.escape(path)} ')
    return {m[1] for line in served.log[since:] if (m := pattern.search(line))}


async def from_both_workers(served: ServedProxy, path: str) -> list[bytes]:
    """GET `path` on new connections until each worker answered it; the bodies."""
    since = len(served.log)
    bodies = []
    async with asyncio.timeout(30):
        while len(answered(served, path, since)) < 2:
            status, body = await get(served.base + path, **JSON)
            assert status == 200
            bodies.append(body)
    return bodies


async def test_invalidating_a_project_keeps_the_other_pages_in_every_workers_memory(
    two_workers: ServedProxy, fake_upstream: FakeUpstream
) -> None:
    """Each worker drops the invalidated project only: the other pages are served from its
    memory, not read from the store again (cachepi_page_loads counts those reads)."""
    for path in ("/index/app/", "/index/lib/"):
        await from_both_workers(two_workers, path)
    fake_upstream.add_project("lib", ["2.0"])  # what both workers must see after
    loads = (await scrape(two_workers.base)).value("cachepi_page_loads_total")
    assert loads >= 2  # each page, by the worker that did not fetch it
    async with (
        aiohttp.ClientSession() as session,
        session.delete(two_workers.base + "/cache/lib") as response,
    ):
        assert response.status == 200
    await asyncio.sleep(1.2)  # workers look for invalidations once a second
    await from_both_workers(two_workers, "/index/app/")
    assert (await scrape(two_workers.base)).value("cachepi_page_loads_total") == loads
    assert fake_upstream.count("/simple/app/") == 1
    assert all(b"lib-2.0" in body for body in await from_both_workers(two_workers, "/index/lib/"))
    assert fake_upstream.count("/simple/lib/") == 2


# -- the port is one server's, and its workers die with it --------------------------------


async def kill_supervisor(served: ServedProxy, within: float) -> None:
    """SIGKILL the supervisor alone (not its process group, as `ServedProxy.kill` does),
    and see that none of its workers runs `within` seconds later."""
    workers = [pid for pid in served.pids() if pid != served.pid]
    assert len(workers) == served.workers, served.pids()
    os.kill(served.pid, signal.SIGKILL)
    began = time.monotonic()
    while any(running(pid) for pid in workers) and time.monotonic() - began < within:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    assert not any(running(pid) for pid in workers), "workers outlived their supervisor"


async def test_workers_die_with_their_supervisor(two_workers: ServedProxy) -> None:
    await kill_supervisor(two_workers, within=3)
    await two_workers.kill()  # reaps what is left: nothing
    # The port is free: a new server starts on it, on the same cache, with every worker.
    await two_workers.start()
    assert (await fetch(two_workers.base + "/health")).status == 200


async def test_a_worker_dies_with_its_supervisor_mid_download(
    two_workers: ServedProxy, fake_upstream: FakeUpstream
) -> None:
    (big,) = fake_upstream.add_project("slowpkg", ["1.0"], big_mb=8, sdist=False)
    fake_upstream.throttle(fake_upstream.file_path(big.filename), 512 * 1024)  # 16 s
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{two_workers.index_url}slowpkg/{big.filename}") as response,
    ):
        assert response.status == 200
        await response.content.readexactly(64 * 1024)  # bytes are flowing
        await kill_supervisor(two_workers, within=2)
        # And the client is not left waiting on a connection nobody serves.
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(2):
                await response.read()


async def start_second(port: int, workers: int, cache_dir: Path) -> tuple[int, str]:
    """`cachepi serve` on `port`, expected to refuse: its exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cachepi", "serve", "--port", str(port), "--workers", str(workers),
        "--cache-dir", str(cache_dir), env=isolated_env(cache_dir.parent),
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError("a second server started on a port another serves") from None
    assert process.returncode is not None
    return process.returncode, stderr.decode(errors="replace")


@pytest.mark.parametrize(("first", "second"), [(2, 2), (2, 1), (1, 2), (1, 1)])
async def test_a_second_server_on_a_served_port_refuses_to_start(
    first: int,
    second: int,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    unused_tcp_port: int,
) -> None:
    served = ServedProxy(fake_upstream.url, tmp_path / "cache", unused_tcp_port, workers=first)
    await served.start()
    try:
        assert (await fetch(served.index_url + "lib/")).status == 200
        metrics = sorted(os.listdir(served.cache_dir / "metrics")) if first > 1 else []
        # The same cache: a restart with new settings while the old server still runs.
        code, stderr = await start_second(unused_tcp_port, second, served.cache_dir)
        assert code == 2, stderr
        assert stderr.count("\n") == 1 and stderr.startswith("cachepi: error: "), stderr
        assert f":{unused_tcp_port}" in stderr, stderr
        # The first still answers, every process of it, and the refused one left its cache
        # alone (a supervisor's start empties the metrics directory).
        assert (await fetch(served.index_url + "lib/")).status == 200
        assert len(served.pids()) == first + (1 if first > 1 else 0)
        if first > 1:
            assert metrics and sorted(os.listdir(served.cache_dir / "metrics")) == metrics
    finally:
        await served.stop()


async def test_a_second_server_on_the_same_cache_leaves_the_first_ones_work_alone(
    fake_upstream: FakeUpstream, tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> None:
    """A blue/green restart: the new server starts on another port and the same cache
    while the old one still downloads. The old download is kept, and both servers' metrics
    still answer (each has a metrics directory of its own)."""
    (big,) = fake_upstream.add_project("bluegreen", ["1.0"], big_mb=4, sdist=False)
    path = fake_upstream.file_path(big.filename)
    fake_upstream.throttle(path, 1024**2)  # 4 s
    cache = tmp_path / "cache"
    blue = ServedProxy(fake_upstream.url, cache, unused_tcp_port_factory(), workers=2)
    green = ServedProxy(fake_upstream.url, cache, unused_tcp_port_factory(), workers=2)
    await blue.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{blue.index_url}bluegreen/{big.filename}") as response,
        ):
            assert response.status == 200
            head = await response.content.readexactly(1024)  # the download runs
            await green.start()
            body = head + await response.read()
        assert hashlib.sha256(body).hexdigest() == big.sha256
        # Blue kept it: green serves it from the cache.
        reply = await fetch(f"{green.index_url}bluegreen/{big.filename}")
        assert (reply.status, reply.sha256) == (200, big.sha256)
        assert fake_upstream.count(path) == 1
        assert "another server uses" in green.log_text()
        for served in (blue, green):
            assert "cachepi_requests_total" in (await fetch(served.base + "/metrics")).body.decode()
    finally:
        await green.stop()
        await blue.stop()
