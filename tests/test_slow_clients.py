"""Slow or stalled clients cannot pin a connection and a file forever (`client_timeout`),
and a client that is slow but keeps reading is not mistaken for a stalled one."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from tests.conftest import ProxyFactory
from tests.fakeupstream import Dist, FakeUpstream
from tests.fetching import fetch
from tests.proxy import RunningProxy
from tests.rawclient import RawClient

pytestmark = pytest.mark.slow  # clients that take seconds to read, against a 1 s client timeout

CLIENT_TIMEOUT = 1.0


def file_path(dist: Dist) -> str:
    return f"/index/{dist.project}/{dist.filename}"


async def assert_stalled_client_is_dropped(proxy: RunningProxy, dist: Dist, cached: bool) -> None:
    client = await RawClient.connect(proxy.port)
    try:
        await client.send_get(file_path(dist))
        began = time.monotonic()
        # The server keeps answering others meanwhile.
        for _ in range(3):
            assert (await fetch(proxy.url + "/health", seconds=2)).status == 200
            await asyncio.sleep(0.2)
        await asyncio.sleep(max(0.0, began + CLIENT_TIMEOUT + 2 - time.monotonic()))
        closed, received = await client.drain_until_closed(within=5)
    finally:
        client.close()
    what = "cached" if cached else "downloading"
    assert closed, f"a stalled client of a {what} file was still connected after 3 s"
    assert received < dist.size


async def test_stalled_client_of_a_cached_file_is_disconnected(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    (big,) = fake_upstream.add_project("stallpkg", ["1.0"], big_mb=20, sdist=False)
    proxy = await proxy_factory(fake_upstream, client_timeout=CLIENT_TIMEOUT)
    assert (await fetch(proxy.url + file_path(big))).sha256 == big.sha256
    await assert_stalled_client_is_dropped(proxy, big, cached=True)


async def test_stalled_client_of_a_download_is_disconnected_and_others_get_the_file(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    (big,) = fake_upstream.add_project("stallmiss", ["1.0"], big_mb=20, sdist=False)
    fake_upstream.throttle(fake_upstream.file_path(big.filename), 10 * 1024**2)  # ~2 s
    proxy = await proxy_factory(fake_upstream, client_timeout=CLIENT_TIMEOUT)
    patient = asyncio.create_task(fetch(proxy.url + file_path(big)))
    await assert_stalled_client_is_dropped(proxy, big, cached=False)
    reply = await patient
    assert (reply.status, reply.sha256) == (200, big.sha256)
    assert fake_upstream.count(fake_upstream.file_path(big.filename)) == 1


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "downloading"])
async def test_slow_but_steady_reader_is_not_disconnected(
    cached: bool, fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """About 2.5 MB/s against a 1 s client timeout: slow, but never a second without
    progress, so the whole file must arrive."""
    (big,) = fake_upstream.add_project(f"steady{cached}", ["1.0"], big_mb=10, sdist=False)
    proxy = await proxy_factory(fake_upstream, client_timeout=CLIENT_TIMEOUT)
    if cached:
        assert (await fetch(proxy.url + file_path(big))).sha256 == big.sha256
    client = await RawClient.connect(proxy.port)
    digest = hashlib.sha256()
    received = 0
    try:
        await client.send_get(file_path(big))
        length = await client.read_head()
        while received < length:
            data = await client.reader.read(64 * 1024)
            if not data:
                break
            digest.update(data)
            received += len(data)
            await asyncio.sleep(0.025)
    except ConnectionResetError:
        pass
    finally:
        client.close()
    assert received == big.size, f"cut off after {received} of {big.size} bytes"
    assert digest.hexdigest() == big.sha256
