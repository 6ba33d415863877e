"""Every request, once it is answered: counted for /metrics, and written as one line to
stderr, as text or JSON (or not written).

aiohttp calls this for every response, so counting here costs no middleware (an app with
any middleware pays for the middleware chain on every request). aiohttp's own access logger
goes through `logging` and a format interpreter: about a quarter of the CPU of a cached page
request; these format one f-string (or one msgspec encode).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, cast

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from cachepi.web.keys import BODY_BYTES, CACHE_RESULT, METRICS, ROUTE_NAMES

_encode = msgspec.json.Encoder().encode


def body_bytes(request: BaseRequest, response: StreamResponse) -> int:
    """Bytes of body sent: what a file response counted (sendfile passes aiohttp by), else
    the declared length (aiohttp's own count includes the headers)."""
    counted: int | None = request.get(BODY_BYTES)
    if counted is not None:
        return counted
    if request.method == "HEAD" or response.status in (204, 304):
        return 0
    return response.content_length or 0


class CountingLog(AbstractAccessLogger):
    """Counts every request by route and status; writes nothing (`--access-log off`)."""

    _second = -1
    _stamp = ""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._pid = os.getpid()  # made in each worker, after the fork

    def log(self, request: BaseRequest, response: StreamResponse, time_taken: float) -> None:
        request = cast(web.Request, request)  # an application server logs only these
        app = request.app
        route = app[ROUTE_NAMES].get(request.match_info.route.handler, "other")
        app[METRICS].request(route, response.status)
        self.write(request, response, time_taken)

    def write(self, request: BaseRequest, response: StreamResponse, time_taken: float) -> None:
        """One line for the request; none here."""

    def _now(self) -> str:
        now = int(time.time())
        if now != self._second:  # one strftime a second, not one a request
            type(self)._second = now
            type(self)._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return self._stamp

    @property
    def enabled(self) -> bool:
        return True


class AccessLog(CountingLog):
    """`<UTC time> <client> pid=<pid> "<request line>" <status> <bytes> <seconds> <cache>`,
    cache being hit, miss, stale or - (not a page or file)."""

    def write(self, request: BaseRequest, response: StreamResponse, time_taken: float) -> None:
        version = request.version
        sys.stderr.write(
            f'{self._now()} {request.remote} pid={self._pid} "{request.method} '
            f'{request.path_qs} HTTP/{version.major}.{version.minor}" {response.status} '
            f"{body_bytes(request, response)} {time_taken:.6f} {request.get(CACHE_RESULT, '-')}\n"
        )


class JsonAccessLog(CountingLog):
    """The same fields as one JSON object per line, for log pipelines."""

    def write(self, request: BaseRequest, response: StreamResponse, time_taken: float) -> None:
        line = _encode(
            {
                "time": self._now(),
                "client": request.remote,
                "pid": self._pid,
                "method": request.method,
                "path": request.path_qs,
                "status": response.status,
                "bytes": body_bytes(request, response),
                "seconds": round(time_taken, 6),
                "cache": request.get(CACHE_RESULT, "-"),
            }
        )
        sys.stderr.write(line.decode() + "\n")


_LOGS: dict[str, type[CountingLog]] = {
    "text": AccessLog,
    "json": JsonAccessLog,
    "off": CountingLog,
}


def access_log_options(kind: str) -> dict[str, Any]:
    """What aiohttp's runners take to log (`kind`: text, json, off) and count requests."""
    return {"access_log": logging.getLogger("cachepi.access"), "access_log_class": _LOGS[kind]}
