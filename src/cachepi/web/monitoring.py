"""`/metrics` for Prometheus (requests are counted by accesslog.py)."""

from __future__ import annotations

from aiohttp import web

from cachepi.metrics import CONTENT_TYPE, Snapshot
from cachepi.web.keys import FILE_CACHE, INDEX_CACHE, METRICS, SETTINGS


def snapshot(app: web.Application) -> Snapshot:
    files, size = app[FILE_CACHE].accounting.usage()
    return Snapshot(
        cache_files=files,
        cache_bytes=size,
        cache_limit=app[SETTINGS].cache_size,
        indexes_up=[(up.name, up.health.healthy) for up in app[INDEX_CACHE].upstreams],
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition(lambda: snapshot(request.app))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
