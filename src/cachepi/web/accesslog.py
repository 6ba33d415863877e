"""Every request, once it is answered: counted for /metrics, and written as one line to
stderr, as text or JSON (or not written).

aiohttp calls this for every response, so counting here costs no middleware (an app with
any middleware pays for the middleware chain on every request). aiohttp's own access logger
goes through `logging` and a format interpreter: about a quarter of the CPU of a cached page
request; these format one f-string (or one msgspec encode).

Lines are buffered, as nginx's `buffer=` does: a write to stderr per request cost more than
the rest of the line (bench/results/notes.md). They go out within `FLUSH_SECONDS` of being
made, at once when `FLUSH_BYTES` are waiting, before any other log record of the process
(so that a process's log stays in order), and at a graceful stop (SIGTERM, SIGINT). A
process killed outright (SIGKILL, or a crash of the interpreter) loses the lines of its last
`FLUSH_SECONDS` at most.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO, cast

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from cachepi.web.keys import BODY_BYTES, CACHE_RESULT, METRICS, ROUTE_NAMES

_encode = msgspec.json.Encoder().encode
FLUSH_SECONDS = 0.25
FLUSH_BYTES = 64 * 1024


class LineBuffer:
    """Lines for one stream, written together: within `FLUSH_SECONDS` of the first one
    waiting, or once `FLUSH_BYTES` wait, or when `flush` is called. Used from one thread,
    the event loop's (`owner`; `flush` from any other once that loop is done)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream  # None: sys.stderr as it is when written to
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self.owner: int | None = None  # the thread that adds lines

    def add(self, line: str) -> None:
        if not self._lines:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on a loop: nothing would flush it later
                self._write(line)
                return
            self._timer = loop.call_later(FLUSH_SECONDS, self.flush)
            self.owner = threading.get_ident()
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write every line waiting."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            text = "".join(self._lines)
            self._lines.clear()
            self._size = 0
            self._write(text)

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: as a print would, say nothing
            pass


# This process's access lines (a forked worker starts with an empty one: nothing is ever
# waiting at a fork, which the supervisor does before serving).
LINES = LineBuffer()
atexit.register(LINES.flush)


class _FlushFirst(logging.Filter):
    """Flushes the access lines before a log record of their thread is written, keeping
    them in order (a record of another thread has no order with them anyway)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if LINES.owner == threading.get_ident():
            LINES.flush()
        return True


def keep_log_order() -> None:
    """Have the root logger's handlers write the waiting access lines before each record."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _FlushFirst) for f in handler.filters):
            handler.addFilter(_FlushFirst())


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
        LINES.add(
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
        LINES.add(line.decode() + "\n")


_LOGS: dict[str, type[CountingLog]] = {
    "text": AccessLog,
    "json": JsonAccessLog,
    "off": CountingLog,
}


def access_log_options(kind: str) -> dict[str, Any]:
    """What aiohttp's runners take to log (`kind`: text, json, off) and count requests."""
    return {"access_log": logging.getLogger("cachepi.access"), "access_log_class": _LOGS[kind]}
