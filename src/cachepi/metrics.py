"""What the proxy counts: Prometheus metrics for `/metrics`, and lifetime totals kept in the
metadata store for the dashboard and `cachepi stats`.

One call records an event in both. With several worker processes, Prometheus values live in
files under PROMETHEUS_MULTIPROC_DIR (set by workers.py) and a scrape sums them; the totals
are added to the store by every worker every few seconds, to the lifetime ones and to those
of the hour they are added in (the dashboard charts the last day).

The counters every request moves (requests, cache results, bytes served) are counted in
the process's memory and added to their Prometheus values by `publish`: a multiprocess
value's increment takes a lock and writes its file, which cost more than the rest of the
counting (bench/results/notes.md). Each process publishes every `PUBLISH_SECONDS` and at a
graceful stop, and the process answering a scrape publishes its own first: a scrape sees
its own process's counts exactly, and the other workers' as of at most `PUBLISH_SECONDS`
ago. A worker killed outright loses what it counted since it last published.
"""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from cachepi.store.protocols import MetadataStore, StoreUnavailable
from cachepi.types import CacheResult

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_SECONDS = 1.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Names of the lifetime totals in the store.
TOTALS = (
    "page_hit", "page_miss", "page_stale", "file_hit", "file_miss",
    "bytes_cache", "bytes_upstream",
)  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    """Values read when scraped rather than counted: they are the store's, whoever wrote."""

    cache_files: int
    cache_bytes: int
    cache_limit: int
    indexes_up: Sequence[tuple[str, bool]]


