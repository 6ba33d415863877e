"""The dashboard and /metrics of a big cache: 200,000 file records (added in bulk through
the metadata store, nothing downloaded) shown correctly, read through indexes and kept
totals, on a thread, once for many requests, while the event loop goes on serving."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachepi.overview import BIGGEST, MAX_AGE, RECENT, Overviews
from cachepi.store import DATABASE
from cachepi.store import sqlite as sqlite_store
from cachepi.store.protocols import (
    JOBS_KEPT,
    PAGES,
    NewBlob,
    Overview,
    PageRecord,
    StoreUnavailable,
)
from cachepi.store.sqlite import SqliteMetadata
from cachepi.warm.report import LOST_AFTER, Report
from cachepi.web.dashboard import CHART_HOURS, human, traffic_chart, warm_jobs
from tests.conftest import ProxyFactory
from tests.fakeupstream import FakeUpstream
from tests.fetching import fetch
from tests.inprocess import FakeClock
from tests.test_metrics import scrape

FILES = 200_000
PROJECTS = 2_000
T0 = 1_700_000_000.0


def synthetic(i: int) -> NewBlob:
    project = f"proj-{i % PROJECTS}"
    sha256 = hashlib.sha256(str(i).encode()).hexdigest()
    return NewBlob(sha256, 1000 + i % 997 * 10, T0 + i, project, f"{project}-{i}.tar.gz")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database of FILES blob records, made once for the module."""
    path = tmp_path_factory.mktemp("big-cache") / DATABASE
    store = SqliteMetadata(path)
    store.add_blobs(synthetic(i) for i in range(FILES))
    store.close()  # the WAL is checkpointed into the file
    return path


