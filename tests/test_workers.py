"""`cachepi serve --workers 2`: two processes, one port, one cache, no duplicated work."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest_asyncio

from tests.clients import isolated_env
from tests.fakeupstream import FakeUpstream

JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}


class Served:
    """A `cachepi serve` subprocess and what it logged."""

    def __init__(self, process: asyncio.subprocess.Process, base: str) -> None:
        self.process = process
        self.base = base
        self.index_url = f"{base}/index/"
        self.log: list[str] = []

    async def collect_log(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.log.append(line.decode(errors="replace"))

    def pids_that_answered(self) -> set[str]:
        return {m[1] for line in self.log if (m := re.search(r"pid=(\d+) \"GET /index/", line))}


@pytest_asyncio.fixture
async def two_workers(
    fake_upstream: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> AsyncIterator[Served]:
    env = isolated_env(tmp_path) | {"CACHEPI_INDEX_URL": fake_upstream.url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cachepi", "serve", "--workers", "2", "--port", str(unused_tcp_port),
        "--cache-dir", str(tmp_path / "cache"),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    served = Served(process, f"http://127.0.0.1:{unused_tcp_port}")
    reader = asyncio.create_task(served.collect_log())
    try:
        await wait_until_both_workers_listen(served)
        yield served
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 20)
        await reader


async def wait_until_both_workers_listen(served: Served) -> None:
    for _ in range(300):
        if sum("serving http" in line for line in served.log) >= 2:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("workers did not start:\n" + "".join(served.log))


async def get(url: str, **headers: str) -> tuple[int, bytes]:
    # A session per request: a new connection each time, so both workers get requests.
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
        return r.status, await r.read()


async def test_one_upstream_download_for_clients_spread_over_workers(
    two_workers: Served, fake_upstream: FakeUpstream
) -> None:
    (big,) = fake_upstream.add_project("bigpkg", ["1.0"], big_mb=20, sdist=False)
    fake_upstream.throttle(fake_upstream.file_path(big.filename), 40 * 1024**2)
    url = f"{two_workers.index_url}bigpkg/{big.filename}"
    results = await asyncio.gather(*(get(url) for _ in range(20)))
    assert fake_upstream.count(fake_upstream.file_path(big.filename)) == 1
    assert all(s == 200 and hashlib.sha256(b).hexdigest() == big.sha256 for s, b in results)
    assert fake_upstream.count("/simple/bigpkg/") == 1
    assert len(two_workers.pids_that_answered()) == 2


async def test_a_failed_download_fails_clients_of_every_worker(
    two_workers: Served, fake_upstream: FakeUpstream
) -> None:
    (dist,) = fake_upstream.add_project("badpkg", ["1.0"], big_mb=4, sdist=False)
    fake_upstream.throttle(fake_upstream.file_path(dist.filename), 8 * 1024**2)
    fake_upstream.corrupt(fake_upstream.file_path(dist.filename))
    url = f"{two_workers.index_url}badpkg/{dist.filename}"
    results = await asyncio.gather(*(get(url) for _ in range(8)), return_exceptions=True)
    assert all(isinstance(r, aiohttp.ClientPayloadError) for r in results), results
    assert len(two_workers.pids_that_answered()) == 2
    assert not list((two_workers_cache(two_workers) / "blobs").rglob(dist.sha256))


def two_workers_cache(served: Served) -> Path:
    line = next(line for line in served.log if " from " in line and "serving" in line)
    return Path(re.search(r" from (\S+) \(", line)[1])  # type: ignore[index]


async def test_page_refresh_and_invalidation_are_shared(
    two_workers: Served, fake_upstream: FakeUpstream
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
