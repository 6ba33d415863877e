"""A 60-second load test: 200 concurrent clients against `cachepi serve --workers 2`, mixing
cached hits and misses of pages and files (some clients missing the same file at once).
Zero errors and zero wrong bytes allowed; the figures are printed (run with -s)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.fakeupstream import Dist, FakeUpstream
from tests.fakeupstream.fixtures import FakeUpstreamFactory
from tests.served import ServedProxy, memory_kib

pytestmark = pytest.mark.slow  # 60 s of load

SECONDS = 60.0
CLIENTS = 200
SEED = 8
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.1, text/html;q=0.01"
)
# Consecutive file-miss operations share one file, so its misses come in together.
SAME_FILE_MISSES = 4
Check = Callable[[bytes], bool]  # is this body right?


@dataclass
class Workload:
    """What exists upstream, and which of it is already cached."""

    warm_pages: list[str]
    warm_files: list[Dist]
    cold_pages: Iterator[str]
    cold_files: list[Dist]
    file_miss_counter: Iterator[int] = field(default_factory=itertools.count)


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    wrong_bytes: list[str] = field(default_factory=list)
    distinct_file_misses: set[str] = field(default_factory=set)


def build_upstream(upstream: FakeUpstream, rng: random.Random) -> Workload:
    def add(name: str, size: int) -> Dist:
        return upstream.add_dist(Dist.from_bytes(f"{name}-1.0.tar.gz", rng.randbytes(size)))

    warm = [add(f"warm{i}", rng.randint(1_000, 64_000)) for i in range(200)]
    warm.append(add("warmbig", 4 * 1024**2))
    cold_pages = [add(f"coldpage{i}", 100).project for i in range(40_000)]
    cold_files = []
    for project in range(100):
        for number in range(60):
            size = 2 * 1024**2 if number == 0 else rng.randint(2_000, 32_000)
            dist = Dist.from_bytes(f"coldfiles{project}-1.{number}.tar.gz", rng.randbytes(size))
            cold_files.append(upstream.add_dist(dist))
    rng.shuffle(cold_files)
    return Workload([d.project for d in warm], warm, iter(cold_pages), cold_files)


async def warm_up(session: aiohttp.ClientSession, base: str, workload: Workload) -> None:
    for dist in workload.warm_files:
        async with session.get(f"{base}/index/{dist.project}/{dist.filename}") as response:
            assert response.status == 200
            await response.read()


async def one_request(
    session: aiohttp.ClientSession,
    base: str,
    kind: str,
    url: str,
    results: Results,
    check: Check,
) -> None:
    began = time.monotonic()
    try:
        async with session.get(base + url, headers={"Accept": PIP_ACCEPT}) as response:
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as error:
        results.errors.append(f"{kind} {url}: {error!r}")
        return
    results.latencies.append(time.monotonic() - began)
    results.kinds[kind] += 1
    if status != 200:
        results.errors.append(f"{kind} {url}: {status} {body[:100]!r}")
    elif not check(body):
        results.wrong_bytes.append(f"{kind} {url}")


def next_request(workload: Workload, rng: random.Random) -> tuple[str, str, Check]:
    """(kind, path, check of the body) of a client's next request: 45% cached pages, 25%
    cached files, 15% pages never asked before, 15% files never asked before (each by
    SAME_FILE_MISSES clients in a row, so their misses overlap)."""
    roll = rng.random()
    if 0.70 <= roll < 0.85 and (name := next(workload.cold_pages, None)) is not None:
        return "page miss", f"/index/{name}/", names_project(name)
    if roll >= 0.85:
        number = next(workload.file_miss_counter) // SAME_FILE_MISSES
        if number < len(workload.cold_files):
            dist = workload.cold_files[number]
            return "file miss", f"/index/{dist.project}/{dist.filename}", hashes_to(dist)
    if roll < 0.45 or roll >= 0.70:
        name = rng.choice(workload.warm_pages)
        return "page hit", f"/index/{name}/", names_project(name)
    dist = rng.choice(workload.warm_files)
    return "file hit", f"/index/{dist.project}/{dist.filename}", hashes_to(dist)


def names_project(name: str) -> Check:
    marker = f'"name":"{name}"'.encode()
    return lambda body: marker in body


def hashes_to(dist: Dist) -> Check:
    return lambda body: hashlib.sha256(body).hexdigest() == dist.sha256


async def client(
    session: aiohttp.ClientSession,
    base: str,
    workload: Workload,
    rng: random.Random,
    results: Results,
    deadline: float,
) -> None:
    while time.monotonic() < deadline:
        kind, path, check = next_request(workload, rng)
        if kind == "file miss":
            results.distinct_file_misses.add(path)
        await one_request(session, base, kind, path, results, check)


def percentile(values: list[float], fraction: float) -> float:
    return statistics.quantiles(values, n=1000)[int(fraction * 1000) - 1]


@pytest.mark.load
async def test_200_clients_for_60_seconds_get_no_errors_and_no_wrong_bytes(
    fake_upstream_factory: FakeUpstreamFactory,
    tmp_path: Path,
    unused_tcp_port: int,
    record_property: Callable[[str, object], None],
) -> None:
    rng = random.Random(SEED)
    upstream = await fake_upstream_factory()
    workload = build_upstream(upstream, rng)
    served = ServedProxy(upstream.url, tmp_path / "cache", unused_tcp_port, workers=2)
    await served.start()
    results = Results()
    peak_total_kib = 0
    try:
        connector = aiohttp.TCPConnector(limit=CLIENTS)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await warm_up(session, served.base, workload)
            upstream.reset_counts()
            server_cpu, test_cpu = served.cpu_seconds(), time.process_time()
            began = time.monotonic()
            deadline = began + SECONDS
            clients = [
                client(
                    session, served.base, workload, random.Random(rng.random()), results, deadline
                )
                for _ in range(CLIENTS)
            ]
            running = asyncio.gather(*clients)
            while not running.done():
                peak_total_kib = max(peak_total_kib, served.rss_kib())
                await asyncio.wait([running], timeout=0.5)
            await running
            elapsed = time.monotonic() - began
            server_cpu = served.cpu_seconds() - server_cpu
            test_cpu = time.process_time() - test_cpu
        peak_process_kib = max(memory_kib(pid, "VmHWM") for pid in served.pids())
    finally:
        await served.stop()

    total = len(results.latencies)
    figures = {
        "requests": total,
        "requests_per_second": round(total / elapsed),
        "p50_ms": round(percentile(results.latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(results.latencies, 0.99) * 1000, 1),
        "peak_rss_all_processes_mib": round(peak_total_kib / 1024),
        "peak_rss_one_process_mib": round(peak_process_kib / 1024),
        "by_kind": dict(results.kinds),
        "distinct_file_misses": len(results.distinct_file_misses),
        "upstream_file_requests": upstream.count_prefix("/files/"),
        # Where the 2 cores went: the server, and this process (clients + fake upstream).
        "server_cpu_share": round(server_cpu / elapsed, 2),
        "test_process_cpu_share": round(test_cpu / elapsed, 2),
    }
    for name, value in figures.items():
        record_property(name, value)
    print(f"\nload, {CLIENTS} clients, {elapsed:.0f} s: {figures}")
    assert results.errors == [], results.errors[:10]
    assert results.wrong_bytes == [], results.wrong_bytes[:10]
    assert results.kinds["page miss"] > 0 and results.kinds["file miss"] > 0
    # One upstream download per file, however many clients missed it at once.
    assert figures["upstream_file_requests"] == len(results.distinct_file_misses)
