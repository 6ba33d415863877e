"""An upstream's byte ranges (`Upstream.open_range`): what is asked, what is accepted (only
the range asked for), and how a server without ranges is told apart; every answer about a
file tells its Last-Modified."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from cachepi.upstream import Connections, NoRanges, Upstream, UpstreamError
from tests.fakeupstream import FakeUpstream, build_wheel
from tests.fakeupstream.hostile import HostileUpstream, InternalService
from tests.fakeupstream.metered import MeteredUpstream

WHEEL = build_wheel("ranged", "1.0", big_mb=0.1)


@pytest_asyncio.fixture
async def connections() -> AsyncIterator[Connections]:
    connections = Connections()
    yield connections
    await connections.close()


async def read(upstream: Upstream, url: str, start: int, stop: int | None) -> tuple[int, ...]:
    """(start, stop, total) and checks the bytes are the file's."""
    async with upstream.open_range(url, start, stop) as span:
        data = b"".join([chunk async for chunk in span.chunks])
    assert data == WHEEL.read_bytes()[span.start : span.stop]
    return span.start, span.stop, span.total


async def test_a_range_is_asked_for_and_checked(
    fake_upstream: FakeUpstream, connections: Connections
) -> None:
    fake_upstream.add_dist(WHEEL, upload_time=datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC))
    seen: list[tuple[str, str]] = []
    upstream = Upstream(
        fake_upstream.url, 600, connections, name="up",
        last_modified=lambda url, value: seen.append((url, value)),
    )  # fmt: skip
    url, size = fake_upstream.file_url(WHEEL.filename), WHEEL.size
    assert await read(upstream, url, -100, None) == (size - 100, size, size)
    assert await read(upstream, url, 10, 20) == (10, 20, size)
    assert await read(upstream, url, size - 5, None) == (size - 5, size, size)
    assert await read(upstream, url, -(size + 50), None) == (0, size, size)  # more than all
    assert [r.headers["Range"] for r in fake_upstream.requests] == [
        "bytes=-100", "bytes=10-19", f"bytes={size - 5}-", f"bytes=-{size + 50}",
    ]  # fmt: skip
    assert {value for _, value in seen} == {"Sat, 03 Feb 2024 04:05:06 GMT"}
    assert [found for found, _ in seen] == [url] * 4
    await upstream.head_file(url)
    assert len(seen) == 5


async def test_a_server_without_ranges_is_told_apart_and_its_file_not_read(
    connections: Connections,
) -> None:
    async with MeteredUpstream(ranges=False) as fake:
        big = fake.add_dist(build_wheel("whole", "1.0", big_mb=32))
        upstream = Upstream(fake.url, 600, connections, name="up")
        with pytest.raises(NoRanges, match="answered 200"):
            async with upstream.open_range(fake.file_url(big.filename), -100, None):
                pass
        async with asyncio.timeout(5):
            while fake.unfinished("/files/"):  # noqa: ASYNC110 - nothing to await instead
                await asyncio.sleep(0.01)
        # The connection was closed at once: what went out is what the socket buffers of
        # loopback took (a few MiB), not the 32 MiB.
        assert fake.sent(fake.file_path(big.filename)) < 16 * 1024**2


async def test_a_whole_small_file_is_the_range_that_covers_it(connections: Connections) -> None:
    async with MeteredUpstream(ranges=False) as fake:
        small = fake.add_dist(build_wheel("small", "1.0"))
        upstream = Upstream(fake.url, 600, connections, name="up")
        url = fake.file_url(small.filename)
        for start, stop in [(-(small.size + 1), None), (0, None), (0, small.size + 5)]:
            async with upstream.open_range(url, start, stop) as span:
                data = b"".join([chunk async for chunk in span.chunks])
            assert (span.start, span.stop, span.total, data) == (
                0, small.size, small.size, small.read_bytes()
            )  # fmt: skip
        with pytest.raises(NoRanges):
            async with upstream.open_range(url, -(small.size - 1), None):
                pass


@pytest.mark.parametrize(
    ("content_range", "body"),
    [
        ("bytes 0-9/100", b"0123456789"),  # another range than the last 10 bytes
        ("bytes 90-99/100", b"0123456789" * 2),  # more bytes than it says
        ("bytes */100", b""),
        (None, b"0123456789"),  # no Content-Range at all
    ],
)
async def test_a_206_other_than_the_range_asked_for_is_no_range(
    content_range: str | None, body: bytes, connections: Connections
) -> None:
    async with HostileUpstream() as evil:
        headers = {} if content_range is None else {"Content-Range": content_range}
        evil.serve("/files/x.whl", body, "application/octet-stream", headers, status=206)
        upstream = Upstream(evil.url, 600, connections, name="evil")
        with pytest.raises(NoRanges):
            async with upstream.open_range(evil.at("/files/x.whl"), -10, None):
                pass


async def test_a_range_request_follows_redirects_under_the_same_rules(
    connections: Connections,
) -> None:
    async with HostileUpstream() as evil, InternalService() as internal:
        evil.redirect("/files/x.whl", internal.at("/secret"))
        upstream = Upstream(evil.url, 600, connections, name="evil")
        with pytest.raises(UpstreamError, match="could not be reached"):
            async with upstream.open_range(evil.at("/files/x.whl"), -10, None):
                pass
        assert internal.requests == []
