"""Client connections on a real server: silent and slowloris sockets are cut or pushed out
(request-head and keep-alive timeouts, a cap below the descriptor limit), while clients in
the middle of a request, however slow, are never cut."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from cachepi.connbook import connection_cap
from tests.fakeupstream import Dist, FakeUpstream
from tests.fetching import fetch
from tests.rawclient import (
    RawClient,
    close_all,
    closed_by_server,
    closed_by_server_within,
    open_silent,
)
from tests.served import ServedProxy

Serve = Callable[..., Awaitable[ServedProxy]]
DESCRIPTORS = 1024  # a common limit under systemd
FLOOD = 1100


@pytest_asyncio.fixture
async def serve(
    fake_upstream: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> AsyncIterator[Serve]:
    """Start `cachepi serve` with these options; stopped at the end."""
    started: list[ServedProxy] = []

    async def start(
        *options: str, workers: int = 1, preexec_fn: Callable[[], None] | None = None
    ) -> ServedProxy:
        server = ServedProxy(
            fake_upstream.url, tmp_path / "cache", unused_tcp_port, workers=workers,
            options=options, preexec_fn=preexec_fn,
        )  # fmt: skip
        started.append(server)
        await server.start()
        return server

    yield start
    for server in started:
        await server.stop()


def descriptor_limit() -> None:
    """For preexec_fn: the server may open 1024 descriptors, hard limit included."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))


def file_path(dist: Dist) -> str:
    return f"/index/{dist.project}/{dist.filename}"


