"""`/metrics` for Prometheus, and the count of every request by route and status."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from cachepi.metrics import CONTENT_TYPE, Snapshot
from cachepi.web.keys import FILE_CACHE, INDEX_CACHE, METRICS, SETTINGS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def snapshot(app: web.Application) -> Snapshot:
    files, size = app[FILE_CACHE].usage()
    return Snapshot(
        cache_files=files,
        cache_bytes=size,
        cache_limit=app[SETTINGS].cache_size,
        indexes_up=[(up.name, up.health.healthy) for up in app[INDEX_CACHE].upstreams],
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition(lambda: snapshot(request.app))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def request_counter(routes: dict[Handler, str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware counting requests by route (`routes`: handler -> its name; anything
    else is "other") and status."""

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as error:
            status = error.status
            raise
        finally:
            route = routes.get(request.match_info.route.handler, "other")
            request.app[METRICS].requests.labels(route, str(status)).inc()

    return count
