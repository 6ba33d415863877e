"""One upstream index over HTTP: page fetches (conditional, JSON preferred) and file streams.

Credentials given in an index URL are split off here and sent as basic auth; everything this
module hands to logs, pages or errors uses the redacted URL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from cachepi import __version__
from cachepi.metrics import Metrics
from cachepi.types import Source

log = logging.getLogger(__name__)
T = TypeVar("T")

# Worth asking again: the upstream is overloaded or briefly failing.
_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

# Prefer JSON (parsed faster, carries sizes and upload times), accept HTML from older indexes.
PAGE_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
)


class UpstreamError(Exception):
    """The upstream could not give an answer; the message is one line, safe to show, and
    `status` the gateway status to answer with (502, 503 when offline, 504 on timeouts)."""

    def __init__(self, message: str, status: int = 502, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class UpstreamNotFound(Exception):
    """The upstream answered 404 (or 410): it does not have this."""


def redact(url: str) -> str:
    """`url` without user:password, for anything a person or another program can see."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


@dataclass(frozen=True)
class PageResponse:
    """What an upstream said about a page: 200 with a body, or 304 (body None)."""

    status: int
    body: bytes | None
    content_type: str
    etag: str | None
    last_modified: str | None
    url: str  # final URL after redirects, redacted, for resolving relative links


@dataclass
class Health:
    """How the latest requests to an upstream went, for /health and the home page."""

    last_success: float | None = None
    last_failure: float | None = None
    last_error: str | None = None
    _clock: Callable[[], float] = field(default=time.time, repr=False)

    @property
    def healthy(self) -> bool:
        """Whether the latest request got an answer (a 404 is an answer)."""
        return self.last_failure is None or (self.last_success or 0) >= self.last_failure

    def succeeded(self) -> None:
        self.last_success = self._clock()

    def failed(self, error: str) -> None:
        self.last_failure = self._clock()
        self.last_error = error


class Index(Protocol):
    """What the caches need of an upstream index. `Upstream` speaks HTTP; an in-process
    test double implements the same."""

    url: str  # redacted: safe to show and store
    name: str
    ttl: int
    min_release_age: int | None
    health: Health

    async def fetch_page(
        self, path: str, etag: str | None = None, last_modified: str | None = None
    ) -> PageResponse:
        """GET `path` (relative to the index URL) conditionally: a 200 or a 304. Raises
        UpstreamNotFound on 404/410 and UpstreamError on anything else unusable."""

    def open_file(self, url: str) -> Source:
        """A distribution file's bytes exactly as stored upstream. Every failure, also
        while reading the body, is an UpstreamError (or UpstreamNotFound)."""

    async def retrying(
        self, attempt: Callable[[], Awaitable[T]], safe: Callable[[], bool] = lambda: True
    ) -> T:
        """`attempt()`, again after a pause when it fails in a way worth retrying, as long
        as `safe()` (e.g. no byte went to a client yet)."""


