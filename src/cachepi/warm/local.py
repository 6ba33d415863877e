"""`cachepi warm --cache-dir DIR`: warming a cache directory with no server running, or
beside one (the stores take several processes). The proxy's own components do the work:
the app is set up in this process, and listens on 127.0.0.1 only if pip needs it (plain
requirements are resolved by pip through it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from cachepi.config import Settings
from cachepi.warm.jobs import Jobs
from cachepi.warm.lockfiles import Lock
from cachepi.warm.narrowing import Narrowing
from cachepi.warm.report import Report
from cachepi.web.app import create_app
from cachepi.web.warmjobs import JOBS

_SHOW_SECONDS = 0.2


@dataclasses.dataclass(frozen=True)
class LocalProxy:
    jobs: Jobs
    index_url: str | None  # where it listens, when asked to


@contextlib.asynccontextmanager
async def local_proxy(settings: Settings, listen: bool) -> AsyncIterator[LocalProxy]:
    """The proxy on `settings`' cache for this command's life; with `listen`, on a free
    port of 127.0.0.1 (no password file: only this command knows the port)."""
    settings = dataclasses.replace(settings, htpasswd=None)
    # Not reconciled: a server may be using the cache, and its downloads are its own.
    runner = web.AppRunner(create_app(settings, reconcile=False), access_log=None)
    await runner.setup()
    try:
        index_url = None
        if listen:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            index_url = f"http://127.0.0.1:{runner.addresses[0][1]}/index/"
        yield LocalProxy(runner.app[JOBS], index_url)
    finally:
        await runner.cleanup()


async def warm_locally(
    jobs: Jobs, lock: Lock, narrowing: Narrowing, source: str, on_report: Callable[[Report], None]
) -> Report:
    """Warm what `lock` names as a job of this process; its report to `on_report` while it
    runs, and at the end."""
    report = jobs.start(lock, narrowing, source)
    ended = asyncio.create_task(jobs.wait(report.id))
    while not ended.done():
        on_report(report)
        await asyncio.wait([ended], timeout=_SHOW_SECONDS)
    on_report(report)
    return report
