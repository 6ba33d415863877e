"""Listening for clients: the socket, TLS, and the book of client connections (connbook.py)
enforced on every connection.

aiohttp's `run_app` holds a connection that sends nothing for its keep-alive timeout and
accepts until descriptors run out; then asyncio stops accepting for a second at a time and
`/health` is unreachable. Here the listening socket is ours: each connection tells the book
when a request head is complete and when its answer is done, and is closed when the book
says so. TLS is started on connections already in the book, so a client that never
finishes its handshake is timed out and evicted like one that never sends a head.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import ssl
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.web_request import BaseRequest

from cachepi.config import Settings
from cachepi.connbook import ACCEPT_BACKLOG, Book, Limits, connection_cap
from cachepi.metrics import Metrics
from cachepi.web.accesslog import LINES, access_log_options, keep_log_order
from cachepi.web.keys import METRICS

log = logging.getLogger(__name__)


def raise_descriptor_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (processes forked later inherit it):
    service managers often leave it at 1024."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _connection_limits(settings: Settings) -> Limits:
    """This process's limits: the cap from its descriptor limit, lowered by the setting."""
    descriptors, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = connection_cap(descriptors, settings.upstream_connections)
    if settings.client_connections is not None:
        cap = min(cap, settings.client_connections)
    return Limits(settings.head_timeout, settings.keepalive_timeout, cap)


class _Sheddable(Hashable, Protocol):
    def shed(self) -> None:
        """Close now (what is still to be sent of an answer may go out first)."""


class _Guard:
    """A worker's book, enforced: closes the connections it says to, and counts."""

    def __init__(self, book: Book[_Sheddable], metrics: Metrics) -> None:
        self.book = book
        self._metrics = metrics
        self._now = asyncio.get_running_loop().time

    def opened(self, conn: _Sheddable, busy: bool) -> None:
        over = self.book.opened(conn, self._now(), busy)
        if over is not None:
            self._shed(*over)
        self._metrics.connections(len(self.book))

    def received(self, conn: _Sheddable, busy: bool) -> None:
        self.book.received(conn, self._now(), busy)

    def answered(self, conn: _Sheddable) -> None:
        self.book.answered(conn, self._now())

    def closed(self, conn: _Sheddable) -> None:
        self.book.closed(conn)
        self._metrics.connections(len(self.book))

    async def sweep(self) -> None:
        """Close connections past their deadlines, at most a quarter of the shortest
        timeout late."""
        limits = self.book.limits
        while True:
            await asyncio.sleep(min(limits.head_timeout, limits.keepalive_timeout) / 4)
            for conn, reason in self.book.expired(self._now()):
                self._shed(conn, reason)

    def _shed(self, conn: _Sheddable, reason: str) -> None:
        conn.shed()  # its connection_lost follows, and `closed`, which updates the gauge
        self._metrics.connection_closed(reason)


