"""Sending a response body: a file with sendfile (a stored blob, a rendered page), each
piece under the client's deadline, counting what went out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import BinaryIO

from aiohttp import web

# sendfile goes out in pieces (see `sendfile`), between these sizes; a client slower than
# _SLOWEST_CLIENT bytes a second over a whole client_timeout is disconnected.
_SLOWEST_CLIENT = 64 * 1024
_MIN_PIECE = 64 * 1024
MAX_PIECE = 16 * 1024 * 1024
log = logging.getLogger(__name__)


class Sent:
    """Body bytes that went out: only what the transport took, also when the transfer ended
    early (the client hung up, or the download failed and the connection was cut)."""

    def __init__(self) -> None:
        self.count = 0


# Sends the body bytes [start, stop) of a prepared response, counting them in Sent.
BodySender = Callable[[web.Request, web.StreamResponse, int, int | None, Sent], Awaitable[None]]


def sendfile(file: BinaryIO, size: int, patience: float) -> BodySender:
    """The bytes of `file` (`size` of them), on this machine, with sendfile."""

    async def send(
        request: web.Request, response: web.StreamResponse, start: int, stop: int | None,
        sent: Sent,
    ) -> None:  # fmt: skip
        end = size if stop is None else stop
        await send_span(request, file, start, end - start, sent, patience)
        await response.write_eof()

    return send


def from_memory(body: bytes, patience: float) -> BodySender:
    """The bytes of `body`, a piece at a time as the client takes them, each under the
    client's deadline: written at once, a big body would wait whole in the connection's
    buffer, a copy for each client slower than the proxy (a page of 20 MB, 20 MB each)."""

    async def send(
        request: web.Request, response: web.StreamResponse, start: int, stop: int | None,
        sent: Sent,
    ) -> None:  # fmt: skip
        view = memoryview(body)[start:stop]
        for offset in range(0, len(view), _MIN_PIECE):
            piece = view[offset : offset + _MIN_PIECE]
            async with client_deadline(request, patience):
                await response.write(piece)  # waits until the connection's buffer drains
            sent.count += len(piece)
        await response.write_eof()

    return send


async def send_span(
    request: web.Request,
    file: BinaryIO,
    offset: int,
    size: int,
    sent: Sent,
    patience: float,
    fallback: bool = True,
) -> None:
    """`size` bytes of `file` from `offset` with sendfile: what the socket takes at once,
    then in pieces, each with the client's deadline, so that what a client reading at the
    slowest rate we wait for gets in that time. A stalled client is let go, a slow one is
    not. Bytes that cannot go out (with `fallback` False, a socket sendfile does not work
    on: its fallback reads at the file's position, which other readers share) or a file
    that ends short cut the connection off."""
    transport = request.transport
    if transport is None:  # the client is gone
        raise ConnectionResetError("the client is gone")
    loop = asyncio.get_running_loop()
    piece = int(min(max(_SLOWEST_CLIENT * patience, _MIN_PIECE), MAX_PIECE))
    fd = file.fileno()
    end = offset + size
    at_once = _at_once(transport, fd, offset, size)
    sent.count += at_once
    for start in range(offset + at_once, end, piece):
        # sendfile leaves the file's position past what it sent, also when it fails.
        os.lseek(fd, start, os.SEEK_SET)
        count = min(piece, end - start)
        try:
            async with client_deadline(request, patience):
                done = await loop.sendfile(transport, file, start, count, fallback=fallback)
        except asyncio.SendfileNotAvailableError as error:
            cut_off(request)
            raise ConnectionResetError(f"sendfile failed: {error}") from error
        except BaseException:
            # Only what the transport took (as far as the file's position tells).
            sent.count += min(max(0, os.lseek(fd, 0, os.SEEK_CUR) - start), count)
            raise
        sent.count += done
        if done < count:  # the file ended short of what it should hold
            cut_off(request)
            raise ConnectionResetError(f"{done} of {count} bytes of the file sent")


def cut_off(request: web.Request) -> None:
    """End the connection short of the response: the client must not take it as done."""
    if request.transport is not None:
        request.transport.close()


@contextlib.asynccontextmanager
async def client_deadline(request: web.Request, patience: float) -> AsyncIterator[None]:
    """Drop the connection of a client that takes more than `patience` seconds to accept
    what is being sent: a stalled client must not hold a file and a connection forever."""
    try:
        async with asyncio.timeout(patience):
            yield
    except TimeoutError:
        log.info("%s stopped reading %s: disconnected", request.remote, request.path)
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("client stalled") from None


def _at_once(transport: asyncio.BaseTransport, fd: int, offset: int, count: int) -> int:
    """Send what the socket takes of the file now, when the transport has nothing waiting
    to go before it (the headers went): a page, usually all of it, without the event loop's
    rounds that loop.sendfile takes, which cost more than the sending itself (its CPU per
    request is half again as much: bench/results/notes.md). Returns the bytes sent. The
    headers went in a packet of their own: corking them with the body (TCP_CORK, nginx's
    tcp_nopush) made fewer packets but cost the server more CPU per page (notes.md)."""
    sock = transport.get_extra_info("socket")
    if (
        sock is None
        or transport.get_extra_info("sslcontext") is not None  # TLS: loop.sendfile copies
        or not isinstance(transport, asyncio.WriteTransport)
        or transport.get_write_buffer_size()
    ):
        return 0
    try:
        return os.sendfile(sock.fileno(), fd, offset, count)
    except ConnectionError:
        raise
    except OSError:  # full (EAGAIN), or a file sendfile cannot take: loop.sendfile sees to it
        return 0
