"""Crash safety: `cachepi serve` SIGKILLed at random moments while clients download, then
restarted on the same cache, over and over. Nothing torn is ever kept or served."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.cachedir import (
    blobs_on_disk,
    flip_a_byte,
    leftovers,
    misnamed_blobs,
    recorded_blobs,
    run_verify,
)
from tests.conftest import ProxyFactory
from tests.fakeupstream import Dist, FakeUpstream
from tests.fetching import fetch
from tests.served import ServedProxy

pytestmark = pytest.mark.slow  # real servers SIGKILLed at random moments

SEED = 20261125
CLIENTS = 6
CACHE_SIZE = 20 * 1024**2


class Tally:
    """What the clients saw across every round."""

    def __init__(self) -> None:
        self.complete: Counter[str] = Counter()
        self.wrong: list[str] = []  # transfers that completed with other bytes
        self.statuses: Counter[int] = Counter()  # answers other than 200
        self.broken = 0  # requests that failed to connect or were cut: the server was down


def crash_test_files(upstream: FakeUpstream) -> list[Dist]:
    """Small files, plus big throttled ones that are mid-download when a kill comes: more
    of them than the cache holds (CACHE_SIZE), so eviction keeps downloads going."""
    dists = [d for name in ("app", "lib", "util-pkg") for d in upstream.dists(name)]
    for number in range(12):
        (big,) = upstream.add_project(f"crashbig{number}", ["1.0"], big_mb=4, sdist=False)
        upstream.throttle(upstream.file_path(big.filename), 6 * 1024**2)
        dists.append(big)
    return dists


async def keep_downloading(
    served: ServedProxy, dists: list[Dist], rng: random.Random, tally: Tally
) -> None:
    """Download random files until cancelled, checking every completed transfer."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            dist = rng.choice(dists)
            url = f"{served.index_url}{dist.project}/{dist.filename}"
            try:
                async with session.get(url) as response:
                    body = await response.read()
                    status = response.status
            except (aiohttp.ClientError, ConnectionError, TimeoutError):
                tally.broken += 1
                await asyncio.sleep(0.02)  # the server is down: a kill came
                continue
            if status != 200:
                tally.statuses[status] += 1
            elif hashlib.sha256(body).hexdigest() != dist.sha256:
                tally.wrong.append(dist.filename)
            else:
                tally.complete[dist.filename] += 1


def assert_cache_consistent(cache_dir: Path) -> None:
    """What a restart must leave: no leftovers, every blob whole, records = disk."""
    assert leftovers(cache_dir) == []
    assert misnamed_blobs(cache_dir) == []
    assert recorded_blobs(cache_dir) == blobs_on_disk(cache_dir)


@pytest.mark.parametrize(("workers", "kills"), [(1, 16), (2, 6)], ids=["1-worker", "2-workers"])
async def test_sigkill_at_random_moments_never_leaves_a_torn_or_unverified_file(
    workers: int,
    kills: int,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    unused_tcp_port: int,
) -> None:
    rng = random.Random(SEED + workers)
    dists = crash_test_files(fake_upstream)
    cache_dir = tmp_path / "cache"
    served = ServedProxy(
        fake_upstream.url,
        cache_dir,
        unused_tcp_port,
        workers=workers,
        # Pages are rewritten all the time too; files are evicted all the time.
        env={"CACHEPI_INDEX_TTL": "0", "CACHEPI_CACHE_SIZE": str(CACHE_SIZE)},
    )
    tally = Tally()
    mid_download = 0
    try:
        for _ in range(kills):
            await served.start()
            assert_cache_consistent(cache_dir)
            clients = [
                asyncio.create_task(
                    keep_downloading(served, dists, random.Random(rng.random()), tally)
                )
                for _ in range(CLIENTS)
            ]
            await asyncio.sleep(rng.uniform(0.1, 0.9))
            mid_download += any(name.endswith(".part") for name in leftovers(cache_dir))
            await served.kill()
            for client in clients:
                client.cancel()
            await asyncio.gather(*clients, return_exceptions=True)

        # The last run is not killed: everything it serves must be right.
        await served.start()
        assert_cache_consistent(cache_dir)
        fake_upstream.clear()  # at full speed now
        async with aiohttp.ClientSession() as session:
            for dist in dists:
                reply = await fetch(
                    f"{served.index_url}{dist.project}/{dist.filename}", session=session
                )
                assert (reply.status, reply.sha256) == (200, dist.sha256), dist.filename
    finally:
        await served.stop()
    print(
        f"{kills} kills ({mid_download} mid-download), {tally.complete.total()} complete "
        f"transfers, {tally.broken} refused or cut while down, "
        f"other statuses {dict(tally.statuses)}"
    )
    assert tally.wrong == []
    assert tally.statuses == Counter()
    assert mid_download >= kills // 3  # the kills did land while files were downloading
    assert tally.complete.total() > 0

    await served.start()  # a restart after a clean stop leaves nothing either
    await served.stop()
    assert_cache_consistent(cache_dir)
    stored = blobs_on_disk(cache_dir)
    assert stored.keys() <= {d.sha256 for d in dists}
    assert 0 < sum(stored.values()) <= CACHE_SIZE
    verified = run_verify(cache_dir, tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{len(stored)} files" in verified.stdout and "0 removed" in verified.stdout


async def test_verify_removes_a_corrupted_blob_and_the_next_request_downloads_it_again(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await proxy_factory(fake_upstream)
    cache_dir = proxy.settings.cache_dir
    wheel, sdist = fake_upstream.dists("lib")[:2]
    for dist in (wheel, sdist):
        assert (await fetch(f"{proxy.index_url}lib/{dist.filename}")).sha256 == dist.sha256
    await proxy.stop()
    clean = run_verify(cache_dir, tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    flip_a_byte(cache_dir / "blobs" / wheel.sha256[:2] / wheel.sha256)
    result = run_verify(cache_dir, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if wheel.sha256[:12] in line]
    assert len(lines) == 1, result.stdout
    assert wheel.sha256 not in blobs_on_disk(cache_dir)
    assert wheel.sha256 not in recorded_blobs(cache_dir)
    assert sdist.sha256 in blobs_on_disk(cache_dir)

    fake_upstream.reset_counts()
    restarted = await proxy_factory(fake_upstream)
    again = await fetch(f"{restarted.index_url}lib/{wheel.filename}")
    assert (again.status, again.sha256) == (200, wheel.sha256)
    assert fake_upstream.count(fake_upstream.file_path(wheel.filename)) == 1
    assert blobs_on_disk(cache_dir)[wheel.sha256] == wheel.size
    assert run_verify(cache_dir, tmp_path).returncode == 0
