"""Load, and a soak when run longer: 220 clients against `cachepi serve --workers 2` while a
worker is SIGKILLed every 15-30 s (none in the first or last 10 s).

200 clients mix cached hits and misses of pages and files (some clients missing the same
file at once), HEADs of pages and files, and single Range requests on cached files; 10 read
8-12 MiB files at a few hundred KiB/s; 10 hang up part-way through big files, cached or
still downloading. Allowed: connection errors on requests in flight at a kill (counted).
Failures: any other connection error or timeout, any status but 200/206/304, any wrong byte
or header, a second upstream download of a file with no kill since the first, and memory or
descriptors growing: the server's from the first window to the last (a minute each in a
soak), the supervisor's at all, and each worker's within its life (see the assertions).

It runs CACHEPI_SOAK_SECONDS (default 60, the normal suite's share); the figures are printed
(run with -s) and recorded as properties (--junitxml, -o junit_family=legacy). The soak:

    CACHEPI_SOAK_SECONDS=300 python -m pytest -n 0 -s tests/test_load.py
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import os
import random
import signal
import socket
import statistics
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import pytest
from aiohappyeyeballs import AddrInfoType
from multidict import CIMultiDictProxy

from cachepi.workers import LISTENING
from tests.fakeupstream import Dist, FakeUpstream
from tests.fakeupstream.fixtures import FakeUpstreamFactory
from tests.fetching import JSON_TYPE
from tests.process_samples import (
    Sample,
    describe_lives,
    life_flatness,
    lives,
    peak_rss_mib,
    sample_server,
    use,
)
from tests.served import ServedProxy, open_fds

pytestmark = pytest.mark.slow  # a minute of load at least

SECONDS = float(os.environ.get("CACHEPI_SOAK_SECONDS", "60"))
CLIENTS = 200  # the mixed ones
SLOW_READERS = 10
VANISHERS = 10
SEED = 8
KILL_EVERY = (15.0, 30.0)
QUIET_EDGES = 10.0  # seconds at the start and the end with no kill
KILL_GRACE = 0.5  # see Kill
SAMPLE_EVERY = 2.0
# Memory and descriptors are compared between the first and the last window of the run;
# within a worker's life, from a while after it started (warmed up) to its end.
WINDOW = min(60.0, SECONDS / 3)
# A mixed client's request asks the server to close the connection after it, one time in
# this many: each client then connects anew now and then, as real ones do, and the kernel
# spreads the new connections over the workers, a restarted one included.
RECONNECT_EVERY = 50
SLOW_RATES = (300 * 1024, 600 * 1024)  # bytes a second
VANISH_RATE = 512 * 1024  # the upstream's, for files that are downloading when hung up on
WELL_FORMED = {200, 206, 304}  # any other status on a well-formed request is a failure
KINDS = (
    "page hit", "page miss", "page head", "file hit", "file miss", "file head", "range",
    "slow read", "vanish",
)  # fmt: skip
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.1, text/html;q=0.01"
)
MIB = 1024 * 1024
# Consecutive file-miss operations share one file, so its misses come in together.
SAME_FILE_MISSES = 4
# What is wrong with an answer (status, headers, body), or None when it is right.
Judge = Callable[[int, CIMultiDictProxy[str], bytes], str | None]
Reader = Callable[[aiohttp.ClientResponse], Awaitable[bytes]]


@dataclass
class Workload:
    """What exists upstream, and which of it is already cached."""

    warm_pages: list[str]
    warm_files: list[Dist]
    big_files: list[Dist]  # cached too: for slow readers and vanishers
    cold_pages: Iterator[str]
    cold_files: list[Dist]
    vanish_files: Iterator[Dist]  # each asked only by one vanisher
    file_miss_counter: Iterator[int] = field(default_factory=itertools.count)


@dataclass(frozen=True)
class Ask:
    """One well-formed request, and how to judge its answer."""

    kind: str
    path: str
    judge: Judge
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=lambda: {"Accept": PIP_ACCEPT})


@dataclass(frozen=True)
class Kill:
    """A worker SIGKILLed (loop times): from the signal until its descriptors were gone, as
    this process saw it. Until then its listening socket may still take connections, which
    the kernel then resets; and a moment after, too: connection attempts are still reset
    for some milliseconds (up to 12 ms seen here), so KILL_GRACE more."""

    killed: float
    gone: float

    def overlaps(self, start: float, end: float) -> bool:
        return start <= self.gone + KILL_GRACE and self.killed <= end


@dataclass(frozen=True)
class Broken:
    """A request that got no whole answer: a connection error or a timeout."""

    kind: str
    path: str
    began: float  # loop time
    ended: float
    error: BaseException

    def cut_by(self, kills: list[Kill]) -> bool:
        """Ended by a connection error while a worker was being killed: a cut, not a
        failure."""
        if isinstance(self.error, TimeoutError):  # aiohttp's socket timeouts are both kinds
            return False
        dropped = isinstance(self.error, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError)
        return dropped and any(kill.overlaps(self.began, self.ended) for kill in kills)


@dataclass
class Results:
    latencies: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    bad_status: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # wrong bytes or headers
    broken: list[Broken] = field(default_factory=list)
    distinct_file_misses: set[str] = field(default_factory=set)  # filenames


def build_upstream(upstream: FakeUpstream, rng: random.Random) -> Workload:
    def add(name: str, size: int) -> Dist:
        return upstream.add_dist(Dist.from_bytes(f"{name}-1.0.tar.gz", rng.randbytes(size)))

    warm = [add(f"warm{i}", rng.randint(1_000, 64_000)) for i in range(200)]
    # Bigger than the 4 MiB a server's socket buffer takes (tcp_wmem): else the kernel, not
    # the server, would feed a slow reader, also after its worker was killed.
    bigs = [add(f"warmbig{i}", rng.randint(8 * MIB, 12 * MIB)) for i in range(4)]
    # Pools sized for the run, so misses go on to its end.
    cold_pages = [add(f"coldpage{i}", 100).project for i in range(math.ceil(SECONDS * 700))]
    cold_files = []
    for project in range(math.ceil(SECONDS * 1.7)):
        for number in range(60):
            size = 2 * MIB if number == 0 else rng.randint(2_000, 32_000)
            dist = Dist.from_bytes(f"coldfiles{project}-1.{number}.tar.gz", rng.randbytes(size))
            cold_files.append(upstream.add_dist(dist))
    rng.shuffle(cold_files)
    vanish = [add(f"vanish{i}", VANISH_RATE) for i in range(math.ceil(SECONDS * 1.5))]
    upstream.throttle("/files/vanish*", VANISH_RATE)  # a second each: hung up on mid-way
    return Workload(
        [d.project for d in warm], warm + bigs, bigs, iter(cold_pages), cold_files, iter(vanish)
    )


async def warm_up(base: str, workload: Workload) -> None:
    async with aiohttp.ClientSession() as session:
        for dist in workload.warm_files:
            async with session.get(base + file_path(dist)) as response:
                assert response.status == 200
                await response.read()


def file_path(dist: Dist) -> str:
    return f"/index/{dist.project}/{dist.filename}"


# -- what the clients ask, and what is right -------------------------------------------------


def next_request(workload: Workload, rng: random.Random) -> Ask:
    """A mixed client's next request: 35% cached pages, 15% cached files, 12% pages never
    asked before, 14% files never asked before (each by SAME_FILE_MISSES clients in a row,
    so their misses overlap), 8% each HEAD of a page, HEAD of a file (cached or not) and a
    Range of a cached file."""
    roll = rng.random()
    if roll < 0.12 and (name := next(workload.cold_pages, None)) is not None:
        return Ask("page miss", f"/index/{name}/", names_project(name))
    if 0.12 <= roll < 0.26:
        number = next(workload.file_miss_counter) // SAME_FILE_MISSES
        if number < len(workload.cold_files):
            dist = workload.cold_files[number]
            return Ask("file miss", file_path(dist), hashes_to(dist))
    if 0.26 <= roll < 0.34:
        name = rng.choice(workload.warm_pages)
        return Ask("page head", f"/index/{name}/", heads_page, method="HEAD")
    if 0.34 <= roll < 0.42:
        # Any state: cached, downloading, or never asked (HEAD must not download it).
        dist = rng.choice(workload.warm_files + workload.cold_files)
        return Ask("file head", file_path(dist), heads_file(dist), method="HEAD")
    if 0.42 <= roll < 0.50:
        return ranged(rng.choice(workload.warm_files), rng)
    if 0.50 <= roll < 0.65:
        dist = rng.choice(workload.warm_files)
        return Ask("file hit", file_path(dist), hashes_to(dist))
    name = rng.choice(workload.warm_pages)
    return Ask("page hit", f"/index/{name}/", names_project(name))


def names_project(name: str) -> Judge:
    marker = f'"name":"{name}"'.encode()
    return lambda status, headers, body: None if status == 200 and marker in body else "not it"


def hashes_to(dist: Dist) -> Judge:
    def judge(status: int, headers: CIMultiDictProxy[str], body: bytes) -> str | None:
        if status != 200:
            return f"status {status}"
        return None if hashlib.sha256(body).hexdigest() == dist.sha256 else "wrong bytes"

    return judge


def starts_as(dist: Dist, count: int) -> Judge:
    """The first `count` bytes of the file, at least."""
    want = dist.view[:count]

    def judge(status: int, headers: CIMultiDictProxy[str], body: bytes) -> str | None:
        if status != 200:
            return f"status {status}"
        return None if body[:count] == want else "wrong bytes"

    return judge


def heads_page(status: int, headers: CIMultiDictProxy[str], body: bytes) -> str | None:
    if status != 200 or body:
        return f"status {status}, {len(body)} body bytes"
    if not headers.get("Content-Type", "").startswith(JSON_TYPE) or "ETag" not in headers:
        return f"headers {dict(headers)}"
    return None if int(headers.get("Content-Length", 0)) > 0 else "no Content-Length"


def heads_file(dist: Dist) -> Judge:
    right = {"Content-Length": str(dist.size), "ETag": f'"{dist.sha256}"', "Accept-Ranges": "bytes"}

    def judge(status: int, headers: CIMultiDictProxy[str], body: bytes) -> str | None:
        if status != 200 or body:
            return f"status {status}, {len(body)} body bytes"
        got = {name: headers.get(name) for name in right}
        return None if got == right else f"headers {got}, not {right}"

    return judge


def ranged(dist: Dist, rng: random.Random) -> Ask:
    """A single Range of one of the three forms: first-last, first-, -suffix."""
    size = dist.size
    start = rng.randrange(size)
    form = rng.randrange(3)
    if form == 0:
        end = rng.randint(start + 1, size)
        spec = f"{start}-{end - 1}"
    elif form == 1:
        end, spec = size, f"{start}-"
    else:
        end, spec = size, f"-{size - start}"
    want = bytes(dist.view[start:end])
    content_range = f"bytes {start}-{end - 1}/{size}"

    def judge(status: int, headers: CIMultiDictProxy[str], body: bytes) -> str | None:
        got = headers.get("Content-Range")
        if status != 206 or got != content_range:
            return f"status {status}, Content-Range {got}, not {content_range}"
        return None if body == want else f"wrong bytes ({len(body)} of {len(want)})"

    return Ask("range", file_path(dist), judge, headers={"Range": f"bytes={spec}"})


# -- clients ---------------------------------------------------------------------------------


async def read_all(response: aiohttp.ClientResponse) -> bytes:
    return await response.read()


def reading_at(bytes_per_second: float) -> Reader:
    """A slow reader: the body at about `bytes_per_second`."""

    async def read(response: aiohttp.ClientResponse) -> bytes:
        loop = asyncio.get_running_loop()
        began, body = loop.time(), bytearray()
        while chunk := await response.content.read(64 * 1024):
            body += chunk
            await asyncio.sleep(max(0.0, began + len(body) / bytes_per_second - loop.time()))
        return bytes(body)

    return read


def hanging_up_after(count: int) -> Reader:
    """A client that vanishes: reads about `count` bytes, then closes the connection."""

    async def read(response: aiohttp.ClientResponse) -> bytes:
        body = bytearray()
        while len(body) < count and (chunk := await response.content.read(64 * 1024)):
            body += chunk
        response.close()
        return bytes(body)

    return read


async def exchange(
    session: aiohttp.ClientSession,
    base: str,
    ask: Ask,
    results: Results,
    read: Reader = read_all,
) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        async with session.request(ask.method, base + ask.path, headers=ask.headers) as response:
            body = await read(response)
            status, headers = response.status, response.headers
    except (aiohttp.ClientError, TimeoutError) as error:
        results.broken.append(Broken(ask.kind, ask.path, began, loop.time(), error))
        return
    results.latencies[ask.kind].append(loop.time() - began)
    if status not in WELL_FORMED:
        results.bad_status.append(f"{ask.kind} {ask.path}: {status} {body[:100]!r}")
    elif (wrong := ask.judge(status, headers, body)) is not None:
        results.wrong.append(f"{ask.kind} {ask.path} {ask.headers}: {wrong}")


async def mixed_client(
    session: aiohttp.ClientSession,
    base: str,
    workload: Workload,
    rng: random.Random,
    results: Results,
    deadline: float,
) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        ask = next_request(workload, rng)
        if ask.kind == "file miss":
            results.distinct_file_misses.add(ask.path.rpartition("/")[2])
        if rng.randrange(RECONNECT_EVERY) == 0:
            ask = replace(ask, headers={**ask.headers, "Connection": "close"})
        await exchange(session, base, ask, results)


async def slow_reader(
    session: aiohttp.ClientSession,
    base: str,
    workload: Workload,
    rng: random.Random,
    results: Results,
    deadline: float,
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        dist = rng.choice(workload.big_files)
        # Faster towards the end, to end with the others; none in the last seconds.
        rate = max(rng.uniform(*SLOW_RATES), dist.size / max(deadline - loop.time(), 1))
        if rate > 2 * SLOW_RATES[1]:
            return
        ask = Ask("slow read", file_path(dist), hashes_to(dist))
        await exchange(session, base, ask, results, reading_at(rate))


async def vanisher(
    session: aiohttp.ClientSession,
    base: str,
    workload: Workload,
    rng: random.Random,
    results: Results,
    deadline: float,
) -> None:
    """Hangs up part-way through a cached big file, or (one time in 6) through a file
    nobody asked for before, while it downloads."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        dist = rng.choice(workload.big_files)
        if rng.random() < 1 / 6 and (fresh := next(workload.vanish_files, None)) is not None:
            dist = fresh
            results.distinct_file_misses.add(dist.filename)
        count = rng.randint(64 * 1024, dist.size * 3 // 4)
        ask = Ask("vanish", file_path(dist), starts_as(dist, count))
        await exchange(session, base, ask, results, hanging_up_after(count))
        await asyncio.sleep(rng.uniform(0.5, 1.5))


Role = Callable[
    [aiohttp.ClientSession, str, Workload, random.Random, Results, float], Awaitable[None]
]


async def client(
    role: Role,
    narrow: bool,
    base: str,
    workload: Workload,
    rng: random.Random,
    results: Results,
    deadline: float,
) -> None:
    """One client, with a connection of its own (as separate installers have): a new one
    after a kill or a `Connection: close` goes to whichever worker the kernel picks."""
    connector = aiohttp.TCPConnector(limit=1, socket_factory=narrow_socket if narrow else None)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await role(session, base, workload, rng, results, deadline)


def narrow_socket(addr_info: AddrInfoType) -> socket.socket:
    """A client socket with a small fixed receive buffer. Autotuned, it grows to tens of MiB
    on loopback and takes in a whole file at once: the server would never see the client
    read slowly, nor hang up before the end."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    return sock


# -- kills, samples, and what they say -------------------------------------------------------


async def kill_workers(
    served: ServedProxy, rng: random.Random, began: float, kills: list[Kill]
) -> None:
    """SIGKILL a worker picked at random every 15-30 s, none in the first or last 10 s;
    only while all workers listen (the supervisor restarts a killed one)."""
    loop = asyncio.get_running_loop()
    at = began
    while (at := at + rng.uniform(*KILL_EVERY)) < began + SECONDS - QUIET_EDGES:
        await asyncio.sleep(at - loop.time())
        while listening(served) < served.workers + len(kills):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        victim = rng.choice(served.worker_pids())
        os.kill(victim, signal.SIGKILL)
        killed = loop.time()
        while open_fds(victim):  # noqa: ASYNC110  # /proc has no event to wait for
            await asyncio.sleep(0.01)
        kills.append(Kill(killed, loop.time()))


def listening(served: ServedProxy) -> int:
    """Workers that started listening, ever (each logs it once)."""
    return sum(LISTENING in line for line in served.log)


async def watch_lag(lags: list[float]) -> None:
    """How late this process's event loop wakes up: how late what it records may be."""
    loop = asyncio.get_running_loop()
    while True:
        asleep = loop.time()
        await asyncio.sleep(0.05)
        lags.append(loop.time() - asleep - 0.05)


def downloads_again(upstream: FakeUpstream, kills: list[Kill], lag: float) -> list[str]:
    """Files downloaded again with no kill since their previous download started. The
    upstream records a start when this process's loop gets to it: up to `lag` late."""
    starts: defaultdict[str, list[float]] = defaultdict(list)
    for request in upstream.requests:
        if request.method == "GET" and request.path.startswith("/files/"):
            starts[request.path].append(request.started)
    return [
        path
        for path, times in starts.items()
        for earlier, later in itertools.pairwise(sorted(times))
        if not any(kill.overlaps(earlier - lag, later) for kill in kills)
    ]


def rng_from(rng: random.Random) -> random.Random:
    """A generator of its own for each client and the killer, all from the one seed."""
    return random.Random(rng.random())


def percentile(values: list[float], fraction: float) -> float:
    if len(values) < 2:
        return values[0] if values else math.nan
    return statistics.quantiles(values, n=1000)[int(fraction * 1000) - 1]


@pytest.mark.load
@pytest.mark.timeout(SECONDS + 240)
async def test_clients_with_workers_killed_get_no_errors_no_wrong_bytes_and_no_leaks(
    fake_upstream_factory: FakeUpstreamFactory,
    tmp_path: Path,
    unused_tcp_port: int,
    record_property: Callable[[str, object], None],
) -> None:
    assert KILL_EVERY[1] + QUIET_EDGES < SECONDS, "too short a run for a kill"
    rng = random.Random(SEED)
    upstream = await fake_upstream_factory()
    workload = build_upstream(upstream, rng)
    served = ServedProxy(upstream.url, tmp_path / "cache", unused_tcp_port, workers=2)
    await served.start()
    loop = asyncio.get_running_loop()
    results = Results()
    kills: list[Kill] = []
    samples: list[Sample] = []
    lags: list[float] = []
    try:
        await warm_up(served.base, workload)
        upstream.reset_counts()
        test_cpu = os.times()
        began = loop.time()
        deadline = began + SECONDS
        roles: list[tuple[Role, bool, int]] = [
            (mixed_client, False, CLIENTS),
            (slow_reader, True, SLOW_READERS),
            (vanisher, True, VANISHERS),
        ]
        clients = [
            client(role, narrow, served.base, workload, rng_from(rng), results, deadline)
            for role, narrow, count in roles
            for _ in range(count)
        ]
        background = [
            asyncio.create_task(kill_workers(served, rng_from(rng), began, kills)),
            asyncio.create_task(sample_server(served, began, samples, SAMPLE_EVERY)),
            asyncio.create_task(watch_lag(lags)),
        ]
        try:
            await asyncio.gather(*clients)
        finally:
            for task in background:
                task.cancel()
        elapsed = loop.time() - began
        test_cpu_seconds = sum(os.times()[:2]) - sum(test_cpu[:2])
        workers_at_end = served.worker_pids()
        listened = listening(served)
    finally:
        await served.stop()

    cut = [broken for broken in results.broken if broken.cut_by(kills)]
    unexplained = [broken for broken in results.broken if not broken.cut_by(kills)]
    downloads = upstream.count_prefix("/files/")
    downloaded = {r.path for r in upstream.requests if r.path.startswith("/files/")}
    again = downloads_again(upstream, kills, max(lags))
    first, last = use(samples, 0, WINDOW), use(samples, SECONDS - WINDOW, SECONDS)
    supervisor = [s for s in samples if s.pid == served.pid]
    supervisor_first = use(supervisor, 0, WINDOW)
    supervisor_last = use(supervisor, SECONDS - WINDOW, SECONDS)
    compared_lives = {
        pid: flatness
        for pid, life in lives(samples, served.pid).items()
        if (flatness := life_flatness(life, WINDOW)) is not None
    }
    total = sum(len(latencies) for latencies in results.latencies.values())
    # CPU a process used while sampled: a killed worker's last seconds are not counted.
    server_cpu = sum(life[-1].cpu - life[0].cpu for life in lives(samples).values())
    peak_all, peak_one = peak_rss_mib(samples)
    figures = {
        "seconds": round(elapsed),
        "requests": total,
        "requests_per_second": round(total / elapsed),
        "by_kind": {kind: len(values) for kind, values in sorted(results.latencies.items())},
        "p50_p99_ms": {
            kind: (round(percentile(values, 0.5) * 1000, 1), round(percentile(values, 0.99) * 1000))
            for kind, values in sorted(results.latencies.items())
        },
        "kills": len(kills),
        "kills_at_s": [round(kill.killed - began, 1) for kill in kills],
        "kill_to_gone_ms_max": round(max(k.gone - k.killed for k in kills) * 1000),
        "cut_by_kills": dict(Counter(f"{b.kind}: {type(b.error).__name__}" for b in cut)),
        "errors": dict(Counter(f"{b.kind}: {b.error!r}" for b in unexplained)),
        "bad_status": len(results.bad_status),
        "wrong": len(results.wrong),
        "distinct_file_misses": len(results.distinct_file_misses),
        "upstream_file_requests": downloads,
        "downloaded_again_after_kills": downloads - len(downloaded),
        "server_first_window": str(first),
        "server_last_window": str(last),
        "supervisor_first_last": f"{supervisor_first} -> {supervisor_last}",
        "worker_lives": describe_lives(samples, served.pid, WINDOW),
        "peak_rss_all_processes_mib": peak_all,
        "peak_rss_one_process_mib": peak_one,
        # Where the 2 cores went: the server, and this process (clients + fake upstream).
        "server_cpu_share": round(server_cpu / elapsed, 2),
        "test_process_cpu_share": round(test_cpu_seconds / elapsed, 2),
        "test_loop_lag_p99_max_ms": (round(percentile(lags, 0.99) * 1000), round(max(lags) * 1000)),
        "load_average": os.getloadavg(),
    }
    for name, value in figures.items():
        record_property(name, value)
    print(f"\nload, {CLIENTS}+{SLOW_READERS}+{VANISHERS} clients, {elapsed:.0f} s:")
    for name, value in figures.items():
        print(f"  {name}: {value}")
    assert results.bad_status == [], results.bad_status[:10]
    assert results.wrong == [], results.wrong[:10]
    assert unexplained == [], [
        f"{b.kind} {b.path}, {b.began - began:.3f}-{b.ended - began:.3f} s: {b.error!r}"
        for b in unexplained[:10]
    ]
    assert all(results.latencies[kind] for kind in KINDS), "a kind of request never completed"
    # Each kill was survived: the supervisor started a worker in its place, which listens.
    assert kills and len(workers_at_end) == served.workers
    assert listened == served.workers + len(kills)
    # One upstream download per file, however many clients missed it at once; again only
    # if a kill may have cut it. HEAD and Range never download.
    assert downloaded <= {upstream.file_path(name) for name in results.distinct_file_misses}
    assert again == [], again[:10]
    # Flat: the server's memory grows by no more than room for warming up and for load
    # swinging between workers (30% and 16 MiB); its descriptors, mostly connections, by a
    # fifth and 16 (as many clients hold as many connections); the fixed ones by 6 a worker:
    # a replacement starts with up to 4 more (the supervisor's pipes to its sibling: 14-18
    # seen), and metrics files are opened on first use. What outlives a killed worker shows
    # here (in the supervisor, or kept by the other worker); what grows within one, below.
    assert last.rss_mib <= first.rss_mib * 1.3 + 16, f"the server grew: {first} -> {last}"
    assert last.fds <= first.fds * 1.2 + 16, f"the server grew: {first} -> {last}"
    assert last.fixed_fds <= first.fixed_fds + 6 * served.workers, f"{first} -> {last}"
    # The supervisor only restarts workers: nothing of theirs may stay with it.
    assert supervisor_last.rss_mib <= supervisor_first.rss_mib + 2
    assert supervisor_last.fds <= supervisor_first.fds
    # A restart resets a worker, so within each one too: whatever lived long enough (the
    # kills are 15 s apart, so one at least) keeps its memory and fixed descriptors flat.
    assert compared_lives
    for pid, (settled, end) in compared_lives.items():
        assert end.rss_mib <= settled.rss_mib * 1.3 + 16, f"worker {pid}: {settled} -> {end}"
        assert end.fixed_fds <= settled.fixed_fds + 4, f"worker {pid}: {settled} -> {end}"
