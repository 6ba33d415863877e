"""Index pages: `/index/` and `/index/{project}/`, negotiated, answered from the rendered
files of their content version (rendered.py) with sendfile, or with a 304."""

from __future__ import annotations

import contextlib
import re

from aiohttp import web

from cachepi.index import Listing, ListResult, PageState, Refused
from cachepi.rendered import SMALL, Page
from cachepi.simple.model import LAST_SERIAL_HEADER
from cachepi.simple.names import is_valid_project_name, normalize
from cachepi.simple.negotiate import Format, choose_encoding, choose_format
from cachepi.simple.render import serial_text
from cachepi.upstream import UpstreamError
from cachepi.web.conditional import etag_matches
from cachepi.web.keys import BODY_BYTES, CACHE_RESULT, INDEX_CACHE, METRICS, RENDERED, SETTINGS
from cachepi.web.sending import Sent, from_memory, sendfile

_VARY = "Accept, Accept-Encoding"
STALE_HEADER = "X-Cachepi-Stale"
UNAVAILABLE_HEADER = "X-Cachepi-Unavailable"
# A Host header: a name or IPv4 address, or an IPv6 one in brackets, and a port.
_HOST_RE = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z", re.ASCII)


_MAX_REASON = 400
_GATEWAY_ERRORS: dict[int, type[web.HTTPException]] = {
    502: web.HTTPBadGateway,
    503: web.HTTPServiceUnavailable,
    504: web.HTTPGatewayTimeout,
}


def gateway_error(error: UpstreamError) -> web.HTTPException:
    """The 502/503/504 for an upstream failure, with its reason: one line of printable
    text, whatever a parser or an upstream put in it (why exactly, which may tell a refused
    port from a filtered one, is in the log only: upstream.py). Never a 404: a client with
    several indexes would take that as "not here" and look elsewhere."""
    reason = " ".join(str(error).split())[:_MAX_REASON] or "the upstream failed"
    reason = "".join(char if char.isprintable() else "\ufffd" for char in reason)
    return _GATEWAY_ERRORS.get(error.status, web.HTTPBadGateway)(text=f"{reason}\n")


def negotiated(request: web.Request) -> Format:
    fmt = choose_format(request.headers.get("Accept"), request.query.get("format"))
    if fmt is None:
        supported = ", ".join(f.value for f in Format)
        raise web.HTTPNotAcceptable(text=f"supported types: {supported}\n")
    return fmt


async def respond(
    request: web.Request, page: Page, source: PageState | ListResult, coding: str
) -> web.StreamResponse:
    """The page (in `coding`, the best the client takes), or 304 if the client holds it.

    An answer some index could not contribute to says so, and so does one made of a stale
    copy (an index failed, or the copy is being revalidated): clients must ask again rather
    than keep it (cheap: a 304 once nothing changed).
    """
    request[CACHE_RESULT] = source.cache
    request.app[METRICS].cache_result("page", source.cache)
    settings = request.app[SETTINGS]
    headers = {
        "ETag": page.etag,
        "Vary": _VARY,
        "Cache-Control": f"max-age={settings.page_max_age}, public",
    }
    if source.unavailable:
        headers[UNAVAILABLE_HEADER] = ", ".join(source.unavailable)
        headers["Cache-Control"] = "no-cache"
    if source.stale:
        headers[STALE_HEADER] = "1"
        headers["Cache-Control"] = "no-cache"
    # The upstream's last serial in PyPI's header, the one place an HTML client looks.
    if (serial := serial_text(source.last_serial)) is not None:
        headers[LAST_SERIAL_HEADER] = serial
    if etag_matches(request.headers.get("If-None-Match"), page.etag):
        if page.file is not None:
            page.file.close()
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = page.content_type
    if coding != "identity":
        headers["Content-Encoding"] = coding
    if page.file is None and page.size <= SMALL:
        return web.Response(body=page.body, headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_length = page.size
    sent = Sent()
    # The client hung up, before the headers or during the body: nothing to do (aiohttp
    # then finds the connection closed too, and says nothing).
    with page.file or contextlib.nullcontext(), contextlib.suppress(ConnectionError):
        try:
            await response.prepare(request)
            if request.method != "HEAD":
                if page.file is not None:
                    send = sendfile(page.file, page.size, settings.client_timeout)
                else:  # a big page whose file could not be written
                    send = from_memory(page.body or b"", settings.client_timeout)
                await send(request, response, 0, page.size, sent)
        finally:  # counted also when cancelled: what went out went out
            request[BODY_BYTES] = sent.count
    return response


def checked_name(request: web.Request, rest: str = "") -> str:
    """The request's project name, normalized; 400 if invalid.

    A non-normalized name, or a project URL without its trailing slash, is answered with a
    301 to the canonical URL (`rest` is what follows the project segment), query kept.
    """
    name = request.match_info["project"]
    if not is_valid_project_name(name):
        raise web.HTTPBadRequest(text="invalid project name\n")
    canonical = normalize(name)
    if canonical != name or not request.path.endswith("/" + rest):
        prefix = request.path.split("/", 2)[1]  # "index" or its alias "simple"
        raise _moved(request, f"/{prefix}/{canonical}/{rest}")
    return canonical


async def project_list_without_slash(request: web.Request) -> web.Response:
    """`/index` and `/simple`: a 301 to the page, whose URL ends in "/" (PEP 503)."""
    raise _moved(request, request.path + "/")


def _moved(request: web.Request, path: str) -> web.HTTPMovedPermanently:
    """A 301 to `path`, keeping the request's query."""
    location = f"{path}?{request.query_string}" if request.query_string else path
    return web.HTTPMovedPermanently(location)


async def project_page(request: web.Request) -> web.StreamResponse:
    name = checked_name(request)
    fmt = negotiated(request)
    coding = choose_encoding(request.headers.get("Accept-Encoding"))
    try:
        found = await request.app[RENDERED].project(
            name, fmt, coding, lambda: _absolute_url(request)
        )
    except Refused as refusal:
        raise web.HTTPForbidden(text=f"{refusal}\n") from None
    except UpstreamError as error:
        raise gateway_error(error) from None
    if found is None:
        raise web.HTTPNotFound(text=f"project {name!r} not found\n")
    return await respond(request, *found, coding)


def _absolute_url(request: web.Request) -> str:
    """The request's URL without its query, as the client addressed the proxy (scheme of the
    connection, Host header); 400 for a Host that is no host: it would end up in a URL
    on the page (RFC 9112 asks a 400 of an invalid Host anyway), or that makes no URL (a
    port past 65535, a broken IPv6 address)."""
    if not _HOST_RE.match(request.host):
        raise web.HTTPBadRequest(text="invalid Host header\n")
    try:
        return str(request.url.with_query(None))
    except ValueError:
        raise web.HTTPBadRequest(text="invalid Host header\n") from None


async def find_listing(request: web.Request, name: str) -> Listing | None:
    """The project as clients may see it; 403 when the policy refuses it, 502/503/504
    when its indexes fail."""
    try:
        return await request.app[INDEX_CACHE].listing(name)
    except Refused as refusal:
        raise web.HTTPForbidden(text=f"{refusal}\n") from None
    except UpstreamError as error:
        raise gateway_error(error) from None


async def project_list(request: web.Request) -> web.StreamResponse:
    fmt = negotiated(request)
    coding = choose_encoding(request.headers.get("Accept-Encoding"))
    try:
        found = await request.app[RENDERED].project_list(fmt, coding)
    except UpstreamError as error:
        raise gateway_error(error) from None
    return await respond(request, *found, coding)
