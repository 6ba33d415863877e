"""Ranges passed through: a Range request for a distribution file the cache does not hold
(and no download in this process is fetching) is answered from the upstream's range, not
after downloading the whole file. Resolvers read a few ranges of each candidate wheel (its
end, its central directory, its METADATA) and install few of them.

The whole file is fetched when a client asks for all of it: a GET without Range, or a range
of half the file or more (at most twice what the client asked for, and then kept). Never
in the background on a smaller range: most wheels a resolver reads are never installed.
HEAD never downloads anything either (distfiles.py).

The bytes passed through are the upstream's, as a client reading it directly would get
them: no hash covers part of a file. Its length is checked against the index's, the range
against what was asked; the whole file, when a client downloads it, is verified as always.
A host that sends no ranges is asked for whole files only, for a while (range_support.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

import aiohttp
from aiohttp import web

from cachepi.catalog import METADATA_SUFFIX, PROVENANCE_SUFFIX
from cachepi.filecache import Download, FileSpec
from cachepi.filecache.range_support import RangeSupport
from cachepi.redact import redact
from cachepi.types import DownloadFailed
from cachepi.upstream import NoRanges, Span, UpstreamError, describe
from cachepi.web.conditional import plan_response
from cachepi.web.keys import FILE_CACHE, RANGES


class Passed:
    """The upstream's range, as distfiles.py relays a download: `size` (the file's), and
    `chunks` of the span planned (the only one it holds)."""

    def __init__(self, span: Span, url: str) -> None:
        self.size: int | None = span.total
        self._span = span
        self._url = url

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        assert (start, end) == (self._span.start, self._span.stop)
        try:
            async for data in self._span.chunks:
                yield data
        except (aiohttp.ClientError, OSError, TimeoutError) as failure:
            # Cut short: the client must not take it as whole.
            raise DownloadFailed(f"{redact(self._url)}: {describe(failure)}") from None


@contextlib.asynccontextmanager
async def passed_through(request: web.Request, spec: FileSpec) -> AsyncIterator[Passed | None]:
    """The upstream's range for `request`, or None when it is answered otherwise (from the
    cache, from a download, or by downloading the whole file). Raises Busy, UpstreamError."""
    range_support: RangeSupport = request.app[RANGES]
    file_cache = request.app[FILE_CACHE]
    filename = spec.filename or ""
    if (
        "Range" not in request.headers
        or filename.endswith((METADATA_SUFFIX, PROVENANCE_SUFFIX))
        or not range_support.serves(spec.url)
    ):
        yield None
        return
    found = await file_cache.peek(spec)
    if found is not None:  # stored, or downloading here: answered from that
        if not isinstance(found, Download):
            found.close()
        yield None
        return
    size = spec.size if spec.size is not None else await file_cache.length(spec)
    etag = None if spec.sha256 is None else f'"{spec.sha256}"'
    plan = plan_response(request.headers, size, etag)
    if (
        size is None
        or plan.status != 206
        or plan.stop is None
        or 2 * (plan.stop - plan.start) >= size
    ):
        yield None
        return
    ticket = await file_cache.slots.take(spec.upstream.name, request.remote)
    try:
        async with spec.upstream.open_range(spec.url, plan.start, plan.stop) as span:
            if span.total != size:
                raise UpstreamError(
                    f"{redact(spec.url)}: the upstream's file is {span.total} bytes, "
                    f"the index says {size}"
                )
            yield Passed(span, spec.url)
    except NoRanges as refusal:
        range_support.refused(spec.url, str(refusal))
        yield None
    finally:
        ticket.release()
