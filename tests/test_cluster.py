"""Scale-out (README, "Scale-out"): several `cachepi serve` nodes sharing blobs in S3
(SeaweedFS) and metadata in Redis, all real servers on 127.0.0.1 in front of one FakeUpstream.

Shared pages and files, invalidation on any node, one upstream download per file across the
cluster (also when its downloader is SIGKILLed or the upstream sends corrupt bytes), Redis
or S3 going away and Redis coming back, eviction across nodes, presigned redirects, Range
and HEAD, a bounded load, and the configuration errors. Every body is checked against the
file's sha256, and the bucket holds nothing but blobs whose bytes hash to their key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.clients import isolated_env
from tests.cluster import (
    BUCKET,
    Cluster,
    ClusterFactory,
    SeaweedFS,
    cluster_factory,
    health,
    redis_server,
    seaweedfs,
    seaweedfs_factory,
    wait_health,
)
from tests.fakeupstream import Dist, FakeUpstream
from tests.fakeupstream.metered import MeteredUpstream
from tests.fetching import JSON, Reply, fetch, get_json
from tests.served import ServedProxy

__all__ = ["cluster_factory", "redis_server", "seaweedfs", "seaweedfs_factory"]

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
# Where a downloading node publishes pieces for other nodes to relay; deleted a while after.
PIECES = ("pieces/",)
LOCK_EXPIRY = 10  # seconds, the spec's download lock expiry
# How long a small file may take while Redis or S3 is down: well under pip's 15 s timeout.
DEGRADED_SECONDS = 5.0


@dataclass(frozen=True)
class Body:
    status: int
    sha256: str
    size: int
    headers: Mapping[str, str]


async def fetch_hashed(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    seconds: float = 120,
) -> Body:
    """GET `url`, hashing the body as it streams in (big files are not kept in memory)."""
    async with asyncio.timeout(seconds), session.get(url, headers=headers) as response:
        digest, size = hashlib.sha256(), 0
        async for chunk in response.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            size += len(chunk)
        return Body(response.status, digest.hexdigest(), size, response.headers)


async def get_file(
    cluster: Cluster, node: ServedProxy, dist: Dist, *, within: float | None = None
) -> None:
    """Fetch `dist` through `node` and check it is whole and right (and, given `within`,
    that it took no longer than that many seconds)."""
    began = time.monotonic()
    reply = await fetch(cluster.file_url(node, dist))
    took = time.monotonic() - began
    assert (reply.status, reply.sha256) == (200, dist.sha256), (
        node.env["CACHEPI_NODE_ID"],
        dist.filename,
        reply.status,
        reply.body[:200],
    )
    if within is not None:
        assert took < within, f"{dist.filename} via {node.env['CACHEPI_NODE_ID']}: {took:.1f} s"


def listed_filenames(body: bytes) -> list[str]:
    return sorted(file["filename"] for file in json.loads(body)["files"])


def healthy_cluster(document: dict[str, object]) -> bool:
    storage, metadata = document.get("storage"), document.get("metadata")
    return (
        document.get("status") == "ok"
        and isinstance(storage, dict)
        and storage.get("kind") == "s3"
        and storage.get("healthy") is True
        and isinstance(metadata, dict)
        and metadata.get("kind") == "redis"
        and metadata.get("healthy") is True
    )


def add_file(upstream: FakeUpstream, name: str, size: int, seed: int = 0) -> Dist:
    """A file of `size` seeded random bytes listed on the page of project `name`."""
    data = random.Random(f"{name}-{size}-{seed}").randbytes(size)
    return upstream.add_dist(Dist.from_bytes(f"{name}-1.0.tar.gz", data))


# -- shared pages and files ------------------------------------------------------------------


async def test_a_page_and_a_file_fetched_by_one_node_are_served_by_the_others(
    fake_upstream: FakeUpstream, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory(fake_upstream, nodes=3)
    a, b, c = cluster.nodes
    page = fake_upstream.page_path("lib")
    expected = sorted(d.filename for d in fake_upstream.dists("lib"))

    for node in (a, b, c):
        reply = await get_json(cluster.page_url(node, "lib"))
        assert reply.status == 200, (node.base, reply.body[:200])
        assert listed_filenames(reply.body) == expected
    assert fake_upstream.count(page) == 1

    sdist = fake_upstream.dists("lib")[-1]
    for node in (a, b, c):
        await get_file(cluster, node, sdist)
    assert fake_upstream.count(fake_upstream.file_path(sdist.filename)) == 1
    assert fake_upstream.count(page) == 1

    stored = await cluster.assert_only_verified_blobs()
    assert set(stored) == {sdist.sha256}
    assert stored[sdist.sha256] == f"blobs/{sdist.sha256}"

    for number, node in enumerate(cluster.nodes):
        document = await health(node)
        assert healthy_cluster(document), document
        assert document["node"] == f"node-{number}"


async def test_metadata_of_a_wheel_nobody_downloaded_is_read_once_for_the_cluster(
    fake_upstream: FakeUpstream, cluster_factory: ClusterFactory
) -> None:
    """An index without PEP 658: every node advertises METADATA for the wheel, and clients
    asking both nodes at once get it, read from ranges of the upstream's wheel once (under
    the Redis lock), the wheel never downloaded."""
    (wheel,) = fake_upstream.add_project(
        "ranged", ["1.0"], core_metadata=False, sdist=False, big_mb=2
    )
    fake_upstream.delay(fake_upstream.file_path(wheel.filename), 0.3)  # the others wait
    cluster = await cluster_factory(fake_upstream, nodes=2)
    for node in cluster.nodes:
        page = json.loads((await get_json(cluster.page_url(node, "ranged"))).body)
        assert page["files"][0]["core-metadata"] is True
    replies = await asyncio.gather(
        *(fetch(cluster.file_url(node, wheel) + ".metadata") for node in cluster.nodes * 3)
    )
    assert {(reply.status, reply.body) for reply in replies} == {(200, wheel.metadata)}
    asked = fake_upstream.requests_to(fake_upstream.file_path(wheel.filename))
    assert [(r.headers.get("Range"), r.status) for r in asked] == [("bytes=-16384", 206)]


async def test_metadata_is_extracted_from_wheels_in_s3_and_verify_checks_the_bucket(
    fake_upstream: FakeUpstream, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    """The cluster backends do all the local store does: PEP 658 METADATA is extracted
    from a wheel stored in S3 and offered by every node, and `cachepi verify` re-hashes the
    bucket's blobs."""
    wheel = fake_upstream.add_project("nometa", ["1.0"], core_metadata=False, sdist=False)[0]
    assert wheel.metadata is not None
    cluster = await cluster_factory(fake_upstream, nodes=2)
    a, b = cluster.nodes
    await get_file(cluster, a, wheel)
    metadata_url = cluster.file_url(b, wheel) + ".metadata"
    reply = await fetch(metadata_url)
    for _ in range(100):  # extracted after the download; other nodes learn it within a second
        if reply.status == 200:
            break
        await asyncio.sleep(0.05)
        reply = await fetch(metadata_url)
    assert (reply.status, reply.body) == (200, wheel.metadata)
    expected = {"sha256": hashlib.sha256(wheel.metadata).hexdigest()}
    for _ in range(100):  # stored and paired just after a client got it
        page = json.loads((await get_json(cluster.page_url(b, "nometa"))).body)
        advertised = {f["filename"]: f.get("core-metadata") for f in page["files"]}
        if advertised[wheel.filename] == expected:
            break
        await asyncio.sleep(0.05)
    assert advertised[wheel.filename] == expected
    assert fake_upstream.count(fake_upstream.file_path(wheel.filename + ".metadata")) == 0

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cachepi", "verify", "--cache-dir", str(tmp_path / "verify")],
        env=isolated_env(tmp_path) | a.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 files" in result.stdout and "0 removed" in result.stdout, result.stdout


