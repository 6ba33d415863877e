"""The aiohttp application: routes, and the components it owns for its lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from cachepi.combine import Combine
from cachepi.config import Settings
from cachepi.filecache import DownloadLimits, FileCache
from cachepi.filecache.range_support import RangeSupport
from cachepi.filecache.wheel_metadata import WheelMetadata
from cachepi.index import IndexCache
from cachepi.malloc import give_back_big_blocks
from cachepi.metrics import PUBLISH_SECONDS, Metrics
from cachepi.overview import Overviews
from cachepi.pagefiles import PageFiles, open_page_files, pages_dir
from cachepi.reach import Reach
from cachepi.rendered import RenderedPages
from cachepi.routing import Router
from cachepi.store import open_stores
from cachepi.store.flock import hold_cache
from cachepi.store.protocols import MetadataStore, StoreUnavailable
from cachepi.upload_times import UploadTimes
from cachepi.upstream import Connections, PageLimits, Upstream
from cachepi.upstream_pages import UpstreamPages
from cachepi.web import admin, auth, dashboard, distfiles, monitoring, pages, warmjobs
from cachepi.web.keys import (
    FILE_CACHE,
    INDEX_CACHE,
    METADATA,
    METRICS,
    OVERVIEWS,
    RANGES,
    RENDERED,
    ROUTE_NAMES,
    SETTINGS,
    STORES,
    UPLOAD_TIME_RECORDS,
    WHEEL_METADATA,
)

log = logging.getLogger(__name__)
_FLUSH_SECONDS = 5.0
# How often each process counts the rendered pages, evicts beyond their room and removes
# leftovers.
_MAINTAIN_SECONDS = 30.0


def create_app(settings: Settings, reconcile: bool = True) -> web.Application:
    """The proxy. `reconcile`: check the cache against the disk at startup, as the only
    process using it (worker processes leave that to their parent, see workers.py)."""
    app = web.Application(client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[ROUTE_NAMES] = {
        pages.project_list: "project_list",
        pages.project_list_without_slash: "project_list",
        pages.project_page: "project_page",
        distfiles.dist_file: "file",
        dashboard.home: "home",
        admin.health: "health",
        monitoring.metrics: "metrics",
        admin.invalidate_list: "admin",
        admin.invalidate_project: "admin",
        admin.invalidate_form: "admin",
        warmjobs.start: "warm",
        warmjobs.progress: "warm",
    }
    for prefix in ("/index", "/simple"):  # /simple/ is an alias many configs use
        # No path matches two of these: in the order a request tries them, most asked first.
        app.router.add_get(prefix + "/{project}/", pages.project_page)
        app.router.add_get(prefix + "/{project}/{filename}", distfiles.dist_file)
        app.router.add_get(prefix + "/", pages.project_list)
        app.router.add_get(prefix + "/{project}", pages.project_page)
        app.router.add_get(prefix, pages.project_list_without_slash)
    app.router.add_get("/", dashboard.home)
    app.router.add_get("/health", admin.health)
    app.router.add_get("/metrics", monitoring.metrics)
    app.router.add_delete("/cache/list", admin.invalidate_list)
    app.router.add_delete("/cache/{project}", admin.invalidate_project)
    app.router.add_post("/cache/invalidate", admin.invalidate_form)
    app.router.add_post("/warm", warmjobs.start)  # its own body cap: warmjobs.BODY_LIMIT
    app.router.add_get("/warm/{job}", warmjobs.progress)
    if settings.htpasswd is not None:
        auth.protect(app, settings.htpasswd)
    app.cleanup_ctx.append(functools.partial(_components, reconcile=reconcile))
    app.cleanup_ctx.append(warmjobs.jobs)  # after the caches it uses, stopped before them
    return app


def reconcile_cache(settings: Settings) -> None:
    """Make the cache's records agree with its disk, before any worker serves from it."""
    stores = open_stores(settings)
    sole = sole_server(settings)
    if sole:
        PageFiles.clear(pages_dir(settings))
    try:
        asyncio.run(FileCache(stores, settings.cache_size).open(sole))
    finally:
        stores.close()


def page_salt(settings: Settings) -> str:
    """What shapes pages besides their upstream contents, for the rendered files' names:
    a server started with other routes or another policy never sends a file rendered by
    the one before."""
    shaping = repr((settings.combine, settings.routes, settings.policy))
    return hashlib.blake2b(shaping.encode(), digest_size=8).hexdigest()


def sole_server(settings: Settings) -> bool:
    """Hold the cache for this server's life; whether it is the cache's only server, which
    alone may reconcile it (remove unfinished downloads, match records to files)."""
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    if hold_cache(settings.cache_dir):
        return True
    log.info("another server uses %s: its unfinished downloads are left to it", settings.cache_dir)
    return False


