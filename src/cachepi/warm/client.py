"""`cachepi warm LOCK --index-url URL`: the running proxy does the work, as a job
(`POST /warm`); this follows its report until it ends. The files go from the upstream into
the proxy's cache, never through this machine.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from urllib.parse import urljoin

import aiohttp
import msgspec

from cachepi.redact import redact
from cachepi.warm.narrowing import Narrowing
from cachepi.warm.report import Report, decode
from cachepi.web.auth import ADMIN_TOKEN_HEADER

POLL_SECONDS = 0.5
# A proxy running as many jobs as it may answers 503: asked again this often, at most.
_BUSY_ATTEMPTS = 30
# Polls that fail in a row (a worker restarting, a blip) before giving up.
_POLL_FAILURES = 10


class Unusable(Exception):
    """The proxy cannot take the job (none answers, no token, a malformed lock...); the
    message is one line."""


def warm_url(index_url: str) -> str:
    """`POST /warm` beside the index: http://host:5000/index/ -> http://host:5000/warm."""
    return urljoin(index_url.rstrip("/") + "/", "../warm")


def query(source: str, narrowing: Narrowing) -> list[tuple[str, str]]:
    return [
        ("filename", source),
        *(("platform", p) for p in narrowing.platforms),
        *(("python-version", v) for v in narrowing.python_versions),
        *(("implementation", i) for i in narrowing.implementations),
        *([("only-wheels", "1")] if narrowing.only_wheels else []),
    ]


async def warm_remotely(
    index_url: str,
    source: str,
    data: bytes,
    narrowing: Narrowing,
    token: str | None,
    cafile: str | None,
    on_report: Callable[[Report], None],
) -> Report:
    """Have the proxy at `index_url` warm the lock `data` (called `source`); each report as
    it comes to `on_report`, and the last one returned. Raises Unusable."""
    url = warm_url(index_url)
    context = ssl.create_default_context(cafile=cafile) if cafile else True
    headers = {ADMIN_TOKEN_HEADER: token} if token else {}
    timeout = aiohttp.ClientTimeout(total=60, connect=10)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        report = await _start(session, url, data, query(source, narrowing), context)
        failures = 0
        while report.status == "running":
            on_report(report)
            await asyncio.sleep(POLL_SECONDS)
            try:
                async with session.get(f"{url}/{report.id}", ssl=context) as response:
                    if response.status != 200:
                        raise Unusable(f"{response.status}: {(await response.text()).strip()}")
                    report = decode(await response.read())
                failures = 0
            except (aiohttp.ClientError, TimeoutError, Unusable, msgspec.DecodeError) as error:
                failures += 1
                if failures >= _POLL_FAILURES:
                    raise Unusable(f"lost track of warm job {report.id}: {error}") from None
    on_report(report)
    return report


async def _start(
    session: aiohttp.ClientSession,
    url: str,
    data: bytes,
    params: list[tuple[str, str]],
    context: ssl.SSLContext | bool,
) -> Report:
    shown = redact(url)
    for _ in range(_BUSY_ATTEMPTS):
        try:
            async with session.post(url, params=params, data=data, ssl=context) as response:
                text = (await response.text()).strip()
                if response.status == 202:
                    return decode(text.encode())
                if response.status == 503 and "Retry-After" in response.headers:
                    await asyncio.sleep(float(response.headers["Retry-After"]))
                    continue
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Unusable(f"no proxy answers at {shown}: {error}") from None
        except msgspec.DecodeError:
            raise Unusable(f"{shown} answered 202 with no job: is it cachepi?") from None
        if response.status in (401, 403):
            raise Unusable(f"{shown} wants the admin token: set CACHEPI_ADMIN_TOKEN ({text})")
        if response.status in (404, 405):
            raise Unusable(f"{shown} takes no warm jobs: is it cachepi, and this recent?")
        raise Unusable(f"{shown} answered {response.status}: {text}")
    raise Unusable(f"{shown} stayed busy with other warm jobs")