@pytest.fixture
def big_cache(template: Path, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(template, cache / DATABASE)
    return cache


def section(html: str, name: str) -> str:
    match = re.search(rf'<div id="{name}">(.*?)</div>', html, re.DOTALL)
    assert match is not None, f"no #{name} in the page"
    return match[1]


@pytest.mark.slow  # making the cache takes several seconds
async def test_the_dashboard_and_metrics_show_200000_files(
    big_cache: Path, fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    blobs = [synthetic(i) for i in range(FILES)]
    total = sum(b.size for b in blobs)
    sizes: Counter[str] = Counter()
    for b in blobs:
        sizes[b.project or ""] += b.size
    biggest = [name for name, _ in sizes.most_common(BIGGEST)]
    proxy = await proxy_factory(
        fake_upstream, cache_dir=big_cache, reconcile=False, cache_size=2 * total
    )
    page = await fetch(proxy.url + "/")
    assert page.status == 200
    html = page.body.decode()
    assert f"{FILES} files, {human(total)} of {human(2 * total)}" in section(html, "cache")
    shown = re.findall(r'<a href="/\?q=([^"]+)">', section(html, "biggest"))
    assert shown == biggest
    assert section(html, "biggest").count(f'<td class="n">{FILES // PROJECTS}</td>') == BIGGEST
    recent = re.findall(r"<td>(proj-[^<]+\.tar\.gz)</td>", section(html, "recent"))
    assert recent == [b.filename for b in reversed(blobs[-RECENT:])]
    metrics = await scrape(proxy.url)
    assert metrics.value("cachepi_cache_files") == FILES
    assert metrics.value("cachepi_cache_bytes") == total


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement the SQLite stores opened from now on run, parameters filled in."""
    seen: list[str] = []
    connect = sqlite_store._connect

    def traced(path: Path) -> sqlite3.Connection:
        db = connect(path)
        db.set_trace_callback(seen.append)
        return db

    monkeypatch.setattr(sqlite_store, "_connect", traced)
    return seen


def unindexed(db: sqlite3.Connection, statement: str) -> list[str]:
    """The steps of `statement`'s plan that read more than an index leads them to: a sort
    of the rows found, or a SCAN, but of an index walked in order and stopped by a LIMIT
    (with nothing filtered out on the way: no WHERE)."""
    plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + statement)]
    words = statement.upper()
    walk = " LIMIT " in words and " WHERE " not in words
    return [
        step
        for step in plan
        if "TEMP B-TREE" in step or (step.startswith("SCAN") and not (walk and "INDEX" in step))
    ]


def test_what_the_dashboard_and_eviction_ask_sqlite_reads_through_indexes(
    tmp_path: Path, statements: list[str]
) -> None:
    """SQLite plans by its indexes, not by the rows it holds (no ANALYZE is ever run): a
    small table shows the plans of a big one."""
    path = tmp_path / DATABASE
    store = SqliteMetadata(path)
    try:
        store.add_blobs(synthetic(i) for i in range(5 * PROJECTS))
        store.put_page("https://pypi.test/simple/", "proj-1", PageRecord(T0, None, None, b""))
        store.put_extracted_metadata(synthetic(1).sha256, synthetic(2).sha256)
        for i in range(JOBS_KEPT + 1):
            store.put_job(f"job-{i}", T0 + i, b"{}")
        store.add_counts([("file_hit", 1)], 480_000)
        del statements[:]  # what serving asks, not what setting up did
        overview = store.overview(RECENT, BIGGEST, 5)
        shown = (len(overview.recent), len(overview.biggest), len(overview.jobs))
        assert (overview.files, *shown) == (5 * PROJECTS, RECENT, BIGGEST, 5)
        store.put_job("job-1", T0 + 1, b"{}")
        store.get_job("job-1")
        store.add_counts([("file_hit", 1)], 480_001)
        store.blob_stats()
        store.blobs_of("proj-1")
        store.page_keys("proj-1", 20)
        store.changes(PAGES, 0)
        store.least_recently_used()
        store.extracted_metadata([synthetic(1).sha256])
        store.remove_blob(synthetic(2).sha256)  # a METADATA blob: its pair goes too
        store.get_ref("https://files.test/x.tar.gz")
        store.expire_pages("proj-1")
    finally:
        store.close()
    asked = [
        s
        for s in statements
        if s.split()[0].upper() in ("SELECT", "DELETE", "UPDATE")
        # One row per traffic total (TOTALS in metrics.py), for life and for each of the
        # HOURS_KEPT latest hours: read whole, they are tiny.
        and s not in ("SELECT name, value FROM counters", "SELECT hour, name, value FROM hourly")
    ]
    assert len(asked) >= 12
    db = sqlite3.connect(path)
    try:
        assert {s: unindexed(db, s) for s in asked if unindexed(db, s)} == {}
    finally:
        db.close()


def test_a_cache_made_before_totals_were_kept_is_counted_once_when_opened(tmp_path: Path) -> None:
    path = tmp_path / DATABASE
    blobs = [synthetic(i) for i in range(3 * PROJECTS)]
    sizes: Counter[str] = Counter()
    for b in blobs:
        sizes[b.project or ""] += b.size
    ((biggest, _),) = sizes.most_common(1)
    store = SqliteMetadata(path)
    store.add_blobs(blobs)
    store.close()
    older = sqlite3.connect(path)
    older.executescript(
        "DROP TABLE blob_totals; DROP TABLE project_totals;"
        " DROP TRIGGER blob_added; DROP TRIGGER blob_removed; DROP TRIGGER blob_changed;"
    )
    older.close()
    for _ in range(2):  # the second opening counts nothing again
        store = SqliteMetadata(path)
        overview = store.overview(0, 1)
        store.close()
        assert (overview.files, overview.bytes) == (len(blobs), sum(b.size for b in blobs))
        assert overview.biggest == [(biggest, 3, sizes[biggest])]


async def test_health_answers_while_the_dashboard_figures_are_read_once_for_all(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the figures takes as long as the store makes it (here: until the test lets
    it go); meanwhile the event loop serves, and 4 dashboards wait for one read."""
    gate = threading.Event()
    reads: list[str] = []
    real = SqliteMetadata.overview

    def held(self: SqliteMetadata, recent: int, biggest: int, jobs: int = 0) -> Overview:
        reads.append(threading.current_thread().name)
        gate.wait(30)
        return real(self, recent, biggest, jobs)

    monkeypatch.setattr(SqliteMetadata, "overview", held)
    proxy = await proxy_factory(fake_upstream)
    dashboards = [asyncio.create_task(fetch(proxy.url + "/")) for _ in range(4)]
    try:
        async with asyncio.timeout(10):
            while not reads:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        health = await fetch(proxy.url + "/health", seconds=10)
        assert health.status == 200
        assert not any(task.done() for task in dashboards)
    finally:
        gate.set()
    assert [reply.status for reply in await asyncio.gather(*dashboards)] == [200] * 4
    assert reads != [threading.main_thread().name] and len(reads) == 1


@pytest.mark.slow
async def test_health_stays_quick_while_four_clients_reload_the_dashboard_of_200000_files(
    big_cache: Path,
    fake_upstream: FakeUpstream,
    proxy_factory: ProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = 0
    real = SqliteMetadata.overview

    def counted(self: SqliteMetadata, recent: int, biggest: int, jobs: int = 0) -> Overview:
        nonlocal reads
        reads += 1
        return real(self, recent, biggest, jobs)

    monkeypatch.setattr(SqliteMetadata, "overview", counted)
    proxy = await proxy_factory(fake_upstream, cache_dir=big_cache, reconcile=False)
    seconds = 2.5
    stop = time.monotonic() + seconds
    served = 0

    async def reload() -> None:
        nonlocal served
        while time.monotonic() < stop:
            assert (await fetch(proxy.url + "/")).status == 200
            served += 1

    hammers = [asyncio.create_task(reload()) for _ in range(4)]
    waits = []
    while time.monotonic() < stop:
        started = time.monotonic()
        assert (await fetch(proxy.url + "/health")).status == 200
        waits.append(time.monotonic() - started)
        await asyncio.sleep(0.05)
    await asyncio.gather(*hammers)
    assert served > 4 and len(waits) > 10
    assert max(waits) < 1.0  # generous: a blocked loop took 0.4 s per dashboard here
    assert reads <= seconds / MAX_AGE + 2  # kept, and shared


# -- Overviews: kept a few seconds, one read at a time --------------------------------------


class Store:
    """What Overviews needs of a store: overviews, counted, failing when told."""

    def __init__(self) -> None:
        self.reads = 0
        self.failure: StoreUnavailable | None = None

    def overview(self, recent: int, biggest: int, jobs: int) -> Overview:
        self.reads += 1
        if self.failure is not None:
            raise self.failure
        return Overview(self.reads, 0, {}, [], [])


def overviews(clock: Callable[[], float]) -> tuple[Overviews, Store]:
    store = Store()
    return Overviews(store, clock=clock), store  # type: ignore[arg-type]


async def test_an_overview_is_kept_for_its_max_age_and_read_again_after() -> None:
    clock = FakeClock()
    kept, store = overviews(clock)
    assert (await kept.get()).files == 1
    clock.advance(MAX_AGE - 0.1)
    assert (await kept.get()).files == 1
    clock.advance(0.2)
    assert (await kept.get()).files == 2 and store.reads == 2


async def test_concurrent_askers_share_one_read_and_a_failure_is_not_kept() -> None:
    clock = FakeClock()
    kept, store = overviews(clock)
    got = await asyncio.gather(*(kept.get() for _ in range(10)))
    assert {o.files for o in got} == {1} and store.reads == 1
    clock.advance(MAX_AGE)
    store.failure = StoreUnavailable("redis: down")
    results: list[Any] = await asyncio.gather(
        *(kept.get() for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailable) for r in results) and store.reads == 2
    store.failure = None
    assert (await kept.get()).files == 3  # asked again at once, not after MAX_AGE


# -- the traffic chart and the warm jobs -------------------------------------------------

HOUR = 480_000  # hours since the epoch: 2024-10-03 00:00 UTC
MIB = 1024**2


def test_the_chart_shows_each_hour_of_the_last_day() -> None:
    hourly = {
        HOUR: {"bytes_cache": 3 * MIB, "bytes_upstream": MIB, "file_hit": 3, "file_miss": 1},
        HOUR - 1: {"bytes_cache": MIB, "file_hit": 1},
        HOUR - 10: {"bytes_upstream": 2 * MIB, "page_miss": 2},
        HOUR - CHART_HOURS: {"bytes_cache": 100 * MIB},  # a day before: not shown
    }
    svg = traffic_chart(hourly, HOUR * 3600 + 1800.0)
    hours = re.findall(r"<title>(\d\d):00 UTC: ([^<]*)</title>", svg)
    assert [int(h) for h, _ in hours] == [(h + 1) % 24 for h in range(24)]  # 01:00 .. 00:00
    assert hours[-1][1] == "3.0 MiB from the cache, 1.0 MiB from upstream, hit ratio 75.0%"
    assert hours[-2][1] == "1.0 MiB from the cache, 0 B from upstream, hit ratio 100.0%"
    assert hours[-11][1] == "0 B from the cache, 2.0 MiB from upstream, hit ratio 0.0%"
    assert hours[0][1] == "0 B from the cache, 0 B from upstream, no hits or misses"
    assert ">4.0 MiB</text>" in svg  # the scale: the busiest hour's bytes
    # Bars in proportion (the busiest hour fills the plot); the ratio's line joins the two
    # last hours, and the hour ten before stands alone.
    cache = [float(h) for h in re.findall(r'class="cache" [^>]*height="([\d.]+)"', svg)]
    upstream = [float(h) for h in re.findall(r'class="upstream" [^>]*height="([\d.]+)"', svg)]
    full = cache[-1] + upstream[-1]
    assert full > 100 and (cache[-1], cache[-2]) == (0.75 * full, 0.25 * full)
    assert upstream[-11] == 0.5 * full and sum(cache[:-2]) == 0
    assert svg.count('<polyline class="ratio"') == 1 and svg.count('<circle class="point"') == 1


def test_no_traffic_in_the_last_day_is_said() -> None:
    old = {HOUR - CHART_HOURS: {"bytes_cache": MIB}}
    assert traffic_chart(old, HOUR * 3600.0) == "<p>No traffic in the last 24 hours.</p>"


def test_warm_jobs_are_listed_with_how_they_went() -> None:
    def job(name: str, **fields: Any) -> bytes:
        defaults: dict[str, Any] = {
            "id": name, "source": f"{name}.lock", "format": "uv.lock",
            "narrowing": "every target", "node": "node-1", "created": T0, "updated": T0,
        }  # fmt: skip
        return Report(**(defaults | fields)).encode()

    html = warm_jobs(
        [
            job("running", files=10, cached=3, already=2, done_bytes=5 * MIB),
            job("ended", status="done", files=2, cached=2, finished=T0),
            job("failing", status="done", files=2, cached=1, failed=1, finished=T0),
            job("lost", updated=T0 - LOST_AFTER - 1),
            b"not a report",
        ],
        T0,
    )
    rows = re.findall(r"<tr><td>.*?</tr>", html)
    assert len(rows) == 4
    assert '<a href="/warm/running">running.lock</a>' in rows[0]
    assert "<td >running</td>" not in rows[0] and ">running</td>" in rows[0]
    assert '<td class="n">5/10</td>' in rows[0] and "5.0 MiB" in rows[0]
    assert '<td class="ok" title="">done</td>' in rows[1]
    assert ">done, with failures</td>" in rows[2] and 'class="bad"' in rows[2]
    assert "node-1 stopped running it" in rows[3] and ">lost</td>" in rows[3]
    assert "No warm job yet" in warm_jobs([], T0)