async def _components(app: web.Application, reconcile: bool) -> AsyncIterator[None]:
    """Open the stores and the upstream session at startup; close them at shutdown."""
    give_back_big_blocks()
    settings = app[SETTINGS]
    metrics = app[METRICS]
    stores = app[STORES] = open_stores(settings)
    metadata = app[METADATA] = stores.metadata
    app[OVERVIEWS] = Overviews(metadata)
    connections = Connections(
        settings.connect_timeout,
        settings.read_timeout,
        settings.verify_ssl,
        limit=settings.upstream_connections,
    )
    upload_times = app[UPLOAD_TIME_RECORDS] = UploadTimes(
        metadata, time.time, settings.upload_times == "last-modified"
    )
    upload_times.load()
    reach = Reach(settings.file_hosts, settings.upstream_private_addresses == "allow")
    page_limits = PageLimits(settings.page_timeout, settings.max_page_bytes)
    upstreams = [
        Upstream(
            up.url,
            up.ttl,
            connections,
            name=up.name,
            min_release_age=up.min_release_age,
            offline=settings.offline,
            reach=reach,
            limits=page_limits,
            metrics=metrics,
            last_modified=upload_times.saw if upload_times.enabled else None,
        )
        for up in settings.upstreams
    ]
    unrouted = tuple(i for i, up in enumerate(settings.upstreams) if not up.explicit)
    memory = settings.page_memory
    pages = UpstreamPages(
        upstreams,
        metadata,
        stores.locks,
        settings.negative_ttl,
        memory=memory // 4,
        offline=settings.offline,
        metrics=metrics,
        stale_while_revalidate=settings.stale_while_revalidate,
        background_limit=max(1, settings.upstream_connections // 2),
    )
    index = app[INDEX_CACHE] = IndexCache(
        pages,
        combine=Combine(settings.combine),
        router=Router(settings.routes, unrouted),
        policy=settings.policy,
        memory=memory // 2,
    )
    download_limits = DownloadLimits(
        settings.downloads_per_index, settings.downloads_per_client, settings.download_wait
    )
    sole = reconcile and sole_server(settings)
    if sole:
        PageFiles.clear(pages_dir(settings))
    files = open_page_files(settings)
    file_cache = FileCache(
        stores,
        settings.cache_size,
        metrics=metrics,
        limits=download_limits,
        # In a cluster the blobs are elsewhere: this node's pages take no room from them.
        beside=(lambda: files.usage) if settings.storage is None else (lambda: 0),
    )
    await file_cache.open(sole)
    file_cache.sweep_periodically()
    app[FILE_CACHE] = file_cache
    ranges = app[RANGES] = RangeSupport(time.time)
    wheel_metadata = app[WHEEL_METADATA] = WheelMetadata(file_cache, stores.locks, metadata, ranges)
    rendered = app[RENDERED] = RenderedPages(
        files,
        page_salt(settings),
        index,
        file_cache.extracted,
        upload_times.known,
        memory // 16,
        memory // 8,
    )
    log.info(
        "serving %s from %s (%s blobs, %s metadata)",
        ", ".join(f"{up.url} ({up.name})" for up in upstreams),
        settings.storage or settings.cache_dir,
        stores.blobs.kind,
        metadata.kind,
    )
    flusher = asyncio.create_task(_flush_totals(metrics, metadata))
    publisher = asyncio.create_task(_publish(metrics))
    maintainer = asyncio.create_task(_maintain_pages(rendered))
    try:
        yield
    finally:
        flusher.cancel()
        publisher.cancel()
        maintainer.cancel()
        await pages.close()  # before the upstream session goes
        await wheel_metadata.close()
        await file_cache.close()
        await connections.close()
        metrics.publish()
        with contextlib.suppress(StoreUnavailable):
            metrics.flush(metadata)
        stores.close()


async def _publish(metrics: Metrics) -> None:
    """Publish this process's counts for other processes' scrapes every second."""
    while True:
        await asyncio.sleep(PUBLISH_SECONDS)
        metrics.publish()


async def _flush_totals(metrics: Metrics, metadata: MetadataStore) -> None:
    """Add this process's traffic totals to the store every few seconds."""
    while True:
        await asyncio.sleep(_FLUSH_SECONDS)
        try:
            metrics.flush(metadata)
        except StoreUnavailable as failure:  # counted again at the next flush
            log.warning("cannot record traffic totals: %s", failure)


async def _maintain_pages(rendered: RenderedPages) -> None:
    """Count the rendered pages, evict beyond their room, remove leftovers: soon after
    the start, then every so often."""
    await asyncio.sleep(2.0)
    while True:
        try:
            if removed := await rendered.maintain():
                log.info("removed %d rendered page files (evicted or left over)", removed)
        except OSError as failure:
            log.warning("cannot look after the rendered pages: %s", failure)
        await asyncio.sleep(_MAINTAIN_SECONDS)
