"""HTTP Range header parsing (RFC 9110 section 14), pure.

Only a single byte range is honoured; anything else (several ranges, other units, malformed
text) means "send the whole file", which the RFC allows a server to do.
"""

from __future__ import annotations

import re

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class RangeNotSatisfiable(Exception):
    """The range starts past the end of the file: answer 416 with `bytes */size`."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The half-open byte span [start, stop) a Range header asks of a `size`-byte file.

    None means: ignore the header and send everything.
    """
    if not header:
        return None
    match = _RANGE_RE.match(header)
    if not match:
        return None
    first, last = match[1], match[2]
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size
    start = int(first)
    stop = size if not last else int(last) + 1
    if last and stop <= start:
        return None  # "bytes=5-3" is invalid: the RFC says ignore it
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(stop, size)
