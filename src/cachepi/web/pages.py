"""Index pages: `/index/` and `/index/{project}/`, negotiated, rendered once per version.

A page's bytes (and their gzip) are kept per (page, format) and content version, so a request
for an unchanged page costs a dictionary lookup, not a render.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections import OrderedDict
from collections.abc import Callable

import zstandard
from aiohttp import web

from cachepi import catalog
from cachepi.index import IndexCache, Listing, ListResult, Refused
from cachepi.simple.model import Project, ProjectList
from cachepi.simple.names import is_valid_project_name, normalize
from cachepi.simple.negotiate import Format, choose_encoding, choose_format, content_type
from cachepi.simple.render import (
    render_project_html,
    render_project_json,
    render_project_list_html,
    render_project_list_json,
)
from cachepi.store.protocols import LIST_KEY
from cachepi.upstream import UpstreamError
from cachepi.web.conditional import etag_matches
from cachepi.web.keys import CACHE_RESULT, FILE_CACHE, INDEX_CACHE, METRICS, SETTINGS

_PROJECT_RENDERERS: dict[Format, Callable[[Project], bytes]] = {
    Format.JSON: render_project_json,
    Format.HTML_V1: render_project_html,
    Format.HTML: render_project_html,
}
_LIST_RENDERERS: dict[Format, Callable[[ProjectList], bytes]] = {
    Format.JSON: render_project_list_json,
    Format.HTML_V1: render_project_list_html,
    Format.HTML: render_project_list_html,
}
_VARY = "Accept, Accept-Encoding"
STALE_HEADER = "X-Cachepi-Stale"
UNAVAILABLE_HEADER = "X-Cachepi-Unavailable"


class Representation:
    """One rendered page in one format: its bytes in every coding we send, each with its
    own strong ETag (a different coding is a different representation)."""

    def __init__(self, body: bytes, fmt: Format) -> None:
        self.content_type = content_type(fmt)
        etag = hashlib.blake2b(body, digest_size=12).hexdigest()
        self.codings: dict[str, tuple[bytes, str]] = {
            "identity": (body, f'"{etag}"'),
            "gzip": (gzip.compress(body, compresslevel=6, mtime=0), f'"{etag}-gz"'),
            # A compressor per page: they are not safe to share between render threads.
            "zstd": (zstandard.ZstdCompressor(level=3).compress(body), f'"{etag}-zst"'),
        }


class RenderCache:
    """Rendered pages by (key, format), replaced when the content version changes."""

    def __init__(self, max_entries: int = 2048) -> None:
        self._entries: OrderedDict[tuple[str, Format], tuple[str, Representation]] = OrderedDict()
        self._max_entries = max_entries

    async def get(
        self, key: str, version: str, fmt: Format, render: Callable[[], bytes]
    ) -> Representation:
        slot = (key, fmt)
        held = self._entries.get(slot)
        if held is not None and held[0] == version:
            self._entries.move_to_end(slot)
            return held[1]
        # Rendering and compressing a big page takes long enough to stall other requests.
        representation = await asyncio.to_thread(lambda: Representation(render(), fmt))
        self._entries[slot] = (version, representation)
        self._entries.move_to_end(slot)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return representation

    def forget(self, key: str) -> None:
        for fmt in Format:
            self._entries.pop((key, fmt), None)


RENDERED = web.AppKey("rendered", RenderCache)

_GATEWAY_ERRORS: dict[int, type[web.HTTPException]] = {
    502: web.HTTPBadGateway,
    503: web.HTTPServiceUnavailable,
    504: web.HTTPGatewayTimeout,
}


def gateway_error(error: UpstreamError) -> web.HTTPException:
    """The 502/503/504 for an upstream failure, with its one-line reason. Never a 404: a
    client with several indexes would take that as "not here" and look elsewhere."""
    return _GATEWAY_ERRORS[error.status](text=f"{error}\n")


def negotiated(request: web.Request) -> Format:
    fmt = choose_format(request.headers.get("Accept"), request.query.get("format"))
    if fmt is None:
        supported = ", ".join(f.value for f in Format)
        raise web.HTTPNotAcceptable(text=f"supported types: {supported}\n")
    return fmt


def respond(
    request: web.Request, page: Representation, source: Listing | ListResult
) -> web.Response:
    """The page in the best coding the client takes, or 304 if the client holds it.

    An answer some index could not contribute to says so, and clients must ask again
    rather than keep it (cheap: a 304 once nothing changed).
    """
    request[CACHE_RESULT] = source.cache
    request.app[METRICS].cache_result("page", source.cache)
    coding = choose_encoding(request.headers.get("Accept-Encoding"))
    body, etag = page.codings[coding]
    headers = {
        "ETag": etag,
        "Vary": _VARY,
        "Cache-Control": f"max-age={request.app[SETTINGS].page_max_age}, public",
    }
    if source.unavailable:
        headers[UNAVAILABLE_HEADER] = ", ".join(source.unavailable)
        headers["Cache-Control"] = "no-cache"
    if source.stale:
        headers[STALE_HEADER] = "1"
    if etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = page.content_type
    if coding != "identity":
        headers["Content-Encoding"] = coding
    return web.Response(body=body, headers=headers)


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
        location = f"/{prefix}/{canonical}/{rest}"
        if request.query_string:
            location += "?" + request.query_string
        raise web.HTTPMovedPermanently(location)
    return canonical


async def project_page(request: web.Request) -> web.Response:
    name = checked_name(request)
    fmt = negotiated(request)
    listing = await find_listing(request, name)
    if listing is None:
        raise web.HTTPNotFound(text=f"project {name!r} not found\n")
    version, project = catalog.page(listing, request.app[FILE_CACHE].extracted())

    def render() -> bytes:
        return _PROJECT_RENDERERS[fmt](project())

    page = await request.app[RENDERED].get(name, version, fmt, render)
    return respond(request, page, listing)


async def find_listing(request: web.Request, name: str) -> Listing | None:
    """The project as clients may see it; 403 when the policy refuses it, 502/503/504
    when its indexes fail."""
    try:
        return await request.app[INDEX_CACHE].listing(name)
    except Refused as refusal:
        raise web.HTTPForbidden(text=f"{refusal}\n") from None
    except UpstreamError as error:
        raise gateway_error(error) from None


async def project_list(request: web.Request) -> web.Response:
    fmt = negotiated(request)
    index: IndexCache = request.app[INDEX_CACHE]
    try:
        result = await index.project_list()
    except UpstreamError as error:
        raise gateway_error(error) from None
    page = await request.app[RENDERED].get(
        LIST_KEY, result.version, fmt, lambda: _LIST_RENDERERS[fmt](result.names)
    )
    return respond(request, page, result)
