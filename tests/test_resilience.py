"""When the upstream fails or must not be asked: offline mode, timeouts, file hosts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.clients import pip_install
from tests.conftest import ProxyFactory
from tests.fakeupstream import FakeUpstream

JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}


async def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


async def test_offline_serves_the_cache_and_never_contacts_upstream(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    online = await proxy_factory((fake_upstream.url, 1))
    (await pip_install(online.index_url, tmp_path / "a", "app", home=tmp_path)).check()
    await online.stop()
    await asyncio.sleep(1.1)  # every page is past its TTL now
    fake_upstream.reset_counts()
    offline = await proxy_factory((fake_upstream.url, 1), offline=True)
    (await pip_install(offline.index_url, tmp_path / "b", "app", home=tmp_path)).check()
    status, _, body = await get(offline.index_url + "nothere/")
    assert (status, body.count(b"\n")) == (503, 1)
    assert b"offline" in body
    uncached = fake_upstream.dists("lib")[-1]  # the sdist: pip took the wheels
    status, _, _ = await get(f"{offline.index_url}lib/{uncached.filename}")
    assert status == 503
    assert fake_upstream.requests == []


async def test_upstream_timeout_is_a_504_with_a_reason(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream, read_timeout=0.3)
    fake_upstream.hang("/simple/lib/")
    status, _, body = await get(proxy.index_url + "lib/", **JSON)
    assert status == 504
    assert body == f"{fake_upstream.url}lib/: upstream timed out\n".encode()


async def test_files_only_come_from_allowed_hosts(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream, file_hosts=frozenset({"files.example.org"}))
    wheel = fake_upstream.dists("lib")[0]
    status, _, body = await get(f"{proxy.index_url}lib/{wheel.filename}")
    assert status == 502
    assert b"'127.0.0.1' are not allowed" in body
    assert fake_upstream.count_prefix("/files/") == 0
