"""One upstream index over HTTP: page fetches (conditional, JSON preferred) and file streams.

Credentials given in an index URL are split off here and sent as basic auth; everything this
module hands to logs, pages or errors uses the redacted URL.

Upstreams are not trusted (docs/security.md):
- Where requests go: file URLs and every redirect (followed here, hop by hop) reach the
  index's own origin, the hosts of FILE_HOSTS, or public addresses only, unless private ones
  are allowed (`Reach`). Addresses are checked where the connection is made: the resolver
  drops those not allowed, and the connected peer is checked before a byte is sent, so a
  name that resolves anew (DNS rebinding) or a pooled connection cannot slip through.
- What comes back: a page is read against a byte cap on the wire and decoded (compression
  is undone here, in bounded steps), within one deadline for all its attempts.
- What a client learns: one line per status ("could not be reached", "timed out"); the
  reason (refused, filtered, which address) goes to the log only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import re
import time
import urllib.request
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp

from cachepi import __version__
from cachepi.metrics import Metrics
from cachepi.pagebody import PAGE_ENCODINGS, PageTooBig, read_page
from cachepi.reach import (
    HOP,
    AddressesRefused,
    AddressRefused,
    CheckingConnector,
    CheckingResolver,
    Hop,
    Reach,
    is_public,
)
from cachepi.redact import redact
from cachepi.simple.model import LAST_SERIAL_HEADER
from cachepi.types import Source

log = logging.getLogger(__name__)
T = TypeVar("T")

# Worth asking again: the upstream is overloaded or briefly failing.
_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# What a GET may answer: a page (or a 304 to a conditional one), a file, a file's range (or,
# from a server without ranges, the whole file).
_ANSWERS = frozenset({200, 304})
_RANGE_ANSWERS = frozenset({200, 206})
_CONTENT_RANGE_RE = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18})", re.ASCII)
# Redirects followed per request; each hop is checked like the first URL.
MAX_REDIRECTS = 8

# Prefer JSON (parsed faster, carries sizes and upload times), accept HTML from older indexes.
PAGE_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
)

# What a client is told, one line per status; the reason goes to the log. A refused port and
# a filtered one (a connect timeout) must read the same, or cachepi is a port scanner.
UNREACHABLE = "upstream could not be reached"
TIMED_OUT = "upstream timed out"


class UpstreamError(Exception):
    """The upstream could not give an answer; the message is one line, safe to show, and
    `status` the gateway status to answer with (502, 503 when offline, 504 on timeouts).
    `detail` says why, for the log only."""

    def __init__(
        self, message: str, status: int = 502, retryable: bool = False, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.detail = detail or message


class UpstreamNotFound(Exception):
    """The upstream answered 404 (or 410): it does not have this."""


class NoRanges(Exception):
    """The upstream sent no usable range: the whole file (a server without Range support),
    or a 206 other than the one asked for. The message says which, for the log."""


@dataclass(frozen=True)
class Span:
    """Bytes [start, stop) of a file of `total` bytes, as the upstream sends them."""

    start: int
    stop: int
    total: int
    chunks: AsyncIterator[bytes]


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the scheme's port when none is written; ValueError for a
    URL with no usable host or port."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if not host:
        raise ValueError("no host")
    return scheme, host, parts.port or _DEFAULT_PORTS.get(scheme, 0)


@dataclass(frozen=True)
class PageLimits:
    """How long and how big: a page fetch's deadline (all its attempts), the largest page
    decoded (a compressed page may have a quarter of that on the wire)."""

    page_timeout: float = 10.0
    max_page_bytes: int = 256 * 1024 * 1024


class Connections:
    """The HTTP client every upstream shares: one pool of connections for pages and one for
    files, so downloads (even abandoned ones) never keep a page waiting; no ~/.netrc; HTTP
    proxies from HTTP_PROXY, HTTPS_PROXY and NO_PROXY (credentials only from their URLs).
    Make it inside the event loop; `close()` it at the end."""

    def __init__(
        self,
        connect_timeout: float = 3.1,
        read_timeout: float = 20.0,
        verify_ssl: bool = True,
        limit: int = 64,
    ) -> None:
        self._resolver = CheckingResolver()
        # A file download waits at most a read timeout for a free connection.
        self.pages = self._session(connect_timeout, read_timeout, None, verify_ssl, limit, 2**16)
        self.files = self._session(
            connect_timeout, read_timeout, read_timeout, verify_ssl, limit, 1024 * 1024
        )
        self._proxies = _http_proxies()

    def proxy_for(self, url: str) -> tuple[str | None, aiohttp.BasicAuth | None]:
        """The HTTP proxy (and its credentials) to reach `url` through, if any."""
        if not self._proxies:
            return None, None
        parts = urlsplit(url)
        proxy = self._proxies.get(parts.scheme)
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # untyped
        if proxy is None or bypass(parts.hostname or "", self._proxies):
            return None, None
        proxy_parts = urlsplit(proxy)
        if proxy_parts.username is None:
            return proxy, None
        auth = aiohttp.BasicAuth(unquote(proxy_parts.username), unquote(proxy_parts.password or ""))
        return redact(proxy), auth

    async def close(self) -> None:
        await self.pages.close()
        await self.files.close()
        await self._resolver.close()

    def _session(
        self,
        connect_timeout: float,
        read_timeout: float,
        pool_wait: float | None,
        verify_ssl: bool,
        limit: int,
        read_bufsize: int,
    ) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(
            total=None, connect=pool_wait, sock_connect=connect_timeout, sock_read=read_timeout
        )
        # No DNS cache: every new connection resolves in the context of its own request,
        # which decides what its addresses may be.
        connector = CheckingConnector(
            limit=limit, ssl=verify_ssl, resolver=self._resolver, use_dns_cache=False
        )
        return aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            headers={"User-Agent": f"cachepi/{__version__} aiohttp/{aiohttp.__version__}"},
            trust_env=False,  # it would send ~/.netrc's passwords to whatever a page names
            auto_decompress=False,  # pages are decoded here, within caps; files never are
            read_bufsize=read_bufsize,
        )


def _http_proxies() -> dict[str, str]:
    """http_proxy, https_proxy and no_proxy as urllib reads them from the environment; only
    http:// proxies (aiohttp speaks to no other kind), as aiohttp's own trust_env takes
    them, but without its ~/.netrc."""
    proxies = urllib.request.getproxies_environment()
    usable = {
        scheme: url
        for scheme, url in proxies.items()
        if scheme in ("http", "https", "no") and (scheme == "no" or url.startswith("http://"))
    }
    return usable if set(usable) - {"no"} else {}


# -- the upstream --------------------------------------------------------------------------


@dataclass(frozen=True)
class PageResponse:
    """What an upstream said about a page: 200 with a body, or 304 (body None)."""

    status: int
    body: bytes | None
    content_type: str
    etag: str | None
    last_modified: str | None
    url: str  # final URL after redirects, redacted, for resolving relative links
    last_serial: str | None = None  # X-PyPI-Last-Serial, as sent


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

    async def head_file(self, url: str) -> int | None:
        """A distribution file's length as the upstream says it (None: it did not say),
        never its body. Failures as `open_file`'s."""

    def open_range(
        self, url: str, start: int, stop: int | None
    ) -> AbstractAsyncContextManager[Span]:
        """Bytes [start, stop) of a distribution file, sliced as Python slices (`start` < 0
        and `stop` None: the last -start bytes), as the upstream stores them. Raises NoRanges
        when it sends anything but that range; failures as `open_file`'s."""

    async def retrying(
        self, attempt: Callable[[], Awaitable[T]], safe: Callable[[], bool] = lambda: True
    ) -> T:
        """`attempt()`, again after a pause when it fails in a way worth retrying, as long
        as `safe()` (e.g. no byte went to a client yet)."""


