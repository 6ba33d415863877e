"""What `cachepi stats`, `purge`, `gc` and `verify` do to a cache, with or without a server
running on it: the same stores and locks the server uses keep them consistent."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachepi.config import Settings
from cachepi.filecache import FileCache
from cachepi.metrics import hit_ratio
from cachepi.pagefiles import PageFiles, open_page_files
from cachepi.store import DATABASE, Stores, open_stores
from cachepi.upstream_pages import delete_missing_pages, forget_pages

# A temp file nobody touched for this long belongs to no running download.
ABANDONED_SECONDS = 3600


class NoCache(Exception):
    """There is no cache at the given directory."""


@contextlib.asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[tuple[Stores, FileCache, PageFiles]]:
    """The cache's stores, its file cache and its rendered pages, as a server opens them
    (without reconciling: one may run)."""
    if settings.storage is None and not (settings.cache_dir / DATABASE).is_file():
        raise NoCache(f"no cache at {settings.cache_dir}")
    stores = open_stores(settings)
    try:
        pages = open_page_files(settings)
        beside = (lambda: pages.usage) if settings.storage is None else (lambda: 0)
        files = FileCache(stores, settings.cache_size, beside=beside)
        await files.open(reconcile=False)
        yield stores, files, pages
    finally:
        stores.close()


async def stats(settings: Settings, top: int = 10) -> dict[str, Any]:
    async with opened(settings) as (stores, _, _):
        overview = stores.metadata.overview(0, top)
    totals = overview.counts

    def total(name: str) -> int:
        return totals.get(name, 0)

    return {
        "files": overview.files,
        "bytes": overview.bytes,
        "limit": settings.cache_size,
        "pages": {key: total(f"page_{key}") for key in ("hit", "miss", "stale")},
        "files_served": {key: total(f"file_{key}") for key in ("hit", "miss")},
        "bytes_served": {key: total(f"bytes_{key}") for key in ("cache", "upstream")},
        "hit_ratio": hit_ratio(totals),
        "top_projects": [
            {"project": project, "files": files, "bytes": size}
            for project, files, size in overview.biggest
        ],
    }


@dataclass(frozen=True)
class Purged:
    pages: int
    files: int
    bytes: int


async def purge(
    settings: Settings, projects: Sequence[str] | None, pages: bool, files: bool
) -> Purged:
    """Remove the pages and/or files of `projects` (normalized; None: of everything)."""
    page_count = file_count = byte_count = 0
    async with opened(settings) as (stores, file_cache, rendered):
        store = stores.metadata
        if pages:
            keys: Sequence[str | None] = [None] if projects is None else projects
            page_count = sum(forget_pages(store, key) for key in keys)
            for key in keys:
                rendered.remove(key)
        if files:
            if projects is None:
                victims = list(store.blobs().items())
            else:
                victims = [
                    (sha256, size)
                    for project in projects
                    for sha256, _, size, _ in store.blobs_of(project)
                ]
            for sha256, size in victims:
                await file_cache.accounting.remove(sha256)
                file_count += 1
                byte_count += size
    return Purged(page_count, file_count, byte_count)


@dataclass(frozen=True)
class Collected:
    temp_files: int
    recorded: int
    forgotten: int
    evicted: int
    missing_pages: int = 0


async def gc(settings: Settings) -> Collected:
    """Remove what unfinished downloads and renderings left behind, make records and stored
    blobs agree, evict down to the cache size (rendered pages down to their share), and
    forget upstream 404s past the negative TTL (unless offline: then they are the
    answer)."""
    async with opened(settings) as (stores, file_cache, pages):
        removed = await stores.locks.remove_abandoned(ABANDONED_SECONDS)
        # Counted (they take of the blobs' room), evicted beyond their own, leftovers gone.
        removed += await asyncio.to_thread(pages.maintain)
        recorded, forgotten, evicted = await file_cache.accounting.match_records()
        missing = 0
        if not settings.offline:
            missing = delete_missing_pages(stores.metadata, time.time() - settings.negative_ttl)
    return Collected(removed, recorded, forgotten, evicted, missing)


@dataclass
class Verified:
    checked: int = 0
    bytes: int = 0
    removed: list[str] = field(default_factory=list)


async def stored_bytes(settings: Settings) -> int:
    """What `verify` will read."""
    async with opened(settings) as (stores, _, _):
        return sum([size async for _, size in stores.blobs.listing()])


async def verify(settings: Settings, progress: Callable[[int], None] = lambda _: None) -> Verified:
    """Re-hash every stored blob (its name is its sha256) and remove those that do not
    match, with their records; the next request downloads them again. `progress(n)` is told
    of every `n` bytes read."""
    report = Verified()
    async with opened(settings) as (stores, file_cache, _):
        async for sha256, _ in stores.blobs.listing():
            blob = await stores.blobs.open(sha256)
            if blob is None:  # evicted meanwhile by a running server
                continue
            digest = hashlib.sha256()
            with contextlib.closing(blob):
                async for chunk in blob.chunks(0, blob.size):
                    digest.update(chunk)
                    progress(len(chunk))
                    report.bytes += len(chunk)
            report.checked += 1
            if digest.hexdigest() != sha256:
                await file_cache.accounting.remove(sha256)
                report.removed.append(sha256)
    return report