class _Gauges(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self._snapshot
        yield GaugeMetricFamily("cachepi_cache_files", "Files in the cache", now.cache_files)
        yield GaugeMetricFamily("cachepi_cache_bytes", "Bytes in the cache", now.cache_bytes)
        yield GaugeMetricFamily(
            "cachepi_cache_limit_bytes", "The cache size limit", now.cache_limit
        )
        up = GaugeMetricFamily(
            "cachepi_index_up", "1 if the index's latest request got an answer", labels=["index"]
        )
        for name, healthy in now.indexes_up:
            up.add_metric([name], 1 if healthy else 0)
        yield up


class Metrics:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        if self._multiprocess:
            # Chosen when prometheus_client is imported, which may be before workers.py set
            # the directory: choose again, in this (forked) process.
            values.ValueClass = values.MultiProcessValue()
        # Multiprocess values are collected from their files, not from a registry.
        self._registry = CollectorRegistry()
        into = None if self._multiprocess else self._registry
        self._requests = Counter(
            "cachepi_requests", "Requests answered", ["route", "status"], registry=into
        )
        self._cache = Counter(
            "cachepi_cache", "Pages and files by cache result", ["kind", "result"], registry=into
        )
        self._served = Counter(
            "cachepi_served_bytes", "File bytes sent to clients", ["source"], registry=into
        )
        self.upstream_seconds = Histogram(
            "cachepi_upstream_request_seconds",
            "Time until an upstream's response headers arrived",
            ["index"],
            registry=into,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.download_errors = Counter(
            "cachepi_download_errors", "File downloads that failed", ["index"], registry=into
        )
        self.page_loads = Counter(
            "cachepi_page_loads",
            "Upstream pages read from the store into a process's memory (at its first use,"
            " after another process refreshed or invalidated one, or after memory let it go)",
            registry=into,
        )
        self._background_refreshes = Counter(
            "cachepi_page_background_refreshes",
            "Upstream pages refreshed with no client waiting: ahead of their expiry (trigger"
            " ahead) or answered stale meanwhile (trigger stale); outcome ok, failed (the"
            " upstream: the stale copy stays), error, or deferred (half the page connections"
            " were refreshing already: a later request starts it)",
            ["trigger", "outcome"],
            registry=into,
        )
        self.evictions = Counter("cachepi_evictions", "Files evicted", registry=into)
        self.evicted_bytes = Counter("cachepi_evicted_bytes", "Bytes evicted", registry=into)
        # Summed over the processes alive: a worker that died is forgotten (`forget`).
        self._connections = Gauge(
            "cachepi_client_connections", "Client connections open", registry=into,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self._connections_closed = Counter(
            "cachepi_client_connections_closed",
            "Client connections closed while waiting for a request head: evicted (at the cap,"
            " the longest waiting), refused (at the cap, all others busy), head_timeout,"
            " keepalive_timeout",
            ["reason"],
            registry=into,
        )
        self._unflushed: Tally[str] = Tally()
        # Labelled children by their labels: `labels()` costs more than the increment.
        self._children: dict[tuple[Any, ...], Any] = {}
        self._results: dict[tuple[str, str], tuple[Any, str]] = {}  # -> (child, total's name)
        # Counted here, not yet added to the Prometheus values: amounts by child.
        self._unpublished: dict[Any, float] = {}
        self._request_children: dict[tuple[str, int], Any] = {}

    def _child(self, metric: Counter, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, route: str, status: int) -> None:
        child = self._request_children.get((route, status))
        if child is None:
            child = self._request_children[route, status] = self._child(
                self._requests, route, str(status)
            )
        unpublished = self._unpublished
        unpublished[child] = unpublished.get(child, 0) + 1

    def cache_result(self, kind: str, result: CacheResult) -> None:
        """A page or file was answered from the cache ("hit"), after asking an upstream
        ("miss"), or from a stale copy ("stale")."""
        counted = self._results.get((kind, result))
        if counted is None:
            counted = self._results[kind, result] = (
                self._child(self._cache, kind, result),
                f"{kind}_{result}",
            )
        child = counted[0]
        unpublished = self._unpublished
        unpublished[child] = unpublished.get(child, 0) + 1
        self._unflushed[counted[1]] += 1

    def background_refresh(self, trigger: str, outcome: str) -> None:
        self._child(self._background_refreshes, trigger, outcome).inc()

    def served(self, source: str, count: int) -> None:
        """`count` file bytes went to a client from the "cache" or relayed from "upstream"."""
        child = self._child(self._served, source)
        self._unpublished[child] = self._unpublished.get(child, 0) + count
        self._unflushed[f"bytes_{source}"] += count

    def publish(self) -> None:
        """Add what the hot counters counted since the last call to their Prometheus values
        (in multiprocess mode, this process's files). On the thread that counts."""
        if self._unpublished:
            counted, self._unpublished = self._unpublished, {}
            for child, amount in counted.items():
                child.inc(amount)

    def evicted(self, size: int) -> None:
        self.evictions.inc()
        self.evicted_bytes.inc(size)

    def connections(self, count: int) -> None:
        """This process holds `count` client connections."""
        self._connections.set(count)

    def connection_closed(self, reason: str) -> None:
        self._child(self._connections_closed, reason).inc()

    def flush(self, store: MetadataStore) -> None:
        """Add what was counted since the last flush to the store's totals, for life and
        for this hour."""
        if self._unflushed:
            deltas, self._unflushed = self._unflushed, Tally()
            try:
                store.add_counts(deltas.items(), hour_of(self._clock()))
            except StoreUnavailable:
                self._unflushed.update(deltas)  # added with the next flush
                raise

    def totals(self, stored: Mapping[str, int]) -> dict[str, int]:
        """Lifetime totals: the `stored` ones plus what this process has not flushed yet."""
        counts = dict.fromkeys(TOTALS, 0) | dict(stored)
        for name, value in self._unflushed.items():
            counts[name] = counts.get(name, 0) + value
        return counts

    def exposition(self, snapshot: Snapshot) -> bytes:
        """The Prometheus text format of every metric, summed over worker processes, and
        of `snapshot`, as published (`publish`). Safe on any thread, also on several at
        once."""
        registry = self._registry
        if self._multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        gauges = CollectorRegistry()  # of this call only: calls on other threads have theirs
        gauges.register(_Gauges(snapshot))
        return generate_latest(registry) + generate_latest(gauges)


def forget(pid: int) -> None:
    """Drop the values of a worker process that died from the sums of the live ones."""
    mark_process_dead(pid)


def hour_of(timestamp: float) -> int:
    """The hour since the epoch `timestamp` is in (the store's hourly totals' key)."""
    return int(timestamp // 3600)


def hit_ratio(totals: Mapping[str, int]) -> float | None:
    """Share of page and file answers that needed no upstream request (stale copies
    included: they came from the cache)."""
    hits = totals.get("page_hit", 0) + totals.get("page_stale", 0) + totals.get("file_hit", 0)
    asked = totals.get("page_miss", 0) + totals.get("file_miss", 0)
    return hits / (hits + asked) if hits + asked else None
