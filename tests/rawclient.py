"""Clients at the socket level, for what an HTTP library would hide: one slow or stalled
connection read only when the test says, and sockets that connect and send nothing."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time


class RawClient:
    """One HTTP/1.1 connection with a tiny receive buffer, read only when the test says:
    what a stalled or slow client looks like to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # no autotuning
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
        return cls(reader, writer)

    async def send_get(self, path: str) -> None:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await self.writer.drain()

    async def read_head(self) -> int:
        """Read the status line and headers; return the Content-Length."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                return int(value)
        raise AssertionError(head)

    async def drain_until_closed(self, within: float) -> tuple[bool, int]:
        """Read whatever is left; (closed by the server, bytes read)."""
        received = 0
        deadline = time.monotonic() + within
        try:
            while time.monotonic() < deadline:
                data = await asyncio.wait_for(self.reader.read(256 * 1024), 2)
                if not data:
                    return True, received
                received += len(data)
        except (ConnectionResetError, BrokenPipeError):
            return True, received
        except TimeoutError:
            return False, received
        return False, received

    async def read_body(self, length: int, pause: float = 0.0) -> tuple[int, str]:
        """Read `length` bytes of body, `pause` seconds between reads; (bytes read, their
        sha256), fewer bytes if the server closed first."""
        digest = hashlib.sha256()
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while received < length:
                data = await self.reader.read(min(64 * 1024, length - received))
                if not data:
                    break
                digest.update(data)
                received += len(data)
                await asyncio.sleep(pause)
        return received, digest.hexdigest()

    async def wait_closed(self, within: float) -> bool:
        """Read (and drop) whatever comes until the server closes: whether it did in time."""
        try:
            async with asyncio.timeout(within):
                while await self.reader.read(64 * 1024):
                    pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.writer.transport.abort()


async def open_silent(port: int, count: int) -> list[socket.socket]:
    """`count` connections to 127.0.0.1:`port` that will never send a byte."""
    loop = asyncio.get_running_loop()
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            opened.append(sock)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        close_all(opened)
        raise
    return opened


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (an end of stream or a reset waits)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


async def closed_by_server_within(sockets: list[socket.socket], count: int, within: float) -> int:
    """How many of `sockets` the server has closed, once at least `count` (TimeoutError if
    not within `within` seconds): a server may be a few loop turns from the last."""
    async with asyncio.timeout(within):
        while (closed := sum(map(closed_by_server, sockets))) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return closed


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
