"""Run cachepi in the test's event loop, on a real socket on 127.0.0.1.

Every request the proxy answers is recorded (method, path, status, request headers), so tests
can assert what clients asked of the proxy, as the fake upstream does for the upstream side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from cachepi.config import IndexSettings, Settings
from cachepi.web.accesslog import access_log_options
from cachepi.web.app import create_app


def settings_for(cache_dir: Path, *upstreams: tuple[str, int], **options: Any) -> Settings:
    """Settings for a test proxy: the given (url, ttl) upstreams, a free port (or `port`)."""
    return Settings(
        upstreams=tuple(IndexSettings(url, ttl) for url, ttl in upstreams),
        cache_dir=cache_dir,
        cache_size=options.pop("cache_size", 1024**3),
        port=options.pop("port", 0),
        **options,
    )


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request the proxy answered."""

    method: str
    path: str
    query: str
    status: int
    headers: CIMultiDictProxy[str]


@dataclasses.dataclass
class RunningProxy:
    settings: Settings
    runner: web.AppRunner
    port: int
    seen: list[Seen]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def index_url(self) -> str:
        return f"{self.url}/index/"

    @property
    def app(self) -> web.Application:
        return self.runner.app

    def statuses(self, path_prefix: str = "/index/") -> list[int]:
        return [s.status for s in self.seen if s.path.startswith(path_prefix)]

    async def stop(self) -> None:
        await self.runner.cleanup()


def _recorder(seen: list[Seen]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as error:
            seen.append(Seen(request.method, request.path, request.query_string, error.status,
                             request.headers))  # fmt: skip
            raise
        seen.append(Seen(request.method, request.path, request.query_string, response.status,
                         request.headers))  # fmt: skip
        return response

    return record


async def start_proxy(settings: Settings, reconcile: bool = True) -> RunningProxy:
    """`reconcile=False`: take the cache's records as they are (files need not exist)."""
    app = create_app(settings, reconcile)
    seen: list[Seen] = []
    app.middlewares.append(_recorder(seen))
    # Requests are counted (for /metrics) as a server counts them; no log lines.
    runner = web.AppRunner(app, shutdown_timeout=0.5, **access_log_options("off"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.port)
    await site.start()
    port = runner.addresses[0][1]
    return RunningProxy(settings, runner, port, seen)
