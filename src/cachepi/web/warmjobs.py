"""Warm jobs over HTTP: `POST /warm` with a lock file as the body starts one (with the admin
token, when one is set) and answers 202 with its URL; `GET /warm/{id}` reports its progress
as JSON, from any worker or node (warm/jobs.py keeps reports in the metadata store).

The query narrows the targets and names the file: `?filename=uv.lock&platform=...&
python-version=...&implementation=...&only-wheels=1`. Bodies may be up to BODY_LIMIT, this
route's own cap (the app's is much smaller).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiohttp import web
from multidict import MultiMapping

from cachepi.store.protocols import StoreUnavailable
from cachepi.warm.jobs import Jobs, TooMany
from cachepi.warm.lockfiles import Format, LockError, decode, read_lock
from cachepi.warm.narrowing import Narrowing, NarrowingError
from cachepi.warm.report import Report
from cachepi.web.auth import require_admin
from cachepi.web.keys import FILE_CACHE, INDEX_CACHE, METADATA, SETTINGS

BODY_LIMIT = 16 * 1024 * 1024  # a lock of thousands of packages is a few MiB
JOBS = web.AppKey("warm_jobs", Jobs)
_RETRY_SECONDS = 10
# A report changes every second while its job runs: no cache in front may keep one.
_NOT_KEPT = {"Cache-Control": "no-store"}
_JOB_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


async def jobs(app: web.Application) -> AsyncIterator[None]:
    """The app's jobs, for its life (after the caches are open: see app.py)."""
    settings = app[SETTINGS]
    running = app[JOBS] = Jobs(app[INDEX_CACHE], app[FILE_CACHE], app[METADATA], settings.node_id)
    yield
    await running.close()


def narrowing(query: MultiMapping[str]) -> Narrowing:
    """The targets a request's query narrows a lock to. Raises NarrowingError."""
    only_wheels = query.get("only-wheels", "0").lower()
    if only_wheels not in ("0", "1", "true", "false", ""):
        raise NarrowingError(f"only-wheels={only_wheels!r}: give 1 or 0")
    return Narrowing(
        tuple(query.getall("platform", ())),
        tuple(query.getall("python-version", ())),
        tuple(query.getall("implementation", ())),
        only_wheels in ("1", "true", ""),
    )


async def start(request: web.Request) -> web.Response:
    require_admin(request)
    source = request.query.get("filename", "body").rpartition("/")[2][:200] or "body"
    try:
        narrowed = narrowing(request.query)
    except NarrowingError as error:
        raise web.HTTPBadRequest(text=f"{error}\n") from None
    if request.content_length is not None and request.content_length > BODY_LIMIT:
        raise web.HTTPRequestEntityTooLarge(BODY_LIMIT, request.content_length)
    data = await request.clone(client_max_size=BODY_LIMIT).read()
    try:
        lock = read_lock(source, decode(source, data))
    except LockError as error:
        raise web.HTTPBadRequest(text=f"{error}\n") from None
    if lock.format is Format.REQUIREMENTS:
        raise web.HTTPBadRequest(
            text=f"{source}: requirements without --hash name projects, not files: lock them"
            " (uv pip compile --generate-hashes), or warm them with `cachepi warm` (pip)\n"
        )
    try:
        report = request.app[JOBS].start(lock, narrowed, source)
    except TooMany as busy:
        raise web.HTTPServiceUnavailable(
            text=f"{busy}\n", headers={"Retry-After": str(_RETRY_SECONDS)}
        ) from None
    except StoreUnavailable as error:
        raise web.HTTPServiceUnavailable(text=f"cannot start a job now: {error}\n") from None
    url = str(request.url.with_path(f"/warm/{report.id}").with_query(None))
    headers = {"Location": url, **_NOT_KEPT}
    return web.json_response(_shown(report, url), status=202, headers=headers)


async def progress(request: web.Request) -> web.Response:
    job_id = request.match_info["job"]
    if not set(job_id) <= _JOB_ID_CHARS or len(job_id) > 64:
        raise web.HTTPNotFound(text="no such warm job\n")
    try:
        report = request.app[JOBS].find(job_id)
    except StoreUnavailable as error:
        raise web.HTTPServiceUnavailable(text=f"{error}\n") from None
    if report is None:
        raise web.HTTPNotFound(text="no such warm job (or one forgotten: the latest are kept)\n")
    return web.json_response(_shown(report, str(request.url.with_query(None))), headers=_NOT_KEPT)


def _shown(report: Report, url: str) -> dict[str, Any]:
    shown: dict[str, Any] = msgspec.to_builtins(report)
    return {"url": url, **shown, "done_files": report.done_files}
