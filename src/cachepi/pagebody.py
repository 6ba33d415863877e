"""Reading an upstream page's body within caps: bytes on the wire, bytes decoded, and a
limit on how much a page may grow when decoded (a bomb), decoding gzip and zstd in bounded
steps."""

from __future__ import annotations

import contextlib
import importlib
import io
import zlib
from collections.abc import Callable, Iterator
from typing import Protocol

import aiohttp

# Pages are decoded in steps of this much, checking the caps after each.
_DECODE_STEP = 1024 * 1024
# Past this much decoded, a page may not have grown more than _BOMB_RATIO times its bytes on
# the wire: real pages compress 3 to 20 times, a bomb a thousand times and more, and is
# stopped here long before the size cap would stop it.
_BOMB_FLOOR = 16 * 1024 * 1024
_BOMB_RATIO = 100


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, /, max_length: int = ...) -> bytes: ...


def _zstd_decompressor() -> Callable[[], _Decompressor] | None:
    """A zstd decompressor that takes `max_length` (Python 3.14's, or its backport)."""
    for module in ("compression.zstd", "backports.zstd"):
        with contextlib.suppress(ImportError):
            factory: Callable[[], _Decompressor] = importlib.import_module(module).ZstdDecompressor
            return factory
    return None


_ZSTD = _zstd_decompressor()
# What pages may come in: only codings decoded here in bounded steps.
PAGE_ENCODINGS = "gzip, zstd" if _ZSTD is not None else "gzip"


class PageTooBig(Exception):
    """The page is bigger than allowed, or a bomb; the message says which."""


class _Decoder:
    """One Content-Encoding undone in bounded steps: no call gives more than _DECODE_STEP
    bytes, whatever the input. Concatenated gzip members and zstd frames are read one after
    the other; zero bytes after the last one are padding."""

    def __init__(self, coding: str) -> None:
        self._zstd = coding == "zstd"
        self._current = self._new()
        self._ended = False  # the current member is complete
        self._more = False  # it has output waiting without more input
        self._fed = False

    def _new(self) -> _Decompressor:
        if self._zstd:
            assert _ZSTD is not None
            return _ZSTD()
        return zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._fed = self._fed or bool(data)
        while data or self._more:
            if self._ended:  # anything but padding starts another member
                if not data.strip(b"\0"):
                    return
                self._current, self._ended = self._new(), False
            current = self._current
            out = current.decompress(data, _DECODE_STEP)
            if self._zstd:
                data = b""  # what max_length left over stays inside
                self._more = not current.eof and not getattr(current, "needs_input", True)
            else:
                data = getattr(current, "unconsumed_tail", b"")
                self._more = len(out) == _DECODE_STEP
            if current.eof:
                self._ended, self._more = True, False
                data = current.unused_data + data
            if out:
                yield out

    def finish(self) -> None:
        if self._fed and not self._ended:
            raise ValueError("the compressed page is cut short")


async def read_page(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The page's body decoded, if it is at most `cap` bytes (a quarter of that on the
    wire when compressed) and no bomb; ValueError or PageTooBig otherwise."""
    coding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if coding == "x-gzip":
        coding = "gzip"
    if coding == "identity":
        decoder = None
        wire_cap = cap
    elif coding == "gzip" or (coding == "zstd" and _ZSTD is not None):
        decoder = _Decoder(coding)
        wire_cap = cap // 4
    else:
        raise ValueError(f"the page came in a coding not asked for ({coding[:40]!r})")
    length = response.content_length
    if length is not None and length > wire_cap:
        raise PageTooBig(f"the page is {length} bytes, more than the {wire_cap} allowed")
    body = io.BytesIO()
    wire = 0
    async for chunk in response.content.iter_any():
        wire += len(chunk)
        if wire > wire_cap:
            raise PageTooBig(f"the page is more than the {wire_cap} bytes allowed")
        if decoder is None:
            body.write(chunk)
            continue
        for piece in decoder.feed(chunk):
            body.write(piece)
            size = body.tell()
            if size > cap:
                raise PageTooBig(f"the page decodes to more than the {cap} bytes allowed")
            if size > _BOMB_FLOOR and size > _BOMB_RATIO * wire:
                raise PageTooBig(f"the page decodes to {size} bytes from {wire}: a bomb")
    if decoder is not None:
        decoder.finish()
    return body.getvalue()
