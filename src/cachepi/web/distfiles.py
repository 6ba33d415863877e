"""Distribution files: `/index/{project}/{filename}` (and `{filename}.metadata`).

Stored files and files still downloading are answered the same way (ETag from sha256, HEAD,
Range, If-Range, If-None-Match); only the body differs: a stored blob goes out with sendfile,
a download is relayed from the shared temp file as it grows.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes

from aiohttp import web

from cachepi.catalog import NotServed, file_spec
from cachepi.filecache import Busy, Claim, Download, FileSpec
from cachepi.simple.names import is_safe_filename
from cachepi.store.protocols import StoredBlob, StoreUnavailable
from cachepi.types import CacheResult, DownloadFailed
from cachepi.upstream import UpstreamError, UpstreamNotFound
from cachepi.web.conditional import etag_matches, plan_response
from cachepi.web.keys import BODY_BYTES, CACHE_RESULT, FILE_CACHE, METRICS, SETTINGS
from cachepi.web.pages import checked_name, find_listing, gateway_error
from cachepi.web.sending import BodySender, Sent, client_deadline, sendfile

# Files never change in an index: a client may keep them forever.
FILE_CACHE_CONTROL = "max-age=365000000, immutable"
log = logging.getLogger(__name__)


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
    listing = await find_listing(request, name)
    file_cache = request.app[FILE_CACHE]
    try:
        spec = file_spec(listing, name, filename, file_cache.extracted()[1])
    except NotServed as refusal:
        error = web.HTTPForbidden if refusal.forbidden else web.HTTPNotFound
        raise error(text=f"{refusal}\n") from None
    settings = request.app[SETTINGS]
    headers = {
        "Content-Type": file_type(filename, settings.binary_file_mime_type),
        "Cache-Control": FILE_CACHE_CONTROL,
    }
    if request.method == "HEAD" or _not_modified(request, spec.sha256):
        return await _head(request, spec, headers)
    try:
        async with file_cache.serve(spec, request.remote, lambda: _gone(request)) as found:
            if isinstance(found, Claim):
                _count(request, CacheResult.MISS)
                send = _relay(found, settings.client_timeout)
                return await _answer(request, headers, found.size, spec.sha256, send, "upstream")
            _count(request, CacheResult.HIT)
            try:
                location = await found.redirect_url()
            except StoreUnavailable as error:
                raise web.HTTPServiceUnavailable(text=f"{error}\n") from None
            if location is not None:  # straight from the store
                raise web.HTTPTemporaryRedirect(location, headers={"Cache-Control": "no-store"})
            send = _sendfile(found, settings.client_timeout)
            return await _answer(request, headers, found.size, found.sha256, send, "cache")
    except UpstreamNotFound as error:
        raise web.HTTPBadGateway(text=f"the index lists it but upstream has no {error}\n") from None
    except UpstreamError as error:
        raise gateway_error(error) from None
    except DownloadFailed as error:
        raise web.HTTPBadGateway(text=f"{error}\n") from None
    except Busy as busy:
        raise web.HTTPServiceUnavailable(
            text=f"{busy}\n", headers={"Retry-After": str(busy.retry_after)}
        ) from None


def _gone(request: web.Request) -> bool:
    """The client hung up."""
    return request.transport is None or request.transport.is_closing()


def _not_modified(request: web.Request, sha256: str | None) -> bool:
    """The client has the file the index names already (its sha256 is our ETag)."""
    return sha256 is not None and etag_matches(request.headers.get("If-None-Match"), f'"{sha256}"')


async def _head(
    request: web.Request, spec: FileSpec, headers: dict[str, str]
) -> web.StreamResponse:
    """HEAD (or a 304) never downloads a file: the stored file, a download this process
    runs already, or else what the index says of the file (its sha256, its size, or when
    it gives none, the length an upstream HEAD says: without one there is no
    Content-Length, and no Range to offer)."""
    file_cache = request.app[FILE_CACHE]
    found = await file_cache.peek(spec)
    if found is None or isinstance(found, Download):
        _count(request, CacheResult.MISS)
        if found is not None and found.size is not None:
            size: int | None = found.size
        elif request.method == "HEAD":
            try:
                size = await file_cache.length(spec)
            except UpstreamNotFound as error:
                message = f"the index lists it but upstream has no {error}\n"
                raise web.HTTPBadGateway(text=message) from None
        else:  # a 304 needs no length
            size = spec.size
        return await _answer(request, headers, size, spec.sha256, _nothing, "upstream")
    _count(request, CacheResult.HIT)
    with contextlib.closing(found):
        return await _answer(request, headers, found.size, found.sha256, _nothing, "cache")


async def _nothing(
    request: web.Request, response: web.StreamResponse, start: int, stop: int | None, sent: Sent
) -> None:
    """No body to send (HEAD, 304)."""


def _count(request: web.Request, result: CacheResult) -> None:
    request[CACHE_RESULT] = result
    request.app[METRICS].cache_result("file", result)


async def _answer(
    request: web.Request,
    headers: dict[str, str],
    size: int | None,
    sha256: str | None,
    send: BodySender,
    source: str,
) -> web.StreamResponse:
    """The one way a file request is answered, stored ("cache") or still downloading
    ("upstream")."""
    if sha256 is not None:
        headers["ETag"] = f'"{sha256}"'
    plan = plan_response(request.headers, size, headers.get("ETag"))
    if plan.status == 304:
        return web.Response(status=304, headers=headers)
    if plan.status == 416:
        raise web.HTTPRequestRangeNotSatisfiable(headers=plan.headers)
    if size is not None:
        headers["Accept-Ranges"] = "bytes"
    response = web.StreamResponse(status=plan.status, headers=headers | plan.headers)
    if plan.stop is not None:
        response.content_length = plan.stop - plan.start
    await response.prepare(request)
    if request.method != "HEAD" and plan.stop != plan.start:
        sent = Sent()
        try:
            with contextlib.suppress(ConnectionError):  # the client hung up: nothing to do
                await send(request, response, plan.start, plan.stop, sent)
        finally:  # counted also when cancelled: what went out went out
            request[BODY_BYTES] = sent.count
            request.app[METRICS].served(source, sent.count)
    return response


def _sendfile(blob: StoredBlob, patience: float) -> BodySender:
    """A stored blob's bytes: with sendfile when it is a file on this machine, else
    streamed from its store."""
    if blob.file is None:
        return _stream(blob, patience)
    return sendfile(blob.file, blob.size, patience)


def _stream(blob: StoredBlob, patience: float) -> BodySender:
    async def send(
        request: web.Request, response: web.StreamResponse, start: int, stop: int | None,
        sent: Sent,
    ) -> None:  # fmt: skip
        try:
            async for data in blob.chunks(start, blob.size if stop is None else stop):
                async with client_deadline(request, patience):
                    await response.write(data)
                sent.count += len(data)
        except StoreUnavailable as error:  # cut short: the client must not take it as done
            log.warning("%s: %s", request.path, error)
            if request.transport is not None:
                request.transport.close()
            return
        await response.write_eof()

    return send


def _relay(download: Claim, patience: float) -> BodySender:
    async def send(
        request: web.Request, response: web.StreamResponse, start: int, stop: int | None,
        sent: Sent,
    ) -> None:  # fmt: skip
        try:
            async with contextlib.aclosing(download.chunks(start, stop)) as chunks:
                async for data in chunks:
                    async with client_deadline(request, patience):
                        await response.write(data)
                    sent.count += len(data)
        except DownloadFailed:
            # The bytes were wrong or incomplete: end the connection before the response is
            # complete, so the client sees a failed transfer rather than a finished file.
            if request.transport is not None:
                request.transport.close()
            return
        await response.write_eof()

    return send