class Upstream:
    """An upstream index over HTTP."""

    def __init__(
        self,
        url: str,
        ttl: int,
        session: aiohttp.ClientSession,
        *,
        name: str,
        min_release_age: int | None = None,
        offline: bool = False,
        file_hosts: frozenset[str] | None = None,
        retry_delays: tuple[float, ...] = (0.25, 1.0),
        metrics: Metrics | None = None,
    ) -> None:
        parts = urlsplit(url)
        self._metrics = metrics
        self.url = redact(url)
        self.ttl = ttl
        self.name = name  # from the settings: never the URL, which may hold credentials
        self.min_release_age = min_release_age
        self.health = Health()
        self._auth = (
            _basic_auth(unquote(parts.username), unquote(parts.password or ""))
            if parts.username is not None
            else None
        )
        self._session = session
        self._offline = offline
        self._file_hosts = file_hosts
        self._retry_delays = retry_delays

    def __repr__(self) -> str:
        return f"Upstream({self.url!r}, ttl={self.ttl})"

    def __str__(self) -> str:
        return self.name

    def _headers_for(self, url: str, headers: dict[str, str]) -> dict[str, str]:
        # Credentials go only to the index's own origin, never to a file host elsewhere.
        if self._auth is None or _origin(url) != _origin(self.url):
            return headers
        return headers | {"Authorization": self._auth}

    async def fetch_page(
        self, path: str, etag: str | None = None, last_modified: str | None = None
    ) -> PageResponse:
        """GET `path` (relative to the index URL) conditionally, retrying passing failures.

        Raises UpstreamNotFound on 404/410 and UpstreamError on anything else unusable.
        """
        url = self.url + path
        headers = {"Accept": PAGE_ACCEPT}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified

        async def attempt() -> PageResponse:
            try:
                async with self._get(url, headers) as response:
                    body = await response.read() if response.status == 200 else None
                    return PageResponse(
                        status=response.status,
                        body=body,
                        content_type=response.headers.get("Content-Type", ""),
                        etag=response.headers.get("ETag") or etag,
                        last_modified=response.headers.get("Last-Modified") or last_modified,
                        url=redact(str(response.url)),
                    )
            except (aiohttp.ClientError, TimeoutError) as error:
                raise _failure(url, error) from error

        return await self.retrying(attempt)

    async def retrying(
        self, attempt: Callable[[], Awaitable[T]], safe: Callable[[], bool] = lambda: True
    ) -> T:
        """`attempt()`, again after a pause when it fails in a way worth retrying, as long
        as `safe()` (e.g. no byte went to a client yet)."""
        for delay in self._retry_delays:
            try:
                return await attempt()
            except UpstreamError as failure:
                if not (failure.retryable and safe()):
                    raise
                log.info("retrying in %.2f s: %s", delay, failure)
            await asyncio.sleep(delay)
        return await attempt()

    @contextlib.asynccontextmanager
    async def open_file(self, url: str) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        """A streaming GET of a distribution file, bytes exactly as stored upstream: its
        length (if said) and its chunks. Every failure, also while reading the body, is an
        UpstreamError."""
        host = urlsplit(url).hostname or ""
        if self._file_hosts is not None and host not in self._file_hosts:
            raise UpstreamError(f"{redact(url)}: files from {host!r} are not allowed here")
        try:
            # Decoding a Content-Encoding would change the bytes we hash and store.
            headers = {"Accept-Encoding": "identity"}
            async with self._get(url, headers, auto_decompress=False) as response:
                yield response.content_length, response.content.iter_any()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _failure(url, error) from error

    async def head_file(self, url: str) -> int | None:
        """A distribution file's length as a HEAD request to the upstream says it (None: it
        did not say), never its body. Failures as `open_file`'s."""
        host = urlsplit(url).hostname or ""
        if self._file_hosts is not None and host not in self._file_hosts:
            raise UpstreamError(f"{redact(url)}: files from {host!r} are not allowed here")
        if self._offline:
            raise UpstreamError(f"{redact(url)}: offline, and not in the cache", status=503)
        headers = self._headers_for(url, {"Accept-Encoding": "identity"})
        try:
            async with self._session.head(url, headers=headers, allow_redirects=True) as response:
                if response.status in (404, 410):
                    raise UpstreamNotFound(redact(url))
                if response.status != 200:
                    raise UpstreamError(f"{redact(url)}: upstream answered {response.status}")
                return response.content_length
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _failure(url, error) from error

    @contextlib.asynccontextmanager
    async def _get(
        self, url: str, headers: dict[str, str], auto_decompress: bool = True
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A GET whose response is 200 or 304; anything else raises."""
        if self._offline:
            raise UpstreamError(f"{redact(url)}: offline, and not in the cache", status=503)
        started = time.monotonic()
        try:
            async with self._session.get(
                url, headers=self._headers_for(url, headers), auto_decompress=auto_decompress
            ) as response:
                if self._metrics is not None:
                    self._metrics.upstream_seconds.labels(self.name).observe(
                        time.monotonic() - started
                    )
                if response.status in (404, 410):
                    self.health.succeeded()
                    raise UpstreamNotFound(redact(url))
                if response.status not in (200, 304):
                    raise UpstreamError(
                        f"{redact(url)}: upstream answered {response.status}",
                        retryable=response.status in _RETRYABLE_STATUSES,
                    )
                yield response
        except UpstreamError as error:
            self.health.failed(str(error))
            raise
        except (aiohttp.ClientError, TimeoutError) as error:
            self.health.failed(f"{redact(url)}: {describe(error)}")
            raise
        else:
            self.health.succeeded()


def _failure(url: str, error: BaseException) -> UpstreamError:
    """An aiohttp or timeout error as a one-line UpstreamError; all are worth a retry."""
    status = 504 if isinstance(error, TimeoutError) else 502
    return UpstreamError(f"{redact(url)}: {describe(error)}", status=status, retryable=True)


def describe(error: BaseException) -> str:
    """A one-line reason for a client error, without credentials."""
    if isinstance(error, TimeoutError):
        return "upstream timed out"
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect to upstream ({error.os_error.strerror or error.os_error})"
    if isinstance(error, aiohttp.ClientPayloadError):
        return "upstream broke off the transfer"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "upstream closed the connection"
    return f"upstream error ({type(error).__name__})"


def make_session(
    connect_timeout: float, read_timeout: float, verify_ssl: bool, limit: int = 64
) -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=connect_timeout, sock_read=read_timeout
    )
    connector = aiohttp.TCPConnector(limit=limit, ssl=verify_ssl)
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        headers={"User-Agent": f"cachepi/{__version__} aiohttp/{aiohttp.__version__}"},
        trust_env=True,
        # Bigger reads: fewer chunks, each costing a hop to the hashing thread and a wake-up
        # of every reader.
        read_bufsize=1024 * 1024,
    )