@dataclass
class _Progress:
    """How far a request got: whether any hop got a connection (a deadline that passes
    before that is "could not be reached", like a refused connection)."""

    connected: bool = False


# The default reach: the index's own origin and public addresses only.
_NO_EXCEPTIONS = Reach()


class Upstream:
    """An upstream index over HTTP."""

    def __init__(
        self,
        url: str,
        ttl: int,
        connections: Connections,
        *,
        name: str,
        min_release_age: int | None = None,
        offline: bool = False,
        reach: Reach = _NO_EXCEPTIONS,
        limits: PageLimits = PageLimits(),
        retry_delays: tuple[float, ...] = (0.25, 1.0),
        metrics: Metrics | None = None,
        last_modified: Callable[[str, str], None] | None = None,
    ) -> None:
        """`last_modified(url, value)` is told the Last-Modified header of every answer
        about a file (GET, range or HEAD), `url` as asked."""
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
        self._origin = _origin(self.url)
        self._connections = connections
        self._offline = offline
        self._reach = reach
        self._limits = limits
        self._retry_delays = retry_delays
        self._last_modified = last_modified

    def __repr__(self) -> str:
        return f"Upstream({self.url!r}, ttl={self.ttl})"

    def __str__(self) -> str:
        return self.name

    def _headers_for(self, url: str, headers: dict[str, str]) -> dict[str, str]:
        # Credentials go only to the index's own origin, never to a file host elsewhere.
        if self._auth is None or _origin(url) != self._origin:
            return headers
        return headers | {"Authorization": self._auth}

    async def fetch_page(
        self, path: str, etag: str | None = None, last_modified: str | None = None
    ) -> PageResponse:
        """GET `path` (relative to the index URL) conditionally, retrying passing failures,
        all within the page deadline.

        Raises UpstreamNotFound on 404/410 and UpstreamError on anything else unusable.
        """
        url = self.url + path
        headers = {"Accept": PAGE_ACCEPT, "Accept-Encoding": PAGE_ENCODINGS}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        progress = _Progress()

        async def attempt() -> PageResponse:
            try:
                async with self._get(url, headers, False, progress) as response:
                    body = None
                    if response.status == 200:
                        body = await read_page(response, self._limits.max_page_bytes)
                    return PageResponse(
                        status=response.status,
                        body=body,
                        content_type=response.headers.get("Content-Type", ""),
                        etag=response.headers.get("ETag") or etag,
                        last_modified=response.headers.get("Last-Modified") or last_modified,
                        url=redact(str(response.url)),
                        last_serial=response.headers.get(LAST_SERIAL_HEADER),
                    )
            except PageTooBig as error:
                shown = redact(url)
                raise UpstreamError(f"{shown}: {UNREACHABLE}", detail=f"{shown}: {error}") from None
            except (aiohttp.ClientError, OSError, ValueError, zlib.error) as error:
                raise _failure(url, error, progress) from error

        deadline = self._limits.page_timeout
        try:
            async with asyncio.timeout(deadline):
                return await self.retrying(attempt)
        except TimeoutError:
            failure = _failure(url, TimeoutError(), progress)
            failure.detail = f"{redact(url)}: no answer within the page deadline ({deadline:g} s)"
            log.warning("%s", failure.detail)
            self.health.failed(str(failure))
            raise failure from None

    async def retrying(
        self, attempt: Callable[[], Awaitable[T]], safe: Callable[[], bool] = lambda: True
    ) -> T:
        """`attempt()`, again after a pause when it fails in a way worth retrying, as long
        as `safe()` (e.g. no byte went to a client yet). Each failure's reason is logged."""
        for delay in self._retry_delays:
            try:
                return await attempt()
            except UpstreamError as failure:
                if not (failure.retryable and safe()):
                    log.warning("%s", failure.detail)
                    raise
                log.info("retrying in %.2f s: %s", delay, failure.detail)
            await asyncio.sleep(delay)
        try:
            return await attempt()
        except UpstreamError as failure:
            log.warning("%s", failure.detail)
            raise

    @contextlib.asynccontextmanager
    async def open_file(self, url: str) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        """A streaming GET of a distribution file, bytes exactly as stored upstream: its
        length (if said) and its chunks. Every failure, also while reading the body, is an
        UpstreamError."""
        progress = _Progress()
        try:
            # Decoding a Content-Encoding would change the bytes we hash and store.
            headers = {"Accept-Encoding": "identity"}
            async with self._get(url, headers, True, progress) as response:
                yield response.content_length, _pieces(response.content)
        except (aiohttp.ClientError, OSError, ValueError) as error:
            raise _failure(url, error, progress) from error

    async def head_file(self, url: str) -> int | None:
        """A distribution file's length as a HEAD request to the upstream says it (None: it
        did not say), never its body. Every hop is checked, and failures are told, as for
        `open_file`."""
        progress = _Progress()
        try:
            headers = {"Accept-Encoding": "identity"}
            async with self._get(url, headers, True, progress, method="HEAD") as response:
                length: int | None = response.content_length
                return length
        except (aiohttp.ClientError, OSError, ValueError) as error:
            raise _failure(url, error, progress) from error

    @contextlib.asynccontextmanager
    async def open_range(self, url: str, start: int, stop: int | None) -> AsyncIterator[Span]:
        """Bytes [start, stop) of a distribution file (`start` < 0, `stop` None: the last
        -start bytes), exactly as stored upstream, checked against what was asked. Raises
        NoRanges when the upstream sends anything else (it closes the connection: the rest
        of a whole file is not read); every other failure is an UpstreamError."""
        if start < 0:
            wanted = f"bytes={start}"
        elif stop is None:
            wanted = f"bytes={start}-"
        else:
            wanted = f"bytes={start}-{stop - 1}"
        progress = _Progress()
        headers = {"Accept-Encoding": "identity", "Range": wanted}
        try:
            async with self._get(url, headers, True, progress, answers=_RANGE_ANSWERS) as response:
                span = _span(response, start, stop)
                yield Span(*span, response.content.iter_any())
        except (aiohttp.ClientError, OSError, ValueError) as error:
            raise _failure(url, error, progress) from error

    @contextlib.asynccontextmanager
    async def _get(
        self,
        url: str,
        headers: dict[str, str],
        for_file: bool,
        progress: _Progress,
        method: str = "GET",
        answers: frozenset[int] = _ANSWERS,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A GET whose response is one of `answers`, following redirects, each hop checked;
        anything else raises."""
        if self._offline:
            raise UpstreamError(f"{redact(url)}: offline, and not in the cache", status=503)
        started = time.monotonic()
        try:
            response = await self._follow(url, headers, for_file, progress, method)
        except UpstreamError as error:
            self.health.failed(str(error))
            raise
        except (aiohttp.ClientError, OSError, ValueError) as error:
            self.health.failed(str(_failure(url, error, progress)))
            raise
        try:
            if self._metrics is not None:
                self._metrics.upstream_seconds.labels(self.name).observe(time.monotonic() - started)
            # The index's own statuses help whoever reads them (a 401: wrong password);
            # those of hosts a page or a redirect named would make cachepi a scanner.
            own = _origin(str(response.url)) == self._origin
            if response.status in (404, 410):
                self.health.succeeded()  # an answer, if not the one hoped for
                if own or not for_file:
                    raise UpstreamNotFound(redact(url))
                raise UpstreamError(
                    f"{redact(url)}: {UNREACHABLE}",
                    detail=f"{redact(url)}: upstream answered {response.status}",
                )
            if response.status not in answers:
                text = f"upstream answered {response.status}" if own else UNREACHABLE
                refusal = UpstreamError(
                    f"{redact(url)}: {text}",
                    retryable=response.status in _RETRYABLE_STATUSES,
                    detail=f"{redact(url)}: upstream answered {response.status}",
                )
                self.health.failed(str(refusal))
                raise refusal
            last_modified = response.headers.get("Last-Modified") if for_file else None
            if last_modified is not None and self._last_modified is not None:
                self._last_modified(url, last_modified)
            try:
                yield response
            except (aiohttp.ClientError, OSError, ValueError) as error:
                self.health.failed(str(_failure(url, error, progress)))
                raise
            self.health.succeeded()
        finally:
            response.release()

    async def _follow(
        self,
        url: str,
        headers: dict[str, str],
        for_file: bool,
        progress: _Progress,
        method: str = "GET",
    ) -> aiohttp.ClientResponse:
        """The response at the end of `url`'s redirects, each hop allowed by `_reach`."""
        hop_url = url
        for _ in range(MAX_REDIRECTS + 1):
            public_only = self._check_hop(url, hop_url, for_file)
            proxy, proxy_auth = self._connections.proxy_for(hop_url)
            hop = Hop(public_only and proxy is None)
            token = HOP.set(hop)
            try:
                session = self._connections.files if for_file else self._connections.pages
                response = await session.request(
                    method,
                    hop_url,
                    headers=self._headers_for(hop_url, headers),
                    allow_redirects=False,
                    proxy=proxy,
                    proxy_auth=proxy_auth,
                )
            finally:
                HOP.reset(token)
                progress.connected = progress.connected or hop.connected
            location = response.headers.get("Location")
            if response.status not in _REDIRECT_STATUSES or not location:
                return response
            response.release()
            hop_url = urljoin(str(response.url), location)
        raise UpstreamError(
            f"{redact(url)}: {UNREACHABLE}",
            detail=f"{redact(url)}: more than {MAX_REDIRECTS} redirects",
        )

    def _check_hop(self, url: str, hop_url: str, for_file: bool) -> bool:
        """Whether the request to `hop_url` (on the way to `url`) may go out, and if it must
        then reach a public address only (True); raises UpstreamError if it may not."""
        try:
            scheme, host, port = _origin(hop_url)
        except ValueError:
            scheme = host = ""
            port = 0
        if scheme not in ("http", "https") or not host:
            raise UpstreamError(
                f"{redact(url)}: {UNREACHABLE}",
                detail=f"{redact(url)}: leads to {redact(hop_url)[:200]!r}, not an http(s) URL",
            )
        file_hosts = self._reach.file_hosts
        if for_file and file_hosts is not None and host not in file_hosts:
            shown = "" if hop_url == url else f" (by a redirect to {host!r})"
            raise UpstreamError(f"{redact(url)}: files from {host!r} are not allowed here{shown}")
        if (scheme, host, port) == self._origin or self._upgrade(scheme, host, port):
            return False  # the index's own origin: wherever it is
        if self._reach.private or (for_file and file_hosts is not None):
            return False  # allowed by the operator, private or not
        try:
            literal = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return True  # a name: its addresses are checked where it is resolved
        if not is_public(str(literal)):
            raise UpstreamError(
                f"{redact(url)}: {UNREACHABLE}",
                detail=f"{redact(url)}: refused {host}, not a public address (allow it with"
                " FILE_HOSTS or UPSTREAM_PRIVATE_ADDRESSES=allow)",
            )
        return True

    def _upgrade(self, scheme: str, host: str, port: int) -> bool:
        """http://index-host → https://index-host on the default ports: still the index."""
        own_scheme, own_host, own_port = self._origin
        return (own_scheme, own_port, scheme, port) == ("http", 80, "https", 443) and (
            host == own_host
        )


def _span(response: aiohttp.ClientResponse, start: int, stop: int | None) -> tuple[int, int, int]:
    """(start, stop, total) of the range `response` holds, if it is the one asked for (see
    `open_range`); else NoRanges. A whole file is that range when the range asked for
    covers it all (a server may answer so for a small file)."""
    if response.status != 206:
        length = response.content_length
        whole = length is not None and (
            (start < 0 and length <= -start) or (start == 0 and (stop is None or stop >= length))
        )
        if whole and length is not None:
            return 0, length, length
        raise NoRanges(f"the upstream answered {response.status} to a range request")
    match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None:
        raise NoRanges("a 206 without a Content-Range of one range")
    first, last, total = map(int, match.groups())
    if start < 0:
        start = max(0, total + start)
    expected = total if stop is None else min(stop, total)
    if (first, last + 1) != (start, expected) or response.content_length != expected - start:
        raise NoRanges(f"a 206 of bytes {first}-{last}/{total}, not the range asked for")
    return first, last + 1, total


def _failure(url: str, error: BaseException, progress: _Progress | None = None) -> UpstreamError:
    """A failed request as a one-line UpstreamError. A client learns
    only whether the upstream was reached at all: a connect timeout (a filtered port) reads
    like a refused connection, a timeout after connecting is a 504."""
    if isinstance(error, aiohttp.ConnectionTimeoutError):  # connecting, or a busy pool
        status, text = 502, UNREACHABLE
    elif isinstance(error, TimeoutError):
        reached = (
            progress is None
            or progress.connected
            or isinstance(error, aiohttp.ServerTimeoutError)  # a read timed out
        )
        status, text = (504, TIMED_OUT) if reached else (502, UNREACHABLE)
    else:
        status, text = 502, UNREACHABLE
    return UpstreamError(
        f"{redact(url)}: {text}",
        status=status,
        # An answer that cannot be used (a bad URL, a coding not asked for) stays so.
        retryable=not isinstance(error, ValueError | zlib.error),
        detail=f"{redact(url)}: {describe(error)}",
    )


def describe(error: BaseException) -> str:
    """A one-line reason, for the log (never for a client: it tells a refused port from a
    filtered one), without credentials."""
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return "no connection in time (connect timeout, or every connection busy)"
    if isinstance(error, TimeoutError):
        return "upstream timed out"
    if isinstance(error, aiohttp.ClientConnectorError):
        reason = error.os_error
        if isinstance(reason, AddressesRefused):
            return f"refused: {reason} (allow with FILE_HOSTS or UPSTREAM_PRIVATE_ADDRESSES)"
        return f"cannot connect to upstream ({reason.strerror or reason})"
    if isinstance(error, AddressRefused):
        return f"refused: {error}"
    if isinstance(error, aiohttp.ClientPayloadError):
        return "upstream broke off the transfer"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "upstream closed the connection"
    if isinstance(error, ValueError | zlib.error):
        return f"unusable answer ({str(error)[:200]})"
    return f"upstream error ({type(error).__name__}: {str(error)[:200]})"


async def _pieces(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """A body's bytes as they were received, each piece as it is: not joined into one
    (`iter_any` copies whatever waits into a new block of up to twice the read buffer,
    a copy of every byte and, past malloc's mmap threshold, fresh pages each time)."""
    async for piece, _ in content.iter_chunks():
        if piece:  # b"" at the end of a chunk of a chunked body
            yield piece
