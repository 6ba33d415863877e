"""Misses go out with sendfile from the part file, as it grows, to the clients of the
process that downloads the file and to those of a process that follows it (two proxies on
one cache, here in one process: each takes the file's lock as another worker would). Every
sendfile is recorded: no byte of a miss goes out as bytes the proxy copied, the last byte
never goes out before the file verified and was stored, and a body aiohttp frames (no
Content-Length) is never sent with sendfile."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import pytest

from tests.cachedir import blobs_on_disk
from tests.conftest import ProxyFactory
from tests.fakeupstream import Dist, FakeUpstream
from tests.proxy import RunningProxy

MIB = 1024 * 1024


@dataclass(frozen=True)
class Sent:
    """One sendfile: what it was asked to send, what it sent, and what `Sendfiles.look`
    said as it was asked."""

    size: int  # of the file it sent from, when asked
    offset: int
    count: int
    sent: int
    looked: object


@dataclass
class Sendfiles:
    calls: list[Sent] = field(default_factory=list)
    look: Callable[[], object] = lambda: None

    @property
    def sent(self) -> int:
        return sum(call.sent for call in self.calls)


@pytest.fixture
def sendfiles(monkeypatch: pytest.MonkeyPatch) -> Sendfiles:
    """Every sendfile(2) of this process while the test runs (the proxies' only: the
    clients and the fake upstream write bytes): the proxy's own first call and those of
    loop.sendfile alike."""
    record = Sendfiles()
    original = os.sendfile

    def recorded(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        size, looked = os.fstat(in_fd).st_size, record.look()
        sent = original(out_fd, in_fd, offset, count)
        record.calls.append(Sent(size, offset or 0, count, sent, looked))
        return sent

    monkeypatch.setattr(os, "sendfile", recorded)
    return record


async def two_proxies(
    upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> tuple[RunningProxy, RunningProxy]:
    """Two proxies on one cache directory: one downloads a file, the other follows it."""
    return await proxy_factory(upstream), await proxy_factory(upstream)


async def get(url: str) -> tuple[int, dict[str, str], bytes]:
    timeout = aiohttp.ClientTimeout(total=30)  # a body framed wrongly would never end
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        return response.status, dict(response.headers), await response.read()


async def clients_of_both(
    proxies: tuple[RunningProxy, RunningProxy], path: str, each: int
) -> list[tuple[int, dict[str, str], bytes] | BaseException]:
    """`each` clients at each proxy, the first proxy's first (so it downloads the file)."""
    first, second = proxies
    leading = [asyncio.ensure_future(get(first.index_url + path)) for _ in range(each)]
    await asyncio.sleep(0.05)
    following = [asyncio.ensure_future(get(second.index_url + path)) for _ in range(each)]
    return await asyncio.gather(*leading, *following, return_exceptions=True)


def big_wheel(upstream: FakeUpstream, name: str, mib: int) -> tuple[Dist, str]:
    """A wheel sent at 8 MiB/s: its clients join while it downloads."""
    (dist,) = upstream.add_project(name, ["1.0"], big_mb=mib, sdist=False)
    upstream.throttle(upstream.file_path(dist.filename), 8 * MIB)
    return dist, f"{dist.project}/{dist.filename}"


async def test_clients_of_both_processes_get_a_miss_with_sendfile_byte_for_byte(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, sendfiles: Sendfiles
) -> None:
    dist, path = big_wheel(fake_upstream, "sent", 4)
    proxies = await two_proxies(fake_upstream, proxy_factory)
    sendfiles.look = lambda: dist.sha256 in blobs_on_disk(proxies[0].settings.cache_dir)
    results = await clients_of_both(proxies, path, 3)
    for result in results:
        assert not isinstance(result, BaseException), result
        status, headers, body = result
        assert (status, headers["Content-Length"]) == (200, str(dist.size))
        assert hashlib.sha256(body).hexdigest() == dist.sha256
    assert fake_upstream.count(fake_upstream.file_path(dist.filename)) == 1
    # Every byte of every client went out with sendfile, from a part file while it grew
    # (sent files smaller than the whole), in many pieces; each last byte once stored.
    assert sendfiles.sent == 6 * dist.size
    assert any(call.size < dist.size for call in sendfiles.calls)
    assert len(sendfiles.calls) > 6 * 2
    last = [call.looked for call in sendfiles.calls if call.offset + call.sent == dist.size]
    assert last == [True] * 6


async def test_a_corrupt_miss_fails_every_sendfile_client_before_its_last_byte(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, sendfiles: Sendfiles
) -> None:
    dist, path = big_wheel(fake_upstream, "spoilt", 4)
    fake_upstream.corrupt(fake_upstream.file_path(dist.filename))  # its middle byte
    proxies = await two_proxies(fake_upstream, proxy_factory)
    results = await clients_of_both(proxies, path, 3)
    assert all(isinstance(r, aiohttp.ClientPayloadError) for r in results), results
    # They had what came before the wrong byte, with sendfile; never the last byte.
    assert sendfiles.sent >= 6 * (dist.size // 2)
    assert max(call.offset + call.sent for call in sendfiles.calls) < dist.size


async def test_a_follower_without_a_length_writes_its_bytes_and_sends_them_exactly(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, sendfiles: Sendfiles
) -> None:
    """The index gives no size: a follower learns none (the leader has the upstream's), so
    aiohttp frames its answers in chunks, which sendfile would bypass."""
    dist, _ = big_wheel(fake_upstream, "unsized", 2)
    fake_upstream.serve_raw(
        "/simple/unsized/",
        f'<a href="{fake_upstream.file_url(dist.filename)}">{dist.filename}</a>'.encode(),
        "text/html",
    )
    proxies = await two_proxies(fake_upstream, proxy_factory)
    results = await clients_of_both(proxies, f"unsized/{dist.filename}", 2)
    chunked = 0
    for result in results:
        assert not isinstance(result, BaseException), result
        status, headers, body = result
        assert status == 200
        assert hashlib.sha256(body).hexdigest() == dist.sha256
        chunked += headers.get("Transfer-Encoding") == "chunked"
    assert chunked == 2  # the follower's clients
    assert sendfiles.sent == 2 * dist.size  # the leader's, only
