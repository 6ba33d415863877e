"""Distribution files: `/index/{project}/{filename}` (and `{filename}.metadata`).

A stored blob is sent with sendfile (aiohttp FileResponse: HEAD, Range, If-Range). A miss is
streamed to the client from the single shared download while it is still arriving.
"""

from __future__ import annotations

import contextlib
import mimetypes
from pathlib import Path

from aiohttp import web

from cachepi.files import Download, DownloadFailed, FileSpec
from cachepi.simple.names import is_safe_filename
from cachepi.upstream import UpstreamError, UpstreamNotFound
from cachepi.web.keys import FILE_CACHE, INDEX_CACHE, SETTINGS
from cachepi.web.pages import checked_name
from cachepi.web.ranges import RangeNotSatisfiable, parse_range

# Files never change in an index: a client may keep them forever.
FILE_CACHE_CONTROL = "max-age=365000000, immutable"
_METADATA_SUFFIX = ".metadata"


def file_type(filename: str, binary: bool) -> str:
    """Content-Type for a file; never one that only holds with a Content-Encoding
    (`.tar.gz` is not `application/x-tar`: clients would try to decode it)."""
    if binary:
        return "application/octet-stream"
    guessed, encoding = mimetypes.guess_type(filename, strict=False)
    return guessed if guessed and not encoding else "application/octet-stream"


async def dist_file(request: web.Request) -> web.StreamResponse:
    filename = request.match_info["filename"]
    if not is_safe_filename(filename):
        raise web.HTTPBadRequest(text="invalid filename\n")
    name = checked_name(request, filename)
    spec = await _spec(request, name, filename)
    try:
        found = await request.app[FILE_CACHE].get(spec)
    except UpstreamNotFound as error:
        raise web.HTTPBadGateway(text=f"the index lists it but upstream has no {error}\n") from None
    except (UpstreamError, DownloadFailed) as error:
        raise web.HTTPBadGateway(text=f"{error}\n") from None
    headers = {
        "Content-Type": file_type(filename, request.app[SETTINGS].binary_file_mime_type),
        "Cache-Control": FILE_CACHE_CONTROL,
    }
    if isinstance(found, Path):
        return web.FileResponse(found, headers=headers)
    return await _stream(request, found, headers)


async def _spec(request: web.Request, name: str, filename: str) -> FileSpec:
    """What the index says about `filename`: a stale listing will do for a file, and the
    upstream is only asked again when the file is not on the page we hold."""
    base = filename.removesuffix(_METADATA_SUFFIX)
    index = request.app[INDEX_CACHE]
    found = None
    for revalidate in (False, True):
        try:
            listing = await index.listing(name, revalidate)
        except UpstreamError as error:
            raise web.HTTPBadGateway(text=f"{error}\n") from None
        if listing is not None and (found := listing.find(base)) is not None:
            break
    if found is None:
        raise web.HTTPNotFound(text=f"{name} has no file {base!r}\n")
    file, upstream = found
    if base == filename:
        return FileSpec(file.url, file.hashes, file.size, upstream)
    if not file.core_metadata:
        raise web.HTTPNotFound(text=f"the index offers no metadata file for {base!r}\n")
    hashes = file.core_metadata if isinstance(file.core_metadata, dict) else {}
    return FileSpec(file.url + _METADATA_SUFFIX, hashes, None, upstream)


async def _stream(
    request: web.Request, download: Download, headers: dict[str, str]
) -> web.StreamResponse:
    size = download.size
    start, stop, status = 0, size, 200
    if size is not None:
        headers["Accept-Ranges"] = "bytes"
        # An If-Range we cannot check yet (no validator before the file is stored): send all.
        if "If-Range" not in request.headers:
            try:
                span = parse_range(request.headers.get("Range"), size)
            except RangeNotSatisfiable:
                raise web.HTTPRequestRangeNotSatisfiable(
                    headers={"Content-Range": f"bytes */{size}"}
                ) from None
            if span is not None:
                (start, stop), status = span, 206
                headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    if stop is not None:
        response.content_length = stop - start
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    try:
        async with contextlib.aclosing(download.chunks(start, stop)) as chunks:
            async for data in chunks:
                await response.write(data)
    except DownloadFailed:
        # The bytes were wrong or incomplete: end the connection before the response is
        # complete, so the client sees a failed transfer rather than a finished file.
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response
