"""`/metrics` (Prometheus text format) and the access log, on real proxies."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from cachepi.metrics import Metrics
from cachepi.store.protocols import StoreUnavailable
from tests.conftest import ProxyFactory
from tests.fakeupstream import Dist, FakeUpstream
from tests.fetching import fetch, get_json
from tests.proxy import RunningProxy
from tests.served import ServedProxy

Key = tuple[str, frozenset[tuple[str, str]]]
ROUTES = {
    "project_list", "project_page", "file", "home", "health", "metrics", "admin", "warm", "other",
}  # fmt: skip
ACCESS_KEYS = {"time", "client", "pid", "method", "path", "status", "bytes", "seconds", "cache"}
TEXT_LINE = re.compile(
    r'^\S+ (?P<client>\S+) pid=(?P<pid>\d+) "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.[01]" '
    r"(?P<status>\d{3}) (?P<bytes>\d+) (?P<seconds>\d+(?:\.\d+)?) (?P<cache>hit|miss|stale|-)$"
)


PAGE_LINE = re.compile(r'pid=(\d+) "GET /index/app/')


class Scrape:
    """One parsed /metrics answer: every sample by (name, labels)."""

    def __init__(self, text: str) -> None:
        self.samples: dict[Key, float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in self.samples, f"duplicate sample {key}"
                self.samples[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0 when absent (a counter not yet moved)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over all samples of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def label_values(self, name: str, label: str) -> set[str]:
        return {
            dict(ls)[label]
            for (n, ls), _ in self.samples.items()
            if n == name and label in dict(ls)
        }


async def scrape(base: str) -> Scrape:
    reply = await fetch(base + "/metrics")
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"].startswith("text/plain")
    return Scrape(reply.body.decode())


def wheel_of(upstream: FakeUpstream, project: str, version: str) -> Dist:
    (wheel,) = (d for d in upstream.dists(project) if d.is_wheel and d.version == version)
    return wheel


def delta(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


# -- the format ----------------------------------------------------------------------------


async def test_metrics_parse_with_the_documented_names_and_types(proxy: RunningProxy) -> None:
    await get_json(proxy.index_url + "app/")
    metrics = await scrape(proxy.url)
    expected = {
        "cachepi_requests": "counter",
        "cachepi_cache": "counter",
        "cachepi_served_bytes": "counter",
        "cachepi_upstream_request_seconds": "histogram",
        "cachepi_download_errors": "counter",
        "cachepi_evictions": "counter",
        "cachepi_evicted_bytes": "counter",
        "cachepi_page_loads": "counter",
        "cachepi_cache_bytes": "gauge",
        "cachepi_cache_files": "gauge",
        "cachepi_cache_limit_bytes": "gauge",
        "cachepi_index_up": "gauge",
        "cachepi_client_connections": "gauge",
    }
    for name, kind in expected.items():
        assert metrics.types.get(name) == kind, (name, metrics.types)
    assert metrics.label_values("cachepi_requests_total", "route") <= ROUTES
    index = proxy.settings.upstreams[0].name
    assert metrics.value("cachepi_index_up", index=index) == 1
    assert metrics.value("cachepi_cache_limit_bytes") == proxy.settings.cache_size
    buckets = [
        (float(dict(ls)["le"]), v)
        for (n, ls), v in metrics.samples.items()
        if n == "cachepi_upstream_request_seconds_bucket" and dict(ls)["index"] == index
    ]
    assert buckets and max(buckets)[0] == float("inf")
    counts = [v for _, v in sorted(buckets)]
    assert counts == sorted(counts), "histogram buckets are cumulative"
    assert max(buckets)[1] == metrics.value("cachepi_upstream_request_seconds_count", index=index)


class FlakyStore:
    """Takes traffic totals, or fails to while told to."""

    def __init__(self) -> None:
        self.down = True
        self.added: list[tuple[dict[str, int], int]] = []

    def add_counts(self, deltas: Iterable[tuple[str, int]], hour: int) -> None:
        if self.down:
            raise StoreUnavailable("redis: down")
        self.added.append((dict(deltas), hour))


def test_totals_a_failing_store_did_not_take_go_with_the_next_flush() -> None:
    metrics = Metrics(clock=lambda: 480_000 * 3600 + 59.0)
    store = FlakyStore()
    metrics.served("cache", 10)
    with pytest.raises(StoreUnavailable):
        metrics.flush(store)  # type: ignore[arg-type]  # all a flush needs of a store
    assert metrics.totals({})["bytes_cache"] == 10  # still counted here
    store.down = False
    metrics.served("cache", 5)
    metrics.flush(store)  # type: ignore[arg-type]
    assert store.added == [({"bytes_cache": 15}, 480_000)]
    assert metrics.totals({})["bytes_cache"] == 0  # all in the store now


# -- counters after known traffic -----------------------------------------------------------


async def test_counters_move_by_exactly_the_traffic_sent(
    fake_upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    pages, hits = 3, 4
    wheel = wheel_of(fake_upstream, "app", "1.0")
    file_url = f"{proxy.index_url}app/{wheel.filename}"
    before = await scrape(proxy.url)
    for _ in range(pages):
        assert (await get_json(proxy.index_url + "app/")).status == 200
    for _ in range(1 + hits):  # one miss, then hits
        assert (await fetch(file_url)).sha256 == wheel.sha256
    assert (await fetch(proxy.url + "/health")).status == 200
    assert (await fetch(proxy.index_url + "app/no-such-file-1.0.tar.gz")).status == 404
    after = await scrape(proxy.url)

    requests = "cachepi_requests_total"
    assert delta(after, before, requests, route="project_page", status="200") == pages
    assert delta(after, before, requests, route="file", status="200") == 1 + hits
    assert delta(after, before, requests, route="file", status="404") == 1
    assert delta(after, before, requests, route="health", status="200") == 1
    # `before` at least; whether a scrape counts itself is not specified.
    scrapes = delta(after, before, requests, route="metrics", status="200")
    assert scrapes in (1, 2)
    assert after.total(requests) - before.total(requests) - scrapes == pages + hits + 3

    cache = "cachepi_cache_total"
    assert delta(after, before, cache, kind="file", result="miss") == 1
    assert delta(after, before, cache, kind="file", result="hit") == hits
    assert delta(after, before, cache, kind="file", result="stale") == 0
    assert delta(after, before, cache, kind="page", result="miss") == 1
    assert delta(after, before, cache, kind="page", result="hit") >= pages - 1
    assert delta(after, before, cache, kind="page", result="stale") == 0

    served = "cachepi_served_bytes_total"
    assert delta(after, before, served, source="upstream") == wheel.size
    assert delta(after, before, served, source="cache") == hits * wheel.size

    index = proxy.settings.upstreams[0].name
    seconds = "cachepi_upstream_request_seconds_count"
    assert delta(after, before, seconds, index=index) >= 1
    assert after.value("cachepi_upstream_request_seconds_sum", index=index) > 0
    assert after.total("cachepi_download_errors_total") == 0
    assert after.value("cachepi_evictions_total") == 0
    # The cache's figures are read every few seconds at most (overview.py).
    async with asyncio.timeout(10):
        while (gauges := await scrape(proxy.url)).value("cachepi_cache_files") != 1:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert gauges.value("cachepi_cache_bytes") == wheel.size


async def test_an_upstream_error_on_a_download_is_counted(
    fake_upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    wheel = wheel_of(fake_upstream, "lib", "1.1")
    assert (await get_json(proxy.index_url + "lib/")).status == 200
    before = await scrape(proxy.url)
    fake_upstream.fail(fake_upstream.file_path(wheel.filename), 500)
    reply = await fetch(f"{proxy.index_url}lib/{wheel.filename}")
    assert reply.status in (502, 503, 504)
    after = await scrape(proxy.url)
    index = proxy.settings.upstreams[0].name
    assert delta(after, before, "cachepi_download_errors_total", index=index) == 1
    assert delta(after, before, "cachepi_served_bytes_total", source="upstream") == 0
    assert after.value("cachepi_cache_files") == 0

    fake_upstream.clear()  # it recovers: a download, no new error
    assert (await fetch(f"{proxy.index_url}lib/{wheel.filename}")).sha256 == wheel.sha256
    recovered = await scrape(proxy.url)
    assert delta(recovered, after, "cachepi_download_errors_total", index=index) == 0
    assert delta(recovered, after, "cachepi_cache_total", kind="file", result="miss") == 1


async def test_evictions_are_counted(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    wheels = [
        fake_upstream.add_project(f"big{i}", ["1.0"], big_mb=0.1, sdist=False)[0] for i in range(3)
    ]
    limit = max(w.size for w in wheels) * 3 // 2  # room for one at a time
    proxy = await proxy_factory(fake_upstream, cache_size=limit)
    for i, wheel in enumerate(wheels):
        assert (await fetch(f"{proxy.index_url}big{i}/{wheel.filename}")).sha256 == wheel.sha256
    # Eviction may finish just after the response; the cache's figures are read every few
    # seconds at most (overview.py).
    async with asyncio.timeout(10):
        while (metrics := await scrape(proxy.url)).value("cachepi_evictions_total") < 2 or (  # noqa: ASYNC110
            metrics.value("cachepi_cache_files") != 1
        ):
            await asyncio.sleep(0.05)
    assert metrics.value("cachepi_evictions_total") == 2
    assert metrics.value("cachepi_evicted_bytes_total") == wheels[0].size + wheels[1].size
    assert metrics.value("cachepi_cache_bytes") == wheels[2].size
    assert metrics.value("cachepi_cache_files") == 1
    assert metrics.value("cachepi_cache_limit_bytes") == limit


async def test_a_stale_page_is_counted_as_stale(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory((fake_upstream.url, 0))  # TTL 0: always revalidate
    assert (await get_json(proxy.index_url + "lib/")).status == 200
    before = await scrape(proxy.url)
    await fake_upstream.stop()
    reply = await get_json(proxy.index_url + "lib/")
    assert reply.status == 200 and reply.stale
    after = await scrape(proxy.url)
    assert delta(after, before, "cachepi_cache_total", kind="page", result="stale") == 1
    assert delta(after, before, "cachepi_cache_total", kind="page", result="hit") == 0
    assert delta(after, before, "cachepi_cache_total", kind="page", result="miss") == 0


async def test_an_index_that_is_down_reads_zero(
    fake_upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    await fake_upstream.stop()
    assert (await get_json(proxy.index_url + "lib/")).status >= 500
    metrics = await scrape(proxy.url)
    assert metrics.value("cachepi_index_up", index=proxy.settings.upstreams[0].name) == 0


# -- served: workers, access log -----------------------------------------------------------


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[list[ServedProxy]]:
    """Start `cachepi serve` subprocesses with `ServedProxy(...)` arguments; all stop at the
    end."""
    started: list[ServedProxy] = []
    yield started
    for server in started:
        await server.stop()


async def start_served(
    started: list[ServedProxy], upstream: FakeUpstream, tmp_path: Path, port: int, **kwargs: object
) -> ServedProxy:
    server = ServedProxy(upstream.url, tmp_path / "cache", port, **kwargs)  # type: ignore[arg-type]
    started.append(server)
    await server.start()
    return server


async def test_two_workers_report_the_sum_of_their_counts(
    serve: list[ServedProxy], fake_upstream: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> None:
    server = await start_served(serve, fake_upstream, tmp_path, unused_tcp_port, workers=2)
    sent = 40
    # A session (so a connection) per request: the kernel spreads them over both workers.
    replies = await asyncio.gather(*(get_json(server.index_url + "app/") for _ in range(sent)))
    assert {r.status for r in replies} == {200}
    async with asyncio.timeout(10):  # the lines are written within accesslog.FLUSH_SECONDS
        while True:
            pids = [m[1] for line in server.log if (m := PAGE_LINE.search(line))]
            if len(pids) >= sent:
                break
            await asyncio.sleep(0.05)
    assert len(set(pids)) == 2, "both workers served some"

    # Each worker publishes its counts every second (metrics.PUBLISH_SECONDS).
    async with asyncio.timeout(10):
        while (await scrape(server.base)).value(  # noqa: ASYNC110
            "cachepi_requests_total", route="project_page", status="200"
        ) < sent:
            await asyncio.sleep(0.1)
    totals = []
    for _ in range(4):  # whichever worker answers the scrape, it reports both
        metrics = await scrape(server.base)
        totals.append(metrics.value("cachepi_requests_total", route="project_page", status="200"))
        page = metrics.total("cachepi_cache_total", kind="page")
        assert page >= sent
    assert totals == [sent] * 4


def access_lines(server: ServedProxy) -> list[str]:
    return [line.rstrip("\n") for line in server.log if '"GET ' in line or line.startswith("{")]


async def logged_traffic(server: ServedProxy, wheel: Dist) -> list[str]:
    """The access log lines of `traffic()`, once all five are in."""
    logged = len(access_lines(server))
    await traffic(server, wheel)
    async with asyncio.timeout(10):
        while True:
            lines = access_lines(server)[logged:]
            # ServedProxy's start polls /health: a late line of those may come first.
            while lines and "/health" in lines[0]:
                lines.pop(0)
            if len(lines) >= 5:
                return lines
            await asyncio.sleep(0.02)


async def traffic(server: ServedProxy, wheel: Dist) -> None:
    """A page miss and hit, a file miss and hit, and /health: five requests."""
    for _ in range(2):
        assert (await get_json(server.index_url + "lib/")).status == 200
    for _ in range(2):
        assert (await fetch(f"{server.index_url}lib/{wheel.filename}")).sha256 == wheel.sha256
    assert (await fetch(server.base + "/health")).status == 200


def requests_only(lines: Iterable[str], prefix: str) -> list[str]:
    return [line for line in lines if prefix in line]


async def test_text_access_log_ends_with_the_cache_status(
    serve: list[ServedProxy], fake_upstream: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> None:
    server = await start_served(serve, fake_upstream, tmp_path, unused_tcp_port)
    wheel = wheel_of(fake_upstream, "lib", "1.1")
    lines = await logged_traffic(server, wheel)
    parsed = [TEXT_LINE.match(line) for line in lines]
    assert all(parsed), lines
    seen = [(m["path"], m["status"], m["cache"]) for m in parsed if m]
    assert seen == [
        ("/index/lib/", "200", "miss"),
        ("/index/lib/", "200", "hit"),
        (f"/index/lib/{wheel.filename}", "200", "miss"),
        (f"/index/lib/{wheel.filename}", "200", "hit"),
        ("/health", "200", "-"),
    ]
    # <bytes>: the body's, from the cache (sendfile) as from upstream.
    assert [int(m["bytes"]) for m in parsed[2:4] if m] == [wheel.size, wheel.size]
    assert all(m["pid"] == str(server.pid) and m["client"] == "127.0.0.1" for m in parsed if m)


async def test_json_access_log_has_the_documented_keys(
    serve: list[ServedProxy], fake_upstream: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> None:
    server = await start_served(
        serve, fake_upstream, tmp_path, unused_tcp_port, options=["--access-log", "json"]
    )
    wheel = wheel_of(fake_upstream, "lib", "1.1")
    lines = await logged_traffic(server, wheel)
    records = [json.loads(line) for line in lines]
    for record in records:
        assert set(record) == ACCESS_KEYS, record
        assert record["pid"] == server.pid and record["client"] == "127.0.0.1"
        assert isinstance(record["status"], int) and isinstance(record["bytes"], int)
        assert isinstance(record["seconds"], int | float) and record["seconds"] >= 0
    seen = [(r["method"], r["path"], r["status"], r["cache"]) for r in records]
    assert seen == [
        ("GET", "/index/lib/", 200, "miss"),
        ("GET", "/index/lib/", 200, "hit"),
        ("GET", f"/index/lib/{wheel.filename}", 200, "miss"),
        ("GET", f"/index/lib/{wheel.filename}", 200, "hit"),
        ("GET", "/health", 200, "-"),
    ]
    assert [r["bytes"] for r in records[2:4]] == [wheel.size, wheel.size]


async def test_access_log_off_logs_no_requests(
    serve: list[ServedProxy], fake_upstream: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> None:
    server = await start_served(
        serve, fake_upstream, tmp_path, unused_tcp_port, options=["--access-log", "off"]
    )
    await traffic(server, wheel_of(fake_upstream, "lib", "1.1"))
    await server.stop()  # every line it wrote has been read
    assert server.log, "the server logs other things"
    assert not access_lines(server), server.log_text()
    assert not [line for line in server.log if "/index/lib/" in line]


@pytest.mark.parametrize("workers", [2])
async def test_access_log_names_the_worker_that_answered(
    workers: int,
    serve: list[ServedProxy],
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    unused_tcp_port: int,
) -> None:
    server = await start_served(serve, fake_upstream, tmp_path, unused_tcp_port, workers=workers)
    await asyncio.sleep(0.5)  # the lines of start-up's /health polls are written
    logged = len(access_lines(server))
    await asyncio.gather(*(fetch(server.base + "/health") for _ in range(30)))
    async with asyncio.timeout(10):  # written within accesslog.FLUSH_SECONDS
        while len(lines := access_lines(server)[logged:]) < 30:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    pids = Counter(m["pid"] for line in lines if (m := TEXT_LINE.match(line)))
    assert set(pids) <= {str(pid) for pid in server.pids()}
    assert len(pids) == workers
