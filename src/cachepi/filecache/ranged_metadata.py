"""A wheel's METADATA read from its upstream with a few range requests, never the whole
wheel: its end (the end record, often the central directory), the directory when that is
bigger, then the member (rangedzip.py says which bytes each read needs).

The bytes are the upstream's as it serves them: no hash covers part of a file, so they are
checked as far as they can be (the file's length against the index's, every range against
what was asked), and the member, as wheelmeta.py reads any wheel (size, CRC, bounds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from cachepi.rangedzip import Fetched, Missing
from cachepi.redact import redact
from cachepi.upstream import Index, NoRanges, UpstreamError
from cachepi.wheelmeta import END_READ, Archive, Deferred, NotReadable, read_wheel_metadata

# Ranges a wheel may take: a hostile one that makes the reader ask for more is refused.
MAX_RANGES = 16
# Bytes a reading may hold without its turn: the end and the directory of nearly every
# wheel. Beyond, readings take turns (`big`): a hostile wheel's directory may be 32 MiB,
# and many readings run at once.
SMALL = 1024 * 1024

# A read over at most this many bytes fetched, or once the directory was scanned with a
# METADATA of at most this size, runs on the event loop (tens of microseconds), not on the
# extraction thread: its round trip would cost more.
ON_LOOP = 32 * 1024

# Reads a wheel's METADATA out of an Archive (wheelmeta.read_wheel_metadata, on a thread).
Parse = Callable[[Archive, str], Awaitable[bytes | None]]


async def read_metadata(
    index: Index, url: str, filename: str, size: int | None, parse: Parse, big: asyncio.Lock
) -> bytes:
    """The METADATA of the wheel `filename` at `url` (`size`: its length as the index says,
    if it does); `big`: the turn of readings that hold more than SMALL bytes. Raises
    NoRanges when the upstream sends no ranges, NotReadable when what it sent holds no
    readable METADATA, UpstreamError (or UpstreamNotFound) when it fails."""
    fetched: Fetched | None = None
    start, stop = -END_READ, None
    holding = False  # the turn
    try:
        for _ in range(MAX_RANGES):
            more = 0 if fetched is None or stop is None else fetched.held + stop - start
            if more > SMALL and not holding:
                await big.acquire()
                holding = True
            first, data, total = await _fetch(index, url, start, stop)
            if fetched is None:
                if size is not None and total != size:
                    raise UpstreamError(
                        f"{redact(url)}: the upstream's file is {total} bytes, the index says"
                        f" {size}"
                    )
                fetched = Fetched(total)
            elif total != fetched.size:
                raise NoRanges(f"the file was {fetched.size} bytes, now {total}")
            fetched.add(first, data)
            try:
                metadata = await _read(fetched, filename, parse)
            except Missing as missing:
                start, stop = fetched.to_fetch(missing)
                continue
            if metadata is None:
                raise NotReadable(f"{filename} holds no readable METADATA")
            return metadata
        raise NotReadable(f"{filename}: more than {MAX_RANGES} ranges to read its METADATA")
    finally:
        if holding:
            big.release()


async def _read(fetched: Fetched, filename: str, parse: Parse) -> bytes | None:
    """The METADATA, as far as `fetched` holds it: on the event loop when that is cheap
    (little held, or the directory scanned already and the METADATA small), else `parse`."""
    if fetched.members is not None or fetched.held <= ON_LOOP:
        try:
            return read_wheel_metadata(fetched, filename, ON_LOOP)
        except Deferred:
            pass
    return await parse(fetched, filename)


async def _fetch(index: Index, url: str, start: int, stop: int | None) -> tuple[int, bytes, int]:
    """(first byte, bytes, file length) of the range, read whole; passing failures retried."""

    async def attempt() -> tuple[int, bytes, int]:
        async with index.open_range(url, start, stop) as span:
            data = b"".join([chunk async for chunk in span.chunks])
        if len(data) != span.stop - span.start:  # a body shorter than its Content-Length
            raise UpstreamError(f"{redact(url)}: the upstream broke off a range", retryable=True)
        return span.start, data, span.total

    return await index.retrying(attempt)