async def samples(server: ServedProxy, name: str) -> dict[str, float]:
    """The samples of metric `name` by their (only) label's value; "" without labels."""
    text = (await fetch(server.base + "/metrics")).body.decode()
    return {
        next(iter(sample.labels.values()), ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def closed_counts(server: ServedProxy) -> dict[str, float]:
    """cachepi_client_connections_closed_total by reason."""
    return await samples(server, "cachepi_client_connections_closed_total")


async def stalled_download(server: ServedProxy, dist: Dist) -> tuple[RawClient, int]:
    """A GET of `dist` whose client reads the head, then nothing: the server is stuck
    sending it (busy) until the test reads on."""
    client = await RawClient.connect(server.port)
    await client.send_get(file_path(dist))
    return client, await client.read_head()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_health_answers_while_a_flood_of_silent_sockets_is_open(
    workers: int, serve: Serve, fake_upstream: FakeUpstream
) -> None:
    """1,100 sockets that send nothing against 1,024 descriptors: without a cap they took
    every descriptor and asyncio stopped accepting; now the longest waiting make room, and
    a download stalled mid-response (the oldest connection of all) is not among them."""
    (big,) = fake_upstream.add_project("floodpkg", ["1.0"], big_mb=8, sdist=False)
    # No head timeout in the test's time: only evictions close anything.
    server = await serve("--head-timeout", "60", workers=workers, preexec_fn=descriptor_limit)
    assert (await fetch(server.base + file_path(big))).sha256 == big.sha256  # cached
    download, length = await stalled_download(server, big)
    silent = await open_silent(server.port, FLOOD)
    try:
        began = time.monotonic()
        assert (await fetch(server.base + "/health", seconds=5)).status == 200
        took = time.monotonic() - began
        descriptors = [len(os.listdir(f"/proc/{pid}/fd")) for pid in server.pids()]
        print(f"\n/health took {took:.3f} s in the flood; descriptors by process: {descriptors}")
        # Each worker over its cap pushed out its excess (the one that answered /health
        # certainly; another may still be accepting).
        pushed_out = FLOOD - workers * connection_cap(DESCRIPTORS, 64)
        closed = await closed_by_server_within(silent, pushed_out, within=10)
        assert await download.read_body(length) == (length, big.sha256)
    finally:
        close_all(silent)
        download.close()
    assert (await closed_counts(server)).get("evicted", 0) >= closed
    assert "out of system resource" not in server.log_text()  # asyncio's EMFILE on accept


async def test_a_head_trickled_byte_by_byte_is_cut_at_the_head_timeout(serve: Serve) -> None:
    server = await serve("--head-timeout", "1", "--keepalive-timeout", "30")
    slowloris = await RawClient.connect(server.port)
    began = time.monotonic()
    slowloris.writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    sent = 0

    async def trickle() -> None:
        nonlocal sent
        while True:
            await asyncio.sleep(0.1)
            slowloris.writer.write(b"a")
            await slowloris.writer.drain()
            sent += 1

    trickling = asyncio.create_task(trickle())
    try:
        assert await slowloris.wait_closed(within=5)
        took = time.monotonic() - began
    finally:
        trickling.cancel()
        slowloris.close()
    assert 0.9 < took < 4, took
    assert sent >= 5  # it kept sending all along

    # A head that takes less than the timeout to arrive, even in pieces, is answered.
    patient = await RawClient.connect(server.port)
    try:
        for piece in (b"GET /health HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
            await asyncio.sleep(0.25)
            patient.writer.write(piece)
        await patient.read_head()
    finally:
        patient.close()
    assert (await closed_counts(server)).get("head_timeout") == 1


async def test_an_idle_kept_alive_connection_is_closed_at_the_keepalive_timeout(
    serve: Serve,
) -> None:
    server = await serve("--head-timeout", "30", "--keepalive-timeout", "1")
    client = await RawClient.connect(server.port)
    try:
        for pause in (0, 0.5):  # the second request reuses the connection, idle 0.5 s
            await asyncio.sleep(pause)
            await client.send_get("/health")
            length = await client.read_head()
            assert (await client.read_body(length))[0] == length
        answered = time.monotonic()
        assert await client.wait_closed(within=5)
        idle = time.monotonic() - answered
    finally:
        client.close()
    assert 0.9 < idle < 4, idle
    assert (await closed_counts(server)).get("keepalive_timeout") == 1


@pytest.mark.slow
@pytest.mark.parametrize("source", ["cached", "relayed", "delayed"])
async def test_a_slow_download_outlives_every_timeout(
    source: str, serve: Serve, fake_upstream: FakeUpstream
) -> None:
    """Seconds of reading against half-second head and keep-alive timeouts: none cuts a
    connection in the middle of a response, from the cache or relayed, nor one whose
    upstream has yet to answer. A relayed file is answered while megabytes of it still wait
    in buffers: the keep-alive timeout that follows must let them out."""
    (big,) = fake_upstream.add_project(source, ["1.0"], big_mb=6, sdist=False)
    server = await serve("--head-timeout", "0.5", "--keepalive-timeout", "0.5")
    if source == "cached":
        assert (await fetch(server.base + file_path(big))).sha256 == big.sha256
    elif source == "delayed":
        fake_upstream.delay(fake_upstream.file_path(big.filename), 1.5)
    client = await RawClient.connect(server.port)
    try:
        await client.send_get(file_path(big))
        length = await client.read_head()
        assert await client.read_body(length, pause=0.01) == (length, big.sha256)
    finally:
        client.close()


async def test_at_the_cap_with_every_connection_busy_a_new_one_is_closed(
    serve: Serve, fake_upstream: FakeUpstream
) -> None:
    (big,) = fake_upstream.add_project("cappkg", ["1.0"], big_mb=8, sdist=False)
    server = await serve("--client-connections", "2")
    assert (await fetch(server.base + file_path(big))).sha256 == big.sha256
    busy = [await stalled_download(server, big) for _ in range(2)]
    try:
        latecomer = await RawClient.connect(server.port)
        try:
            await latecomer.send_get("/health")
            assert await latecomer.wait_closed(within=5)
        finally:
            latecomer.close()
        first, length = busy[0]
        assert await first.read_body(length) == (length, big.sha256)
        # Answered and kept alive, it waits: a newcomer may push it out.
        assert (await fetch(server.base + "/health", seconds=5)).status == 200
    finally:
        for client, _ in busy:
            client.close()
    counts = await closed_counts(server)
    assert counts.get("refused") == 1 and counts.get("evicted", 0) >= 1
    assert re.search(r"at most 2 client connections", server.log_text())


async def open_count_reaches(server: ServedProxy, count: int, within: float) -> None:
    """Wait until /metrics says `count` client connections are open (the scrape's own
    among them)."""
    async with asyncio.timeout(within):
        while (await samples(server, "cachepi_client_connections")) != {"": count}:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_open_connections_are_summed_over_the_live_workers(serve: Serve) -> None:
    """A worker killed with connections open is forgotten: its count leaves the sum."""
    server = await serve("--head-timeout", "60", workers=2)
    silent = await open_silent(server.port, 40)
    try:
        await open_count_reaches(server, 40 + 1, within=10)
        os.kill(server.pids()[1], signal.SIGKILL)  # a worker, with its share of the 40
        async with asyncio.timeout(10):
            while "exited with" not in server.log_text():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        gone = sum(map(closed_by_server, silent))
        assert 0 < gone < 40
        await open_count_reaches(server, 40 - gone + 1, within=10)
    finally:
        close_all(silent)
