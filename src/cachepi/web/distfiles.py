"""Distribution files: `/index/{project}/{filename}` (and `{filename}.metadata`).

Stored files and files still downloading are answered the same way (ETag from sha256, HEAD,
Range, If-Range, If-None-Match); only the body differs: a stored blob goes out with sendfile,
a download with sendfile from its part file as it grows (bytes it relays from memory, and
every byte over TLS or without a Content-Length, are written instead). A range of a file neither
holds may come from the upstream's range instead (upstream_ranges.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mimetypes
from collections.abc import Iterator

from aiohttp import web

from cachepi.catalog import MetadataOfWheel, NotServed, file_spec
from cachepi.filecache import Busy, Claim, Download, FileSpec
from cachepi.simple.names import is_safe_filename
from cachepi.store.protocols import StoredBlob, StoreUnavailable
from cachepi.types import CacheResult, DownloadFailed
from cachepi.upstream import UpstreamError, UpstreamNotFound
from cachepi.web.conditional import etag_matches, plan_response
from cachepi.web.keys import (
    BODY_BYTES,
    CACHE_RESULT,
    FILE_CACHE,
    METRICS,
    SETTINGS,
    WHEEL_METADATA,
)
from cachepi.web.pages import checked_name, find_listing, gateway_error
from cachepi.web.sending import (
    MAX_PIECE,
    BodySender,
    Sent,
    client_deadline,
    cut_off,
    send_span,
    sendfile,
)
from cachepi.web.upstream_ranges import Passed, passed_through
from cachepi.wheelmeta import NotReadable

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
        spec = file_spec(listing, name, filename)
    except NotServed as refusal:
        error = web.HTTPForbidden if refusal.forbidden else web.HTTPNotFound
        raise error(text=f"{refusal}\n") from None
    settings = request.app[SETTINGS]
    headers = {
        "Content-Type": file_type(filename, settings.binary_file_mime_type),
        "Cache-Control": FILE_CACHE_CONTROL,
    }
    if isinstance(spec, MetadataOfWheel):
        with _gateway_errors():
            return await _metadata_of_wheel(request, spec.wheel, headers)
    if request.method == "HEAD" or _not_modified(request, spec.sha256):
        return await _head(request, spec, headers)
    with _gateway_errors():
        async with passed_through(request, spec) as passed:
            if passed is not None:
                _count(request, CacheResult.MISS)
                send = _relay(passed, settings.client_timeout)
                return await _answer(request, headers, passed.size, spec.sha256, send, "upstream")
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


@contextlib.contextmanager
def _gateway_errors() -> Iterator[None]:
    """A file that could not be had, as the status a client should see."""
    try:
        yield
    except UpstreamNotFound as error:
        raise web.HTTPBadGateway(text=f"the index lists it but upstream has no {error}\n") from None
    except UpstreamError as error:
        raise gateway_error(error) from None
    except (DownloadFailed, NotReadable) as error:
        raise web.HTTPBadGateway(text=f"{error}\n") from None
    except Busy as busy:
        raise web.HTTPServiceUnavailable(
            text=f"{busy}\n", headers={"Retry-After": str(busy.retry_after)}
        ) from None


async def _metadata_of_wheel(
    request: web.Request, wheel: FileSpec, headers: dict[str, str]
) -> web.StreamResponse:
    """The METADATA of a wheel whose index offers none: stored, or read now (never a 404:
    filecache/wheel_metadata.py). HEAD reads nothing: without it stored, no length."""
    reader = request.app[WHEEL_METADATA]
    found: StoredBlob | bytes | None = await reader.stored(wheel)
    result = CacheResult.HIT
    if found is None:
        result = CacheResult.MISS
        if request.method == "HEAD":
            _count(request, result)
            return await _answer(request, headers, None, None, _nothing, "upstream")
        found = await reader.get(wheel, request.remote)
    _count(request, result)
    if isinstance(found, bytes):  # the cache would not keep it
        sha256 = hashlib.sha256(found).hexdigest()
        return await _answer(request, headers, len(found), sha256, _bytes(found), "upstream")
    with contextlib.closing(found):
        send = _sendfile(found, request.app[SETTINGS].client_timeout)
        return await _answer(request, headers, found.size, found.sha256, send, "cache")


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


def _bytes(data: bytes) -> BodySender:
    """Bytes in memory (a small file the cache would not keep)."""

    async def send(
        request: web.Request, response: web.StreamResponse, start: int, stop: int | None,
        sent: Sent,
    ) -> None:  # fmt: skip
        await response.write(data[start:stop])
        sent.count += len(data[start:stop])
        await response.write_eof()

    return send


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
            cut_off(request)
            return
        await response.write_eof()

    return send


def _relay(download: Claim | Passed, patience: float) -> BodySender:
    async def send(
        request: web.Request, response: web.StreamResponse, start: int, stop: int | None,
        sent: Sent,
    ) -> None:  # fmt: skip
        # Spans of a part file, to send with sendfile; an upstream's range has only bytes.
        pieces = (
            download.pieces(start, stop, MAX_PIECE)
            if isinstance(download, Claim) and _spans(request, response)
            else download.chunks(start, stop)
        )
        try:
            async with contextlib.aclosing(pieces):
                async for piece in pieces:
                    if isinstance(piece, bytes):
                        async with client_deadline(request, patience):
                            await response.write(piece)
                        sent.count += len(piece)
                        continue
                    # No fallback: it would read at the file's position, every reader's.
                    await send_span(request, piece.file, piece.offset, piece.size, sent,
                                     patience, fallback=False)  # fmt: skip
        except DownloadFailed:
            # The bytes were wrong or incomplete: end the connection before the response is
            # complete, so the client sees a failed transfer rather than a finished file.
            cut_off(request)
            return
        await response.write_eof()

    return send


def _spans(request: web.Request, response: web.StreamResponse) -> bool:
    """Whether a download's bytes may go out with sendfile, which bypasses aiohttp's
    framing: only as a body of a known length (without one aiohttp sends it chunked), not
    compressed, and not over TLS."""
    transport = request.transport
    return (
        transport is not None
        and transport.get_extra_info("sslcontext") is None
        and response.content_length is not None
        and not response.compression
    )
