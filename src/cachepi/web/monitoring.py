"""`/metrics` for Prometheus (requests are counted by accesslog.py)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from cachepi.metrics import CONTENT_TYPE, Snapshot
from cachepi.store.protocols import StoreUnavailable
from cachepi.web.keys import INDEX_CACHE, METRICS, OVERVIEWS, SETTINGS


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    try:
        overview = await app[OVERVIEWS].get()
    except StoreUnavailable as error:
        raise web.HTTPServiceUnavailable(text=f"{error}\n") from None
    snapshot = Snapshot(
        cache_files=overview.files,
        cache_bytes=overview.bytes,
        cache_limit=app[SETTINGS].cache_size,
        indexes_up=[(up.name, up.health.healthy) for up in app[INDEX_CACHE].upstreams],
    )
    metrics = app[METRICS]
    metrics.publish()  # this process's counts, exactly; other workers' as they published
    # Every worker's values are read from their files: not on the event loop.
    body = await asyncio.to_thread(metrics.exposition, snapshot)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
