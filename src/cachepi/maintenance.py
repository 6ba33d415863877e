"""What `cachepi stats`, `purge` and `gc` do to a cache directory, with or without a
server running on it: the same stores and locks the server uses keep them consistent."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachepi.config import Settings
from cachepi.files import FileCache
from cachepi.index import forget_pages
from cachepi.locks import LockFile
from cachepi.metrics import hit_ratio
from cachepi.store import DATABASE, open_stores
from cachepi.store.metadata import MetadataStore

# A temp file nobody touched for this long belongs to no running download.
ABANDONED_SECONDS = 3600


class NoCache(Exception):
    """There is no cache at the given directory."""


@contextlib.asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[tuple[MetadataStore, FileCache]]:
    """The cache's stores, as a server opens them (without reconciling: one may run)."""
    if settings.storage is None and not (settings.cache_dir / DATABASE).is_file():
        raise NoCache(f"no cache at {settings.cache_dir}")
    stores = open_stores(settings)
    try:
        files = FileCache(stores.blobs, stores.metadata, settings.cache_size, locks=stores.locks)
        await files.open(reconcile=False)
        yield stores.metadata, files  # type: ignore[misc]
    finally:
        stores.close()


async def stats(settings: Settings, top: int = 10) -> dict[str, Any]:
    async with opened(settings) as (store, _):
        count, size = store.blob_stats()
        totals = store.counts()
        biggest = store.biggest_projects(top)

    def total(name: str) -> int:
        return totals.get(name, 0)

    return {
        "files": count,
        "bytes": size,
        "limit": settings.cache_size,
        "pages": {key: total(f"page_{key}") for key in ("hit", "miss", "stale")},
        "files_served": {key: total(f"file_{key}") for key in ("hit", "miss")},
        "bytes_served": {key: total(f"bytes_{key}") for key in ("cache", "upstream")},
        "hit_ratio": hit_ratio(totals),
        "top_projects": [
            {"project": project, "files": files, "bytes": size} for project, files, size in biggest
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
    async with opened(settings) as (store, file_cache):
        if pages:
            keys: Sequence[str | None] = [None] if projects is None else projects
            page_count = sum(forget_pages(store, key) for key in keys)
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
                await file_cache.remove(sha256)
                file_count += 1
                byte_count += size
    return Purged(page_count, file_count, byte_count)


@dataclass(frozen=True)
class Collected:
    temp_files: int
    recorded: int
    forgotten: int
    evicted: int


async def gc(settings: Settings, now: float | None = None) -> Collected:
    """Remove what unfinished downloads left behind, make records and stored blobs agree,
    and evict down to the cache size."""
    now = time.time() if now is None else now
    async with opened(settings) as (_, file_cache):
        removed = _remove_leftovers(settings.cache_dir / "tmp", now)
        removed += await file_cache.remove_stale_pieces(ABANDONED_SECONDS)
        recorded, forgotten, evicted = await file_cache.match_records()
    return Collected(removed, recorded, forgotten, evicted)


def _remove_leftovers(temp_dir: Path, now: float) -> int:
    """Lock files (and their part files) that no process holds, and other temp files
    nobody touched for an hour."""
    removed = 0
    for path in sorted(temp_dir.iterdir()):
        if path.suffix == ".lock":
            lock = LockFile(path)
            if lock.try_acquire():  # nobody downloads it: its part file is a leftover
                part = path.with_suffix(".part")
                if part.exists():
                    part.unlink(missing_ok=True)
                    removed += 1
                lock.release()
                removed += 1
            else:
                lock.close()
        elif now - path.stat().st_mtime > ABANDONED_SECONDS and not (
            path.suffix == ".part" and path.with_suffix(".lock").exists()
        ):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
