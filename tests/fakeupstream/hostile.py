"""Hostile and broken upstreams, and the internal service they aim at: real HTTP servers on
127.0.0.1 (or ::1) that answer exactly what a test tells them to.

    async with HostileUpstream() as evil, InternalService() as internal:
        evil.project("evil", [("evil-1.0.tar.gz", internal.at("/secret"), None)])
        evil.redirect("/files/x.tar.gz", internal.at("/secret"))
        evil.serve("/simple/bomb/", gzip_bomb(2 * MIB), headers={"Content-Encoding": "gzip"})
        evil.trickle("/simple/slow/", page, every=0.5)   # a byte every half second
        internal.requests                                 # what reached the internal service

Every request is recorded (`requests`: method, path, headers). Nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDictProxy

from .server import JSON_TYPE

MIB = 1024 * 1024
SECRET = b"internal secret: the metadata service's credentials\n"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: CIMultiDictProxy[str]


class _Server:
    """An aiohttp server on `host` (a random port) whose routes the test sets."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.requests: list[Seen] = []
        self._routes: dict[str, Handler] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> _Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[-1][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def at(self, path: str) -> str:
        return self.origin + path

    def count(self, path: str) -> int:
        return sum(1 for seen in self.requests if seen.path == path)

    def route(self, path: str, handler: Handler) -> None:
        self._routes[path] = handler

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Seen(request.method, request.path, request.headers))
        handler = self._routes.get(request.path)
        if handler is None:
            return await self.fallback(request)
        return await handler(request)

    async def fallback(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="not here\n")


class InternalService(_Server):
    """What an upstream page should never reach: answers every GET with SECRET."""

    async def fallback(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=SECRET, content_type="application/octet-stream")


class HostileUpstream(_Server):
    """An index whose every answer the test writes: pages, redirects, bombs, trickles."""

    def __init__(self, host: str = "127.0.0.1", auth: tuple[str, str] | None = None) -> None:
        super().__init__(host)
        self._auth = auth

    @property
    def url(self) -> str:
        return self.origin + "/simple/"

    def url_with_auth(self) -> str:
        assert self._auth is not None
        user, password = self._auth
        return self.url.replace("://", f"://{user}:{password}@", 1)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self._auth).encode()).decode()
            if request.headers.get("Authorization") != expected:
                self.requests.append(Seen(request.method, request.path, request.headers))
                return web.Response(status=401, text="who are you\n")
        return await super()._handle(request)

    def serve(
        self,
        path: str,
        body: bytes,
        content_type: str = JSON_TYPE,
        headers: dict[str, str] | None = None,
        status: int = 200,
    ) -> None:
        """Answer `path` with exactly these bytes and headers (Content-Encoding as given:
        the body is sent as it is)."""

        async def answer(request: web.Request) -> web.StreamResponse:
            return web.Response(
                body=body,
                status=status,
                headers={"Content-Type": content_type, **(headers or {})},
            )

        self.route(path, answer)

    def project(
        self, name: str, files: Sequence[tuple[str, str, str | None]], **extra: object
    ) -> bytes:
        """A PEP 691 page for `name` listing (filename, url, sha256 or None); returns it."""
        entries = [
            {"filename": filename, "url": url, "hashes": {"sha256": sha256} if sha256 else {}}
            for filename, url, sha256 in files
        ]
        body = json.dumps(
            {"meta": {"api-version": "1.1"}, "name": name, "files": entries, **extra}
        ).encode()
        self.serve(f"/simple/{name}/", body)
        return body

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        async def answer(request: web.Request) -> web.StreamResponse:
            return web.Response(status=status, headers={"Location": location})

        self.route(path, answer)

    def trickle(
        self,
        path: str,
        body: bytes,
        every: float,
        content_type: str = JSON_TYPE,
        chunk: int = 1,
    ) -> None:
        """Send the headers at once (with the full Content-Length), then `chunk` bytes of
        the body every `every` seconds: no single read ever times out."""

        async def answer(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": content_type})
            response.content_length = len(body)
            await response.prepare(request)
            for start in range(0, len(body), chunk):
                await response.write(body[start : start + chunk])
                await asyncio.sleep(every)
            await response.write_eof()
            return response

        self.route(path, answer)


# -- bombs -----------------------------------------------------------------------------------


def gzip_bomb(compressed_size: int) -> bytes:
    """About `compressed_size` bytes of gzip that decode to about a thousand times as many
    zero bytes: concatenated members of 16 MiB of zeros each (one member is ~16 KiB)."""
    member = gzip.compress(bytes(16 * MIB), compresslevel=9)
    return member * max(1, compressed_size // len(member))


def zstd_bomb(decoded_size: int) -> bytes:
    """zstd frames that decode to `decoded_size` zero bytes (rounded to 64 MiB frames): a
    few hundred bytes per 64 MiB."""
    import zstandard

    frame = zstandard.ZstdCompressor(level=3).compress(bytes(64 * MIB))
    return frame * max(1, decoded_size // (64 * MIB))


# -- ports that refuse and ports that drop -----------------------------------------------------


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def filtered_port() -> Iterator[int]:
    """A port on 127.0.0.1 where connecting hangs, as behind a firewall that drops: a
    listener with a full accept queue (backlog 0, one connection waiting) ignores SYNs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    filler = socket.socket()
    filler.setblocking(False)
    try:
        filler.connect_ex(("127.0.0.1", port))
        yield port
    finally:
        filler.close()
        listener.close()