class _Handler(web.RequestHandler):
    """aiohttp's protocol for one connection, telling the guard when a request head is in
    and when its answer is done."""

    __slots__ = ("_answered", "_grace", "_guard", "_wire")

    def __init__(self, guard: _Guard, grace: float, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._grace = grace  # how long the tail of an answer may take to go out, when shed
        self._answered = 0
        self._wire: asyncio.Transport | None = None  # the socket's transport, under any TLS

    def _busy(self) -> bool:
        # aiohttp counts every request head it has parsed, pipelined ones too.
        return self._request_count > self._answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._wire is None:
            assert isinstance(transport, asyncio.Transport)
            self._wire = transport
        super().connection_made(transport)
        # Over TLS a head may have come with the handshake's end, before this call.
        self._guard.opened(self, self._busy())

    def secured(self, wire: asyncio.Transport, tls: asyncio.Transport) -> None:
        """Its TLS handshake is done: it speaks through `tls`, over the socket's `wire`."""
        self._wire = wire
        self.connection_made(tls)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._guard.received(self, self._busy())

    def log_access(
        self, request: BaseRequest, response: web.StreamResponse, time: float | None
    ) -> None:
        super().log_access(request, response, time)  # aiohttp calls this once it is sent
        self._answered += 1
        if not self._busy():
            self._guard.answered(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.closed(self)
        super().connection_lost(exc)

    def shed(self) -> None:
        transport, wire = self.transport, self._wire
        if transport is None or wire is None:
            return
        if transport.get_write_buffer_size() or wire.get_write_buffer_size():
            # The tail of its last answer has yet to go out: let it, for a while.
            transport.close()
            asyncio.get_running_loop().call_later(self._grace, transport.abort)
        else:
            # All sent: close at once. A TLS close would wait for the client's goodbye,
            # which a silent one never sends, holding the descriptor meanwhile.
            transport.abort()


class _Handshake(asyncio.Protocol):
    """A TLS connection until its handshake is done, in the book meanwhile; then its
    handler's."""

    def __init__(self, guard: _Guard, handler: _Handler, context: ssl.SSLContext) -> None:
        self._guard = guard
        self._handler = handler
        self._context = context
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.pause_reading()  # the ClientHello is for the TLS layer start_tls adds
        self._task = asyncio.create_task(self._handshake(transport))
        self._guard.opened(self, busy=False)

    async def _handshake(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            secured = await loop.start_tls(
                transport, self._handler, self._context, server_side=True
            )
        except OSError:  # failed, timed out, or cut off (SSLError is an OSError)
            return
        finally:
            self._guard.closed(self)
        if secured is not None:  # None: lost as soon as it was secured
            self._handler.secured(transport, secured)

    def connection_lost(self, exc: BaseException | None) -> None:
        # Only while the handshake has not taken the transport over: after a shed.
        self._guard.closed(self)

    def shed(self) -> None:
        assert self._transport is not None and self._task is not None
        self._task.cancel()
        self._transport.abort()


def serve(
    app: web.Application,
    settings: Settings,
    *,
    tls: ssl.SSLContext | None,
    reuse_port: bool,
    listening: Callable[[], None],
) -> None:
    """Serve `app` until SIGTERM or SIGINT; `listening` is called once the socket listens."""
    asyncio.run(_serve(app, settings, tls, reuse_port, listening))


async def _serve(
    app: web.Application,
    settings: Settings,
    tls: ssl.SSLContext | None,
    reuse_port: bool,
    listening: Callable[[], None],
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    limits = _connection_limits(settings)
    log.info(
        "worker %d: at most %d client connections, request heads within %g s, idle"
        " keep-alive %g s",
        os.getpid(), limits.cap, limits.head_timeout, limits.keepalive_timeout,
    )  # fmt: skip
    keep_log_order()
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        assert runner.server is not None
        guard = _Guard(Book(limits), app[METRICS])
        protocol = _protocol_factory(runner.server, guard, tls, settings)
        server = await loop.create_server(
            protocol, settings.host, settings.port, reuse_port=reuse_port or None,
            backlog=ACCEPT_BACKLOG,
        )  # fmt: skip
        listening()
        sweeping = asyncio.create_task(guard.sweep())
        await stop.wait()
        server.close()
        sweeping.cancel()
    finally:
        try:
            await runner.cleanup()
        finally:
            LINES.flush()  # the access lines of the requests answered until now


def _protocol_factory(
    server: web.Server, guard: _Guard, tls: ssl.SSLContext | None, settings: Settings
) -> Callable[[], asyncio.Protocol]:
    """What asyncio calls for each accepted connection."""
    limits = guard.book.limits
    options: dict[str, Any] = {
        "loop": asyncio.get_running_loop(),
        # aiohttp's own timer closes a connection waiting for a head this long after it
        # connected or was answered: never before the book would.
        "keepalive_timeout": limits.keepalive_timeout + limits.head_timeout,
        **access_log_options(settings.access_log),
    }

    def protocol() -> asyncio.Protocol:
        handler = _Handler(guard, settings.client_timeout, server, **options)
        return handler if tls is None else _Handshake(guard, handler, tls)

    return protocol
