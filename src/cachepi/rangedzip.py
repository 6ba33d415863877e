"""A remote wheel read in byte ranges, pure: wheelmeta.py's reader runs over the spans of the
file fetched so far (`Fetched`), and a read of a byte not fetched stops it with `Missing`.
The caller fetches the range `Fetched.to_fetch` names and runs the reader again, until it
ends: a wheel takes two or three ranges (its end, its central directory when that is not
in the end, the member); the directory is scanned once (microseconds an entry), the reader
keeping what it found in `Fetched.members`.

The reader's bounds (wheelmeta.py) bound what it asks for; the readahead of a member read
in pieces grows, so that even the biggest member it reads takes few ranges.
"""

from __future__ import annotations

import bisect

from cachepi.wheelmeta import END_READ, Member

# A read that starts outside what was fetched (a member's local header) fetches at least
# this much: the header, the name and, for nearly every METADATA, the compressed member.
FETCH_AT_LEAST = END_READ
# A read continuing where the previous range ended fetches twice as much as that one, at
# most this: a member of megabytes takes a few ranges, not hundreds.
_MOST_READAHEAD = 4 * 1024 * 1024


class Missing(Exception):
    """A read needed bytes [start, stop) of the file, not all fetched yet."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__(f"bytes {start}-{stop - 1} are not fetched")
        self.start = start
        self.stop = stop


class Fetched:
    """The spans of a `size`-byte file fetched so far, read like the file (an `Archive`)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.held = 0  # bytes fetched
        self._starts: list[int] = []  # of disjoint spans, not touching, in order
        self._spans: list[bytes] = []
        self._position = 0
        self._last: tuple[int, int] = (0, 0)  # the range fetched last
        # The METADATA members the directory lists, once the reader found them
        # (wheelmeta.Remembering).
        self.members: list[Member] | None = None

    def add(self, start: int, data: bytes) -> None:
        """Bytes fetched from offset `start`, joined with those they overlap or touch."""
        stop = start + len(data)
        if not data or start < 0 or stop > self.size:
            raise ValueError(f"no bytes {start}-{stop - 1} in a file of {self.size}")
        self.held += len(data)
        self._last = (start, stop)
        first = bisect.bisect_left(self._starts, start)
        if first > 0 and self._starts[first - 1] + len(self._spans[first - 1]) >= start:
            first -= 1
        last = first
        while last < len(self._starts) and self._starts[last] <= stop:
            last += 1
        if first < last:  # joined with spans [first, last): what they hold beyond `data`
            begin, end = self._starts[first], self._starts[last - 1] + len(self._spans[last - 1])
            head = self._spans[first][: max(0, start - begin)]
            tail = self._spans[last - 1][len(self._spans[last - 1]) - max(0, end - stop) :]
            data = head + data + tail if (head or tail) else data
            start = min(start, begin)
        self._starts[first:last] = [start]
        self._spans[first:last] = [data]

    def seek(self, offset: int, whence: int = 0, /) -> int:
        base = (0, self._position, self.size)[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int = -1, /) -> bytes:
        """Bytes from the position on, `size` of them (all to the end if negative), if
        fetched; else Missing."""
        start = min(self._position, self.size)
        stop = self.size if size < 0 else min(start + size, self.size)
        if start == stop:
            return b""
        at = bisect.bisect_right(self._starts, start) - 1
        if at >= 0 and self._starts[at] + len(self._spans[at]) >= stop:
            self._position = stop
            offset = start - self._starts[at]
            return self._spans[at][offset : offset + stop - start]
        raise Missing(start, stop)

    def to_fetch(self, missing: Missing) -> tuple[int, int]:
        """The range [start, stop) to fetch so that the read that raised `missing` gets its
        bytes: from its first byte not fetched to its last, extended to FETCH_AT_LEAST (or
        readahead when the read goes on where the last range ended), short of what is
        fetched already."""
        start, stop = missing.start, missing.stop
        at = bisect.bisect_right(self._starts, start) - 1
        if at >= 0:  # bytes fetched already at the read's start are not fetched again
            start = max(start, self._starts[at] + len(self._spans[at]))
        following = bisect.bisect_left(self._starts, start)
        if following < len(self._starts):  # nor those at its end
            held_from = self._starts[following]
            if held_from < stop <= held_from + len(self._spans[following]):
                stop = held_from
        last_start, last_stop = self._last
        wanted = FETCH_AT_LEAST
        if start == last_stop:
            wanted = max(wanted, min(2 * (last_stop - last_start), _MOST_READAHEAD))
        limit = self._starts[following] if following < len(self._starts) else self.size
        return start, max(stop, min(start + wanted, limit))
