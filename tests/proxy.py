"""Run cachepi in the test's event loop, on a real socket on 127.0.0.1."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from aiohttp import web

from cachepi.config import Settings, Upstream
from cachepi.web.app import create_app


def settings_for(cache_dir: Path, *upstreams: tuple[str, int], **options: Any) -> Settings:
    """Settings for a test proxy: the given (url, ttl) upstreams, a free port."""
    return Settings(
        upstreams=tuple(Upstream(url, ttl) for url, ttl in upstreams),
        cache_dir=cache_dir,
        cache_size=options.pop("cache_size", 1024**3),
        port=0,
        **options,
    )


@dataclasses.dataclass
class RunningProxy:
    settings: Settings
    runner: web.AppRunner
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def index_url(self) -> str:
        return f"{self.url}/index/"

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_proxy(settings: Settings) -> RunningProxy:
    runner = web.AppRunner(create_app(settings), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.port)
    await site.start()
    port = runner.addresses[0][1]
    return RunningProxy(settings, runner, port)