async def test_invalidating_on_one_node_makes_another_refetch_within_two_seconds(
    fake_upstream: FakeUpstream, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory(fake_upstream, nodes=3)
    a, b, c = cluster.nodes
    page = fake_upstream.page_path("lib")
    for node in (a, b):
        assert (await get_json(cluster.page_url(node, "lib"))).status == 200
    assert fake_upstream.count(page) == 1

    (new_wheel, _) = fake_upstream.add_project("lib", ["2.0"])
    deleted = await fetch(b.base + "/cache/lib", method="DELETE")
    assert deleted.status == 200, deleted.body

    began = time.monotonic()
    while True:
        reply = await get_json(cluster.page_url(a, "lib"))
        assert reply.status == 200
        if new_wheel.filename in listed_filenames(reply.body):
            break
        assert time.monotonic() - began < 2, "node A still serves the page invalidated on B"
        await asyncio.sleep(0.05)
    assert fake_upstream.count(page) == 2

    # The page A refetched is the cluster's page now: C serves it without asking upstream.
    reply = await get_json(cluster.page_url(c, "lib"))
    assert new_wheel.filename in listed_filenames(reply.body)
    assert fake_upstream.count(page) == 2


# -- single flight across nodes --------------------------------------------------------------


async def test_30_requests_at_3_nodes_for_one_uncached_file_make_one_upstream_download(
    fake_upstream: FakeUpstream, cluster_factory: ClusterFactory
) -> None:
    (wheel,) = fake_upstream.add_project("stampede", ["1.0"], big_mb=20, sdist=False)
    path = fake_upstream.file_path(wheel.filename)
    fake_upstream.delay(path, 0.5)
    fake_upstream.throttle(path, 8 * MIB)  # ~2.5 s: every request arrives while it runs
    cluster = await cluster_factory(fake_upstream, nodes=3)
    assert (await get_json(cluster.page_url(cluster.nodes[0], "stampede"))).status == 200

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        bodies = await asyncio.gather(
            *(
                fetch_hashed(session, cluster.file_url(node, wheel))
                for node in cluster.nodes
                for _ in range(10)
            )
        )
    assert Counter(b.status for b in bodies) == Counter({200: 30})
    assert [b.sha256 for b in bodies] == [wheel.sha256] * 30
    assert fake_upstream.count(path) == 1
    (download,) = fake_upstream.requests_to(path, "GET")
    assert download.finished is not None and download.finished - download.started > 2
    stored = await cluster.assert_only_verified_blobs(temporary=PIECES)
    assert set(stored) == {wheel.sha256}


async def test_another_node_s_client_gets_bytes_while_the_download_is_still_running(
    fake_upstream: FakeUpstream, cluster_factory: ClusterFactory
) -> None:
    """Followed through the store in pieces: B's client has its first bytes long before
    A's download ends, and the whole file right."""
    (wheel,) = fake_upstream.add_project("followed", ["1.0"], big_mb=20, sdist=False)
    path = fake_upstream.file_path(wheel.filename)
    fake_upstream.throttle(path, 4 * MIB, times=1)  # ~5 s upstream
    cluster = await cluster_factory(fake_upstream, nodes=2)
    a, b = cluster.nodes
    for node in (a, b):
        assert (await get_json(cluster.page_url(node, "followed"))).status == 200

    async def timed(session: aiohttp.ClientSession, url: str) -> tuple[float, float, str]:
        """(first byte, last byte) in seconds from the start, and the body's sha256."""
        digest = hashlib.sha256()
        first = 0.0
        async with session.get(url) as response:
            assert response.status == 200
            async for chunk in response.content.iter_any():
                first = first or time.monotonic() - started
                digest.update(chunk)
        return first, time.monotonic() - started, digest.hexdigest()

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.monotonic()
        on_a = asyncio.create_task(timed(session, cluster.file_url(a, wheel)))
        await fake_upstream.wait_for_requests(path, 1, within=10)
        on_b = asyncio.create_task(timed(session, cluster.file_url(b, wheel)))
        (_, a_done, a_sha), (b_first, _, b_sha) = await asyncio.gather(on_a, on_b)
    assert (a_sha, b_sha) == (wheel.sha256, wheel.sha256)
    assert fake_upstream.count(path) == 1
    # One 8 MiB piece arrives ~2 s in at 4 MiB/s; the download ends after ~5 s.
    assert b_first < a_done - 1.0, f"B's first byte at {b_first:.1f} s, A done at {a_done:.1f} s"


async def test_a_sigkilled_downloader_s_lock_expires_and_a_waiting_node_takes_over(
    fake_upstream: FakeUpstream, cluster_factory: ClusterFactory
) -> None:
    (wheel,) = fake_upstream.add_project("killed", ["1.0"], big_mb=8, sdist=False)
    path = fake_upstream.file_path(wheel.filename)
    fake_upstream.throttle(path, 1 * MIB, times=1)  # the first download takes ~8 s
    cluster = await cluster_factory(fake_upstream, nodes=3)
    a, b, c = cluster.nodes
    for node in (a, b):
        assert (await get_json(cluster.page_url(node, "killed"))).status == 200

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        on_a = asyncio.create_task(fetch_hashed(session, cluster.file_url(a, wheel)))
        await fake_upstream.wait_for_requests(path, 1, within=10)  # A downloads, holds the lock
        on_b = asyncio.create_task(fetch_hashed(session, cluster.file_url(b, wheel)))
        await asyncio.sleep(1.5)
        assert not on_b.done(), "B answered while A was still downloading"
        assert fake_upstream.count(path) == 1, "B went upstream instead of waiting"

        await a.kill()
        killed_at = time.monotonic()
        with pytest.raises((aiohttp.ClientError, ConnectionError)):
            await on_a  # cut off mid-body: A died

        taken_over = await on_b
        elapsed = time.monotonic() - killed_at
    assert (taken_over.status, taken_over.sha256) == (200, wheel.sha256)
    assert elapsed < LOCK_EXPIRY + 10, f"B waited {elapsed:.1f} s after the kill"
    assert fake_upstream.count(path) == 2

    await get_file(cluster, c, wheel)
    assert fake_upstream.count(path) == 2
    # Nothing is left of the killed download: no blob, and no pieces that nothing would
    # ever delete (its node is gone).
    stored = await cluster.assert_only_verified_blobs()
    assert set(stored) == {wheel.sha256}


async def test_a_corrupt_download_followed_from_another_node_is_never_served_whole(
    fake_upstream: FakeUpstream, cluster_factory: ClusterFactory
) -> None:
    (wheel,) = fake_upstream.add_project("corrupted", ["1.0"], big_mb=6, sdist=False)
    path = fake_upstream.file_path(wheel.filename)
    fake_upstream.corrupt(path, times=1)  # same length, one byte flipped: wrong sha256
    fake_upstream.throttle(path, 2 * MIB, times=1)  # ~3 s: B follows A's download
    cluster = await cluster_factory(fake_upstream, nodes=3)
    a, b, c = cluster.nodes
    for node in (a, b):
        assert (await get_json(cluster.page_url(node, "corrupted"))).status == 200

    async def outcome(node: ServedProxy) -> str:
        try:
            body = await fetch_hashed(session, cluster.file_url(node, wheel), seconds=60)
        except (aiohttp.ClientError, ConnectionError):
            return "cut"  # as it must be, once the hash is known to be wrong
        if body.status != 200:
            return f"status {body.status}"
        return "right" if body.sha256 == wheel.sha256 else "WRONG BYTES"

    async with aiohttp.ClientSession() as session:
        on_a = asyncio.create_task(outcome(a))
        await fake_upstream.wait_for_requests(path, 1, within=10)
        on_b = asyncio.create_task(outcome(b))
        outcomes = await asyncio.gather(on_a, on_b)
    print(f"\ncorrupt download, A and B: {outcomes}")
    assert "WRONG BYTES" not in outcomes, outcomes
    stored = await cluster.assert_only_verified_blobs(temporary=PIECES)
    assert wheel.sha256 not in stored

    await get_file(cluster, c, wheel)  # the upstream is right again: downloaded, stored
    assert wheel.sha256 in await cluster.assert_only_verified_blobs(temporary=PIECES)


# -- degraded modes --------------------------------------------------------------------------


async def test_with_redis_down_files_are_served_and_with_it_back_stored_again(
    fake_upstream: FakeUpstream, cluster_factory: ClusterFactory
) -> None:
    cached = add_file(fake_upstream, "cachedfile", 300_000)
    uncached = add_file(fake_upstream, "uncachedfile", 200_000)
    later = [add_file(fake_upstream, f"later{n}", 100_000 + n) for n in range(40)]
    cluster = await cluster_factory(fake_upstream, nodes=3)
    a, b, c = cluster.nodes
    await get_file(cluster, a, cached)
    before = await cluster.assert_only_verified_blobs()
    assert set(before) == {cached.sha256}

    await asyncio.to_thread(cluster.redis.stop)
    for node in (a, b, c):
        # From S3, by the sha256 on the page.
        await get_file(cluster, node, cached, within=DEGRADED_SECONDS)
    assert fake_upstream.count(fake_upstream.file_path(cached.filename)) == 1

    await get_file(cluster, b, uncached, within=DEGRADED_SECONDS)  # from upstream, not stored
    # A page A holds goes on being served, even with its upstream failing too.
    fake_upstream.fail(fake_upstream.page_path(cached.project))
    page = await get_json(cluster.page_url(a, cached.project))
    assert page.status == 200, (page.status, page.body[:200])
    assert listed_filenames(page.body) == [cached.filename]
    fake_upstream.clear()
    await asyncio.sleep(1)
    assert set(await cluster.assert_only_verified_blobs()) == {cached.sha256}
    for node in (a, b, c):
        document = await wait_health(node, lambda d: d.get("status") == "degraded", within=10)
        assert document["metadata"]["kind"] == "redis"
        assert document["metadata"]["healthy"] is False, document
        assert document["metadata"]["last_error"], document
        assert document["storage"]["healthy"] is True, document

    await asyncio.to_thread(cluster.redis.start)  # same port, empty
    # No node restarts: within a while, a new file fetched on A is stored again...
    deadline = time.monotonic() + 20
    for dist in later:
        await get_file(cluster, a, dist)
        await asyncio.sleep(0.3)
        if dist.sha256 in await cluster.assert_only_verified_blobs():
            break
        assert time.monotonic() < deadline, "A never stored a file again after Redis came back"
    else:
        raise AssertionError("A never stored a file again after Redis came back")
    # ...and served by the others as a hit.
    for node in (b, c):
        await get_file(cluster, node, dist)
    assert fake_upstream.count(fake_upstream.file_path(dist.filename)) == 1
    for node in (a, b, c):
        await wait_health(node, healthy_cluster, within=15)


async def test_with_s3_down_files_stream_from_upstream_and_health_says_so(
    fake_upstream: FakeUpstream,
    cluster_factory: ClusterFactory,
    seaweedfs_factory: Callable[[], SeaweedFS],
) -> None:
    s3 = await asyncio.to_thread(seaweedfs_factory)
    cached = add_file(fake_upstream, "cachedfile", 300_000)
    uncached = add_file(fake_upstream, "uncachedfile", 200_000)
    cluster = await cluster_factory(fake_upstream, nodes=2, s3=s3)
    a, b = cluster.nodes
    await get_file(cluster, a, cached)
    assert set(await cluster.assert_only_verified_blobs()) == {cached.sha256}

    await asyncio.to_thread(s3.stop)
    cached_path = fake_upstream.file_path(cached.filename)
    for node in (a, b):
        before = fake_upstream.count(cached_path)
        await get_file(cluster, node, cached, within=DEGRADED_SECONDS)
        # B has never had it: from upstream (A may keep no copy either, by the spec).
        went_upstream = fake_upstream.count(cached_path) - before
        assert went_upstream in ((1,) if node is b else (0, 1)), (node.base, went_upstream)
        await get_file(cluster, node, uncached, within=DEGRADED_SECONDS)
    assert fake_upstream.count(fake_upstream.file_path(uncached.filename)) == 2
    # Only when the upstream fails too: a clear gateway error, one line. (The spec says 503;
    # the README's rule for an upstream's error answer, as without a cluster, is 502.)
    fake_upstream.fail(fake_upstream.file_path(uncached.filename))
    failed = await fetch(cluster.file_url(a, uncached))
    assert failed.status in (502, 503) and failed.one_line, (failed.status, failed.body[:200])
    fake_upstream.clear()
    for node in (a, b):
        document = await wait_health(node, lambda d: d.get("status") == "degraded", within=10)
        assert document["storage"]["kind"] == "s3"
        assert document["storage"]["healthy"] is False, document
        assert document["storage"]["last_error"], document
        assert document["metadata"]["healthy"] is True, document


async def test_eviction_keeps_the_cluster_under_the_size_limit_and_is_lru_across_nodes(
    fake_upstream: FakeUpstream, cluster_factory: ClusterFactory
) -> None:
    limit = 2_000_000  # three of the files below
    files = [add_file(fake_upstream, f"evict{n}", 600_000) for n in range(8)]
    cluster = await cluster_factory(fake_upstream, nodes=3, env={"CACHEPI_CACHE_SIZE": str(limit)})
    nodes = cluster.nodes
    kept = files[0]
    await get_file(cluster, nodes[0], kept)
    for number, dist in enumerate(files[1:], start=1):
        await get_file(cluster, nodes[number % 3], dist)  # stored, evicting as needed
        await get_file(cluster, nodes[(number + 1) % 3], kept)  # a use, on another node
        await asyncio.sleep(0.1)

    stored = await cluster.assert_only_verified_blobs()
    sizes = {d.sha256: d.size for d in files}
    assert sum(sizes[sha] for sha in stored) <= limit, sorted(stored)
    assert kept.sha256 in stored, "the most recently used file was evicted"
    assert files[-1].sha256 in stored, "the file just stored was evicted"
    assert fake_upstream.count(fake_upstream.file_path(kept.filename)) == 1
    # An evicted file comes back from upstream, whole, through any node.
    evicted = files[1]
    assert evicted.sha256 not in stored
    await get_file(cluster, nodes[2], evicted)
    assert fake_upstream.count(fake_upstream.file_path(evicted.filename)) == 2


async def test_misses_across_nodes_stay_within_the_cache_size_and_unwanted_ones_stop(
    cluster_factory: ClusterFactory,
) -> None:
    """The reservations of downloads in progress are cluster-wide: parts on every node and
    blobs in the bucket stay within the limit; a file bigger than the cache streams through
    and, when its client hangs up, stops."""
    limit = 10 * MIB
    async with MeteredUpstream() as upstream:
        bigs = [add_file(upstream, f"clusterhuge{n}", 24 * MIB) for n in range(3)]
        smalls = [add_file(upstream, f"clusterfits{n}", 3 * MIB) for n in range(6)]
        upstream.throttle("/files/*", 16 * MIB)
        cluster = await cluster_factory(upstream, nodes=3, env={"CACHEPI_CACHE_SIZE": "10M"})
        nodes = cluster.nodes
        peak = 0

        async def sample() -> None:
            nonlocal peak
            while True:
                parts = sum(
                    p.stat().st_size
                    for node in nodes
                    for p in (node.cache_dir / "tmp").glob("*")
                    if p.exists()
                )
                peak = max(peak, parts)
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        try:
            await asyncio.gather(
                *(
                    get_file(cluster, nodes[n % 3], dist)
                    for n, dist in enumerate(bigs + smalls + smalls)
                )
            )
        finally:
            sampler.cancel()
        stored = await cluster.assert_only_verified_blobs(temporary=PIECES)
        sizes = {d.sha256: d.size for d in smalls}
        assert stored.keys() <= sizes.keys()
        assert peak <= limit and sum(sizes[sha] for sha in stored) <= limit, peak

        big = bigs[0]
        path = upstream.file_path(big.filename)
        sent_before = upstream.sent(path)
        async with (
            aiohttp.ClientSession() as session,
            session.get(cluster.file_url(nodes[1], big)) as response,
        ):
            await response.content.readexactly(256 * 1024)
        deadline = time.monotonic() + 5
        while upstream.unfinished("/files/") and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        assert upstream.unfinished("/files/") == 0
        assert upstream.sent(path) - sent_before < big.size // 4


# -- serving from S3 -------------------------------------------------------------------------


async def test_redirect_mode_sends_cached_files_to_a_presigned_url(
    fake_upstream: FakeUpstream, cluster_factory: ClusterFactory
) -> None:
    dist = add_file(fake_upstream, "redirected", 700_000)
    data = dist.read_bytes()
    cluster = await cluster_factory(fake_upstream, nodes=2, env={"CACHEPI_S3_SERVE": "redirect"})
    a, b = cluster.nodes
    await get_file(cluster, a, dist)  # a miss streams through the node

    for node in (a, b):
        url = cluster.file_url(node, dist)
        moved = await fetch(url, allow_redirects=False)
        assert moved.status == 307, (moved.status, moved.body[:200])
        location = moved.headers["Location"]
        assert location.startswith(cluster.s3.endpoint + "/"), location
        followed = await fetch(str(URL(location, encoded=True)))
        assert (followed.status, followed.sha256) == (200, dist.sha256)

        head = await fetch(url, method="HEAD", allow_redirects=False)
        assert head.status == 200, head.status
        assert int(head.headers["Content-Length"]) == dist.size

        ranged = await fetch(url, headers={"Range": "bytes=1000-1999"})
        assert ranged.status == 206, ranged.status
        assert ranged.body == data[1000:2000]
        assert ranged.headers["Content-Range"] == f"bytes 1000-1999/{dist.size}"
    assert fake_upstream.count(fake_upstream.file_path(dist.filename)) == 1


def answer(reply: Reply) -> tuple[int, str | None, str | None, bytes]:
    return (
        reply.status,
        reply.headers.get("Content-Range"),
        reply.headers.get("Content-Length"),
        reply.body,
    )


RANGES = [
    "bytes=0-99",
    "bytes=1000-",
    "bytes=-500",
    "bytes=123456-123456",
    "bytes=250000-999999",  # past the end: clamped
    "bytes=250000-",  # starts at the size: unsatisfiable
    "bytes=5-2",  # invalid: the whole file
    "bytes=0-1,5-6",  # several: the whole file, or a multipart answer
]


async def test_range_and_head_of_a_file_from_s3_equal_the_local_cache(
    fake_upstream: FakeUpstream,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
    unused_tcp_port: int,
) -> None:
    dist = add_file(fake_upstream, "ranged", 250_000)
    data = dist.read_bytes()
    cluster = await cluster_factory(fake_upstream, nodes=2)
    a, b = cluster.nodes
    local = ServedProxy(fake_upstream.url, tmp_path / "local" / "cache", unused_tcp_port)
    await local.start()
    try:
        await get_file(cluster, a, dist)  # B serves it from S3 below
        local_url = f"{local.index_url}ranged/{dist.filename}"
        assert (await fetch(local_url)).sha256 == dist.sha256
        compared = 0
        for spec in RANGES:
            for method in ("GET", "HEAD"):
                range_header = {"Range": spec}
                here = await fetch(cluster.file_url(b, dist), method=method, headers=range_header)
                there = await fetch(local_url, method=method, headers=range_header)
                seen = [answer(r) for r in (here, there)]
                assert seen[0] == seen[1], (spec, method, seen[0][:3], seen[1][:3])
                compared += 1
        # Both right, not just equal.
        first = await fetch(cluster.file_url(b, dist), headers={"Range": "bytes=0-99"})
        assert (first.status, first.body) == (206, data[:100])
        assert first.headers["Content-Range"] == f"bytes 0-99/{dist.size}"
        tail = await fetch(cluster.file_url(b, dist), headers={"Range": "bytes=-500"})
        assert (tail.status, tail.body) == (206, data[-500:])
        past = await fetch(cluster.file_url(b, dist), headers={"Range": "bytes=250000-"})
        assert past.status == 416
        head = await fetch(cluster.file_url(b, dist), method="HEAD")
        assert (head.status, int(head.headers["Content-Length"])) == (200, dist.size)
        assert compared == 2 * len(RANGES)
    finally:
        await local.stop()
    assert fake_upstream.count(fake_upstream.file_path(dist.filename)) == 2  # cluster + local


# -- load --------------------------------------------------------------------------------------

LOAD_SECONDS = 20.0
LOAD_CLIENTS = 30
LOAD_FILES = 50


@dataclass
class LoadResults:
    kinds: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    files_asked: set[str] = field(default_factory=set)


async def load_client(
    session: aiohttp.ClientSession,
    cluster: Cluster,
    projects: list[str],
    files: list[Dist],
    rng: random.Random,
    results: LoadResults,
    deadline: float,
) -> None:
    while time.monotonic() < deadline:
        node = rng.choice(cluster.nodes)
        if rng.random() < 0.4:
            project = rng.choice(projects)
            kind, url, headers = "page", cluster.page_url(node, project), JSON
            check: Callable[[Body], bool] = lambda body: body.size > 0  # noqa: E731
        else:
            dist = rng.choice(files)
            results.files_asked.add(dist.filename)
            kind, url, headers = "file", cluster.file_url(node, dist), {}
            check = lambda body, dist=dist: body.sha256 == dist.sha256  # noqa: E731
        try:
            body = await fetch_hashed(session, url, headers=headers, seconds=60)
        except (aiohttp.ClientError, TimeoutError) as error:
            results.errors.append(f"{kind} {url}: {error!r}")
            continue
        results.kinds[kind] += 1
        if body.status != 200:
            results.errors.append(f"{kind} {url}: {body.status}")
        elif not check(body):
            results.wrong.append(f"{kind} {url}")


async def test_30_clients_across_3_nodes_for_20_seconds_no_errors_one_download_per_file(
    fake_upstream: FakeUpstream, cluster_factory: ClusterFactory
) -> None:
    rng = random.Random(8)
    files = []
    for number in range(LOAD_FILES):
        size = 2 * MIB if number % 25 == 0 else rng.randint(1_000, 200_000)
        dist = Dist.from_bytes(f"loadfiles{number % 10}-1.{number}.tar.gz", rng.randbytes(size))
        files.append(fake_upstream.add_dist(dist))
        fake_upstream.throttle(fake_upstream.file_path(dist.filename), 4 * MIB)
    pages_only = [add_file(fake_upstream, f"loadpage{n}", 500).project for n in range(40)]
    projects = sorted({d.project for d in files}) + pages_only
    cluster = await cluster_factory(fake_upstream, nodes=3)
    # Half the files cached beforehand (hits from the start), half missed under load.
    for dist in files[::2]:
        await get_file(cluster, rng.choice(cluster.nodes), dist)

    results = LoadResults()
    connector = aiohttp.TCPConnector(limit=LOAD_CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.monotonic()
        deadline = began + LOAD_SECONDS
        await asyncio.gather(
            *(
                load_client(
                    session,
                    cluster,
                    projects,
                    files,
                    random.Random(rng.random()),
                    results,
                    deadline,
                )
                for _ in range(LOAD_CLIENTS)
            )
        )
        elapsed = time.monotonic() - began
    print(f"\ncluster load, {LOAD_CLIENTS} clients, {elapsed:.0f} s: {dict(results.kinds)}")
    assert results.errors == [], results.errors[:10]
    assert results.wrong == [], results.wrong[:10]
    assert results.kinds["page"] > 100 and results.kinds["file"] > 100
    downloads = {
        dist.filename: fake_upstream.count(fake_upstream.file_path(dist.filename)) for dist in files
    }
    assert {name: n for name, n in downloads.items() if n != 1} == {}
    stored = await cluster.assert_only_verified_blobs(temporary=PIECES)
    assert set(stored) == {dist.sha256 for dist in files}


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"CACHEPI_STORAGE": f"s3://{BUCKET}/prefix"}, "CACHEPI_REDIS_URL"),
        ({"CACHEPI_REDIS_URL": "redis://127.0.0.1:9/0"}, "CACHEPI_STORAGE"),
    ],
    ids=["s3-without-redis", "redis-without-s3"],
)
def test_s3_and_redis_only_together_else_exit_2_with_one_line(
    given: dict[str, str], missing: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cachepi", "serve", "--cache-dir", str(tmp_path / "cache")],
        env=isolated_env(tmp_path) | {"CACHEPI_INDEX_URL": "http://127.0.0.1:9/simple/"} | given,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert missing in lines[0] and "Traceback" not in result.stderr
